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
//
// The entrywise pieces restate PEFT's definitions (peft/utils/merge_utils.py,
// PEFT 0.x) on lists of task matrices, in double:
//   magnitude_based_pruning  keep the k = int(density * numel) entries of
//                            largest |x| (torch.topk), zero the rest
//   prune                    density >= 1 leaves the tensor as it is
//   random_pruning           x * bernoulli(density) / density (rescale)
//   calculate_majority_sign_mask
//                            s = sum_i x_i ("total") or sum_i sign(x_i)
//                            ("frequency"); majority = s >= 0 ? +1 : -1;
//                            mask_i = sign(x_i) == majority
//   disjoint_merge           sum_i mask_i w_i x_i / max(1, sum_i mask_i)
//   task_arithmetic, magnitude_prune, dare_linear: sum_i w_i x_i after the
//                            pruning; ties, dare_ties: the election on the
//                            pruned x_i, then disjoint_merge of w_i x_i.
// Two conventions are ours, where PEFT leaves it open: torch.topk does not
// say which of equal |x| it keeps (the lower column-major index here), and
// torch.bernoulli's draws are replaced by the documented DARE mask.

MatrixXd peft_magnitude_based_pruning(const MatrixXd& x, double density) {
  const Index n = x.size();
  const auto k = static_cast<Index>(density * static_cast<double>(n));  // Python int(): truncates
  std::vector<Index> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(),
                   [&](Index a, Index b) { return std::abs(x.data()[a]) > std::abs(x.data()[b]); });
  MatrixXd out = MatrixXd::Zero(x.rows(), x.cols());
  for (Index j = 0; j < k; ++j) out.data()[idx[j]] = x.data()[idx[j]];
  return out;
}

MatrixXd ref_trim(const MatrixXd& x, double density) {  // prune(method="magnitude")
  return density >= 1 ? x : peft_magnitude_based_pruning(x, density);
}

uint64_t ref_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// prune(method="random", rescale=True) with the DARE mask of baselines.cc.
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

int sign_of(double x) { return (x > 0) - (x < 0); }

// calculate_majority_sign_mask, then disjoint_merge of w_i x_i.
MatrixXd peft_elect_and_merge(const std::vector<MatrixXd>& x, const std::vector<double>& w,
                              bool frequency) {
  MatrixXd out = MatrixXd::Zero(x[0].rows(), x[0].cols());
  for (Index j = 0; j < out.size(); ++j) {
    double magnitude = 0;
    for (auto& xi : x) magnitude += frequency ? sign_of(xi.data()[j]) : xi.data()[j];
    const int majority = magnitude >= 0 ? 1 : -1;
    double sum = 0;
    int kept = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      if (sign_of(x[i].data()[j]) != majority) continue;
      sum += w[i] * x[i].data()[j];
      ++kept;
    }
    out.data()[j] = sum / std::max(kept, 1);
  }
  return out;
}

