// Single merged adapter baselines against independent dense references:
// the references form every dW_i, trim/elect/average with plain loops and
// truncate with JacobiSVD; only the documented conventions (keep count,
// tie order, the DARE mask formula) are shared, and re-implemented here.
#include <gtest/gtest.h>

#include <Eigen/SVD>
#include <algorithm>
#include <cmath>
#include <numeric>

#include "hydraopt/error.h"
#include "methods/baselines.h"
#include "test_util.h"

namespace hydraopt {
namespace {

using Eigen::Index;
using Eigen::MatrixXd;

struct Case {
  ModuleProblem p;
  std::vector<MatrixXd> dw;  // dense s_i B_i A_i
};

/// 4 tasks, out=12, in=10, ranks 3, 2, 3 and 0 (missing), distinct scales.
Case make_case(uint64_t seed, std::vector<int> ranks = {3, 2, 3, 0}, bool positive = false) {
  const Index out = 12, in = 10;
  const std::vector<double> scales = {0.5, 2.0, 1.25, 0.8, 1.5, 0.3};
  Case c;
  for (size_t i = 0; i < ranks.size(); ++i) {
    ModuleLora l;
    l.A = test::random_matrix(ranks[i], in, seed * 100 + 2 * i);
    l.B = test::random_matrix(out, ranks[i], seed * 100 + 2 * i + 1);
    if (positive) {
      l.A = l.A.cwiseAbs();
      l.B = l.B.cwiseAbs();
    }
    l.scale = scales[i];
    c.dw.push_back(ranks[i] == 0 ? MatrixXd::Zero(out, in) : MatrixXd(l.scale * l.B * l.A));
    c.p.loras.push_back(std::move(l));
    c.p.weights.push_back(1.0);
  }
  return c;
}

/// Checks the single-adapter structure and returns the served update.
MatrixXd served(const ModuleFit& f, const ModuleProblem& p, Index k) {
  EXPECT_EQ(f.heads.size(), 1u);
  EXPECT_EQ(f.bodies.size(), 1u);
  EXPECT_TRUE(f.cores.empty());
  EXPECT_EQ(f.tasks(), p.tasks());
  for (size_t i = 0; i < f.tasks(); ++i) {
    EXPECT_EQ(f.head_of[i], 0);
    EXPECT_EQ(f.body_of[i], 0);
    EXPECT_EQ(f.core_of[i], -1);
    EXPECT_EQ(f.scale[i], 1.0);
  }
  EXPECT_EQ(f.heads[0].rows(), p.out());
  EXPECT_EQ(f.heads[0].cols(), k);
  EXPECT_EQ(f.bodies[0].rows(), k);
  EXPECT_EQ(f.bodies[0].cols(), p.in());
  return f.heads[0] * f.bodies[0];
}

MatrixXd truncate(const MatrixXd& m, Index k) {
  Eigen::JacobiSVD<MatrixXd> svd(m, Eigen::ComputeThinU | Eigen::ComputeThinV);
  k = std::min<Index>(k, svd.singularValues().size());
  return svd.matrixU().leftCols(k) * svd.singularValues().head(k).asDiagonal() *
         svd.matrixV().leftCols(k).transpose();
}

double rel_err(const MatrixXd& got, const MatrixXd& want) {
  return (got - want).norm() / std::max(want.norm(), 1e-300);
}

// ---- independent references

MatrixXd ref_trim(MatrixXd x, double density) {
  const Index n = x.size();
  const Index keep = std::llround(density * n);
  std::vector<Index> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(),
                   [&](Index a, Index b) { return std::abs(x.data()[a]) > std::abs(x.data()[b]); });
  for (Index j = keep; j < n; ++j) x.data()[idx[j]] = 0;
  return x;
}

uint64_t ref_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

MatrixXd ref_dare(MatrixXd x, double density, uint64_t seed, uint64_t module, uint64_t task) {
  const uint64_t key = ref_mix(ref_mix(ref_mix(seed) ^ module) ^ task);
  for (Index j = 0; j < x.size(); ++j) {
    const uint64_t h = ref_mix(key + (uint64_t(j) + 1) * 0x9e3779b97f4a7c15ULL);
    const double u = double(h >> 11) / 9007199254740992.0;  // 2^53
    x.data()[j] = u < density ? x.data()[j] / density : 0.0;
  }
  return x;
}

MatrixXd ref_sum(const std::vector<MatrixXd>& t) {
  MatrixXd s = MatrixXd::Zero(t[0].rows(), t[0].cols());
  for (auto& x : t) s += x;
  return s;
}

MatrixXd ref_ties(const std::vector<MatrixXd>& t, bool frequency) {
  MatrixXd out = MatrixXd::Zero(t[0].rows(), t[0].cols());
  for (Index r = 0; r < out.rows(); ++r) {
    for (Index c = 0; c < out.cols(); ++c) {
      double sum = 0;
      int pos = 0, neg = 0;
      for (auto& x : t) {
        sum += x(r, c);
        pos += x(r, c) > 0;
        neg += x(r, c) < 0;
      }
      int sign = sum < 0 ? -1 : 1;
      if (frequency && pos != neg) sign = pos > neg ? 1 : -1;
      double agree = 0;
      int count = 0;
      for (auto& x : t) {
        if (x(r, c) * sign > 0) {
          agree += x(r, c);
          ++count;
        }
      }
      out(r, c) = count ? agree / count : 0.0;
    }
  }
  return out;
}

// Entrywise method applied to task matrices (dense dW_i or KnOTS coordinates).
MatrixXd ref_entrywise(const std::string& method, std::vector<MatrixXd> t, const MergeParams& mp,
                       uint64_t module) {
  const bool ties = method.find("ties") != std::string::npos;
  const bool dare = method.rfind("dare", 0) == 0;
  const bool trim = method == "ties" || method == "magnitude-prune" || method == "knots-ties";
  for (size_t i = 0; i < t.size(); ++i) {
    if (trim) t[i] = ref_trim(t[i], mp.density);
    if (dare) t[i] = ref_dare(t[i], mp.density, mp.seed, module, i);
  }
  const double lambda = mp.lambda != 0 ? mp.lambda : ties ? 1.0 : 1.0 / t.size();
  return lambda * (ties ? ref_ties(t, mp.sign_method == "frequency") : ref_sum(t));
}

MatrixXd reference(const std::string& method, const Case& c, const MergeParams& mp,
                   uint64_t module) {
  const ModuleProblem& p = c.p;
  const size_t n = p.tasks();
  const Index k = mp.rank > 0 ? mp.rank : p.max_rank();
  if (method == "linear") {
    const double lambda = mp.lambda != 0 ? mp.lambda : 1.0 / n;
    const Index r = p.max_rank();
    MatrixXd a = MatrixXd::Zero(r, p.in()), b = MatrixXd::Zero(p.out(), r);
    for (auto& l : p.loras) {
      const double w = std::sqrt(lambda * l.scale);
      for (Index j = 0; j < l.rank(); ++j) {
        a.row(j) += w * l.A.row(j);
        b.col(j) += w * l.B.col(j);
      }
    }
    return truncate(b * a, k);
  }
  if (method == "ta") {
    const double lambda = mp.lambda != 0 ? mp.lambda : 1.0 / n;
    return truncate(lambda * ref_sum(c.dw), k);
  }
  if (method == "tsv") {
    const double lambda = mp.lambda != 0 ? mp.lambda : 1.0;
    const Index ki = std::max<Index>(1, (k + n - 1) / n);
    std::vector<Eigen::VectorXd> us, vs;
    std::vector<double> sig;
    for (auto& d : c.dw) {
      Eigen::JacobiSVD<MatrixXd> svd(d, Eigen::ComputeThinU | Eigen::ComputeThinV);
      for (Index j = 0; j < ki; ++j) {
        if (svd.singularValues()(j) <= 1e-12) continue;
        us.push_back(svd.matrixU().col(j));
        vs.push_back(svd.matrixV().col(j));
        sig.push_back(svd.singularValues()(j));
      }
    }
    MatrixXd u(p.out(), sig.size()), v(p.in(), sig.size()),
        s = MatrixXd::Zero(sig.size(), sig.size());
    for (size_t j = 0; j < sig.size(); ++j) {
      u.col(j) = us[j];
      v.col(j) = vs[j];
      s(j, j) = sig[j];
    }
    auto polar = [](const MatrixXd& x) {
      Eigen::JacobiSVD<MatrixXd> svd(x, Eigen::ComputeThinU | Eigen::ComputeThinV);
      return MatrixXd(svd.matrixU() * svd.matrixV().transpose());
    };
    return truncate(lambda * polar(u) * s * polar(v).transpose(), k);
  }
  if (method.rfind("knots-", 0) == 0) {
    MatrixXd cat(p.out(), p.in() * n);
    for (size_t i = 0; i < n; ++i) cat.middleCols(i * p.in(), p.in()) = c.dw[i];
    Index total = 0;
    for (auto& l : p.loras) total += l.rank();
    Eigen::JacobiSVD<MatrixXd> svd(cat, Eigen::ComputeThinU);
    const MatrixXd u = svd.matrixU().leftCols(std::min<Index>(p.out(), total));
    std::vector<MatrixXd> x;
    for (auto& d : c.dw) x.push_back(u.transpose() * d);
    const std::string inner = method == "knots-ta" ? "ta" : "knots-ties";
    return truncate(u * ref_entrywise(inner, x, mp, module), k);
  }
  return truncate(ref_entrywise(method, c.dw, mp, module), k);
}

void expect_matches_reference(const std::string& method, const Case& c, const MergeParams& mp,
                              uint64_t module = 7) {
  SCOPED_TRACE(method + " density=" + std::to_string(mp.density) + " sign=" + mp.sign_method +
               " rank=" + std::to_string(mp.rank) + " lambda=" + std::to_string(mp.lambda));
  const Index k = mp.rank > 0 ? mp.rank : c.p.max_rank();
  const MatrixXd got = served(merge_single(method, c.p, mp, module), c.p, k);
  const MatrixXd want = reference(method, c, mp, module);
  ASSERT_GT(want.norm(), 0);
  EXPECT_LE(rel_err(got, want), 1e-8);
}

const std::vector<std::string> kAll = {"linear",      "ta",         "ties",
                                       "dare-linear", "dare-ties",  "magnitude-prune",
                                       "knots-ta",    "knots-ties", "tsv"};

TEST(Baselines, NamesAndUnknownMethod) {
  std::vector<std::string> names;
  for (auto& m : single_merges()) names.push_back(m.name);
  EXPECT_EQ(names, kAll);
  const Case c = make_case(1);
  EXPECT_THROW(merge_single("no-such-merge", c.p, {}, 0), Error);
  MergeParams bad;
  bad.sign_method = "majority";
  EXPECT_THROW(merge_single("ties", c.p, bad, 0), Error);
  bad = {};
  bad.density = 1.5;
  EXPECT_THROW(merge_single("dare-ties", c.p, bad, 0), Error);
}

TEST(Baselines, EveryMethodMatchesDenseReference) {
  const Case c = make_case(1);
  for (auto& m : kAll) expect_matches_reference(m, c, {});
}

TEST(Baselines, VariantsMatchDenseReference) {
  for (uint64_t seed : {2, 3}) {
    const Case c = make_case(seed);
    for (auto& m : kAll) {
      for (double density : {0.5, 0.9}) {
        for (const char* sign : {"total", "frequency"}) {
          MergeParams mp;
          mp.density = density;
          mp.sign_method = sign;
          mp.seed = seed * 11;
          expect_matches_reference(m, c, mp, seed);
        }
      }
      MergeParams mp;
      mp.rank = 2;
      mp.lambda = 0.7;
      expect_matches_reference(m, c, mp);
      mp.rank = 5;  // tsv: k_i = 2, 6 components truncated to 5
      mp.lambda = 0;
      expect_matches_reference(m, c, mp);
    }
  }
}

TEST(Baselines, FullRankTaIsTheExactMean) {
  const Case c = make_case(4);
  MergeParams mp;
  mp.rank = 8;  // total rank
  const MatrixXd mean = ref_sum(c.dw) / 4;
  EXPECT_LE(rel_err(served(merge_single("ta", c.p, mp, 0), c.p, 8), mean), 1e-12);
  EXPECT_LE(rel_err(served(merge_single("knots-ta", c.p, mp, 0), c.p, 8), mean), 1e-12);
  // Default rank: knots-ta is ta up to rounding.
  EXPECT_LE(rel_err(served(merge_single("knots-ta", c.p, {}, 0), c.p, 3),
                    served(merge_single("ta", c.p, {}, 0), c.p, 3)),
            1e-10);
  // Asking for more than the attainable rank pads with zeros.
  mp.rank = 11;
  const ModuleFit f = merge_single("ta", c.p, mp, 0);
  EXPECT_LE(rel_err(served(f, c.p, 11), mean), 1e-12);
  EXPECT_EQ(f.heads[0].rightCols(3).norm(), 0.0);
}

TEST(Baselines, LinearIncludesCrossTerms) {
  // Same rank everywhere: B_m A_m with the sqrt(s/N) weights, not the mean.
  const Case c = make_case(5, {2, 2, 2});
  const ModuleFit f = merge_single("linear", c.p, {}, 0);
  MatrixXd bm = MatrixXd::Zero(12, 2), am = MatrixXd::Zero(2, 10);
  for (auto& l : c.p.loras) {
    bm += std::sqrt(l.scale / 3) * l.B;
    am += std::sqrt(l.scale / 3) * l.A;
  }
  EXPECT_LE(rel_err(served(f, c.p, 2), bm * am), 1e-13);
  EXPECT_GT(rel_err(bm * am, ref_sum(c.dw) / 3), 0.1);
}

TEST(Baselines, AgreeingTiesAtFullDensityIsTheMean) {
  const Case c = make_case(6, {3, 2, 3, 1}, /*positive=*/true);
  MergeParams mp;
  mp.density = 1;
  mp.rank = 10;
  const MatrixXd mean = ref_sum(c.dw) / 4;
  for (const char* sign : {"total", "frequency"}) {
    mp.sign_method = sign;
    EXPECT_LE(rel_err(served(merge_single("ties", c.p, mp, 0), c.p, 10), mean), 1e-12) << sign;
  }
}

TEST(Baselines, SignMethodsDifferOnCraftedEntry) {
  // Entry (0,0): +1 from three tasks, -10 from one. Total elects -, the
  // count elects +.
  ModuleProblem p;
  for (double b : {1.0, 1.0, 1.0, -10.0}) {
    ModuleLora l;
    l.A = MatrixXd::Zero(1, 2);
    l.A(0, 0) = 1;
    l.B = MatrixXd::Zero(2, 1);
    l.B(0, 0) = b;
    p.loras.push_back(l);
    p.weights.push_back(1);
  }
  MergeParams mp;
  mp.density = 1;
  const MatrixXd total = served(merge_single("ties", p, mp, 0), p, 1);
  mp.sign_method = "frequency";
  const MatrixXd freq = served(merge_single("ties", p, mp, 0), p, 1);
  EXPECT_NEAR(total(0, 0), -10, 1e-12);
  EXPECT_NEAR(freq(0, 0), 1, 1e-12);
  EXPECT_NEAR(total.cwiseAbs().sum() - 10, 0, 1e-12);
}

TEST(Baselines, DareAtFullDensityIsTheMean) {
  const Case c = make_case(7);
  MergeParams mp;
  mp.density = 1;
  mp.rank = 10;
  const MatrixXd mean = ref_sum(c.dw) / 4;
  EXPECT_LE(rel_err(served(merge_single("dare-linear", c.p, mp, 3), c.p, 10), mean), 1e-12);
  mp.rank = 8;
  EXPECT_LE(rel_err(served(merge_single("ta", c.p, mp, 3), c.p, 8), mean), 1e-12);
}

TEST(Baselines, DareIsDeterministicPerSeedAndModule) {
  const Case c = make_case(8);
  MergeParams mp;
  mp.seed = 1;
  for (const char* m : {"dare-linear", "dare-ties"}) {
    const MatrixXd a = served(merge_single(m, c.p, mp, 0), c.p, 3);
    const MatrixXd b = served(merge_single(m, c.p, mp, 0), c.p, 3);
    EXPECT_EQ(a, b) << m;
    MergeParams other = mp;
    other.seed = 2;
    EXPECT_GT(rel_err(served(merge_single(m, c.p, other, 0), c.p, 3), a), 1e-3) << m;
    EXPECT_GT(rel_err(served(merge_single(m, c.p, mp, 1), c.p, 3), a), 1e-3) << m;
  }
}

TEST(Baselines, AllMissingGivesZeroAdapter) {
  const Case c = make_case(9, {0, 0});
  MergeParams mp;
  mp.rank = 2;
  for (auto& m : kAll) {
    EXPECT_EQ(served(merge_single(m, c.p, mp, 0), c.p, 2).norm(), 0.0) << m;
  }
}

}  // namespace
}  // namespace hydraopt