// Uniform weights: the disjoint mean itself.
MatrixXd ref_ties(const std::vector<MatrixXd>& t, bool frequency) {
  return peft_elect_and_merge(t, std::vector<double>(t.size(), 1.0), frequency);
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
  if (method == "ta" || method == "regmean") {  // regmean: identity moments without calibration
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
    MatrixXd u = svd.matrixU().leftCols(std::min<Index>(p.out(), total));
    for (Index j = 0; j < u.cols(); ++j) {  // largest |u_ij| positive (baselines.cc)
      Index top = 0;
      for (Index i = 1; i < u.rows(); ++i) top = std::abs(u(i, j)) > std::abs(u(top, j)) ? i : top;
      if (u(top, j) < 0) u.col(j) *= -1;
    }
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
                                       "knots-ta",    "knots-ties", "tsv",
                                       "regmean"};

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

// ---- PEFT's definitions (issue 15, item 6)

/// One task per matrix: B = I, A = x_i, scale s_i, so dW_i = s_i x_i.
ModuleProblem dense_tasks(const std::vector<MatrixXd>& x, const std::vector<double>& scales) {
  ModuleProblem p;
  for (size_t i = 0; i < x.size(); ++i) {
    ModuleLora l;
    l.A = x[i];
    l.B = MatrixXd::Identity(x[i].rows(), x[i].rows());
    l.scale = scales[i];
    p.loras.push_back(std::move(l));
    p.weights.push_back(1);
  }
  return p;
}

TEST(Baselines, MagnitudeTrimKeepsIntOfDensityTimesN) {
  // PEFT keeps int(density * n) entries: 409 of 2048 at density 0.2 (not
  // round's 410), 28 of 100 at 0.29 (0.29 * 100 = 28.999999999999996 in
  // double; round: 29). Equal magnitudes: the lower column-major index
  // first, so the 409 kept are the first 409.
  struct Trim {
    Index rows, cols;
    double density;
    Index kept;
    bool equal_magnitudes;
  };
  for (const Trim& t : {Trim{32, 64, 0.2, 409, false}, Trim{10, 10, 0.29, 28, false},
                        Trim{32, 64, 0.2, 409, true}}) {
    SCOPED_TRACE(std::to_string(t.rows) + "x" + std::to_string(t.cols) + " density " +
                 std::to_string(t.density) + (t.equal_magnitudes ? " equal |x|" : ""));
    MatrixXd x = test::random_matrix(t.rows, t.cols, 40 + t.rows);
    if (t.equal_magnitudes) x = x.unaryExpr([](double v) { return v < 0 ? -1.0 : 1.0; });
    const MatrixXd want = ref_trim(x, t.density);
    ASSERT_EQ((want.array() != 0).count(), t.kept);
    if (t.equal_magnitudes) {
      ASSERT_TRUE(
          (want.reshaped().head(t.kept).array() == x.reshaped().head(t.kept).array()).all());
    }
    const ModuleProblem p = dense_tasks({x}, {1.0});
    MergeParams mp;
    mp.density = t.density;
    const MatrixXd got = served(merge_single("magnitude-prune", p, mp, 0), p, t.rows);
    EXPECT_EQ((got.array().abs() > 1e-9).count(), t.kept);
    EXPECT_LE(rel_err(got, want), 1e-12);
  }
}

TEST(Baselines, SignElectionAsPeft) {
  // Every sign pattern of 4 tasks, one per entry (9 x 9 = 3^4), with
  // scales 0.5, 2, 1.25, 0.75. Both methods elect + when their measure is
  // exactly 0: a zero sum ("total"), tied counts ("frequency").
  const std::vector<double> scales = {0.5, 2.0, 1.25, 0.75};
  std::vector<MatrixXd> x(4, MatrixXd(MatrixXd::Zero(9, 9)));
  for (Index j = 0; j < 81; ++j) {
    Index code = j;
    for (auto& xi : x) {
      xi.data()[j] = static_cast<double>(code % 3) - 1;
      code /= 3;
    }
  }
  std::vector<MatrixXd> dw;
  for (size_t i = 0; i < 4; ++i) dw.push_back(scales[i] * x[i]);
  const ModuleProblem p = dense_tasks(x, scales);
  auto entry = [](int a, int b, int c, int d) {  // signs of tasks 0..3
    return (a + 1) + 3 * (b + 1) + 9 * (c + 1) + 27 * (d + 1);
  };
  MergeParams mp;
  mp.density = 1;
  for (const bool frequency : {false, true}) {
    mp.sign_method = frequency ? "frequency" : "total";
    SCOPED_TRACE(mp.sign_method);
    const MatrixXd got = served(merge_single("ties", p, mp, 0), p, 9);
    EXPECT_LE((got - ref_ties(dw, frequency)).cwiseAbs().maxCoeff(), 1e-12);
    // (+, 0, -, +): sum 0.5 - 1.25 + 0.75 = 0, counts 2:1; + either way.
    EXPECT_NEAR(got.data()[entry(1, 0, -1, 1)], 0.625, 1e-12);
    // (+, -, -, +): counts 2:2, sum -2; total -, frequency + (a tie).
    EXPECT_NEAR(got.data()[entry(1, -1, -1, 1)], frequency ? 0.625 : -1.625, 1e-12);
    // (+, -, 0, 0): counts 1:1, sum -1.5.
    EXPECT_NEAR(got.data()[entry(1, -1, 0, 0)], frequency ? 0.5 : -2.0, 1e-12);
  }
}

// PEFT's add_weighted_adapter(adapters, weights, combination_type=type,
// svd_rank=rank, density=..., majority_sign_method=...) for the "*_svd"
// types, per module (_svd_generalized_task_arithmetic_weighted_adapter):
// adapters lacking the module are skipped; the merged tensors are
// get_delta_weight(i) = s_i B_i A_i, weighted by weights[i] * s_i (the
// scaling a second time); the top `rank` singular triplets are kept
// (svd_clamp None) in an adapter with lora_alpha = r, i.e. scaling 1.
MatrixXd peft_svd_combination(const std::string& type, const ModuleProblem& p,
                              const std::vector<double>& weights, const MergeParams& mp,
                              uint64_t module, Index rank) {
  std::vector<MatrixXd> delta;
  std::vector<double> w;
  for (size_t i = 0; i < p.tasks(); ++i) {
    const ModuleLora& l = p.loras[i];
    if (l.rank() == 0) continue;
    MatrixXd d = l.scale * l.B * l.A;
    if (type == "ties_svd" || type == "magnitude_prune_svd") d = ref_trim(d, mp.density);
    if (type == "dare_linear_svd" || type == "dare_ties_svd") {
      d = ref_dare(d, mp.density, mp.seed, module, i);
    }
    delta.push_back(std::move(d));
    w.push_back(weights[i] * l.scale);
  }
  MatrixXd merged = MatrixXd::Zero(p.out(), p.in());
  if (type == "ties_svd" || type == "dare_ties_svd") {
    merged = peft_elect_and_merge(delta, w, mp.sign_method == "frequency");
  } else {
    for (size_t j = 0; j < delta.size(); ++j) merged += w[j] * delta[j];
  }
  return truncate(merged, rank);
}

TEST(Baselines, MatchesPeftSvdCombinationsWithWeightsLambdaOverScale) {
  const std::vector<std::pair<std::string, std::string>> pairs = {
      {"ta", "svd"},
      {"ties", "ties_svd"},
      {"dare-linear", "dare_linear_svd"},
      {"dare-ties", "dare_ties_svd"},
      {"magnitude-prune", "magnitude_prune_svd"}};
  for (uint64_t seed : {11, 12}) {
    const Case c = make_case(seed);
    for (const auto& [ours, peft] : pairs) {
      // 0.29 * 120 = 34.8: PEFT keeps 34 entries per task.
      for (double density : {0.29, 0.5}) {
        for (const char* sign : {"total", "frequency"}) {
          for (double lambda : {0.0, -0.7}) {
            MergeParams mp;
            mp.density = density;
            mp.sign_method = sign;
            mp.seed = seed;
            mp.lambda = lambda;
            SCOPED_TRACE(ours + " density " + std::to_string(density) + " " + sign + " lambda " +
                         std::to_string(lambda));
            const bool ties = ours.find("ties") != std::string::npos;
            const double l = lambda != 0 ? lambda : ties ? 1.0 : 1.0 / c.p.tasks();
            std::vector<double> weights;
            for (auto& lora : c.p.loras) weights.push_back(l / lora.scale);
            const Index k = c.p.max_rank();
            const MatrixXd want = peft_svd_combination(peft, c.p, weights, mp, 5, k);
            ASSERT_GT(want.norm(), 0);
            EXPECT_LE(rel_err(served(merge_single(ours, c.p, mp, 5), c.p, k), want), 1e-8);
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace hydraopt
