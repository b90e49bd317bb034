// Structures and their fits, checked against dense computations.
#include <gtest/gtest.h>

#include <tuple>

#include <Eigen/Eigenvalues>
#include <Eigen/QR>
#include <Eigen/SVD>

#include "core/rounding.h"
#include "methods/cluster.h"
#include "core/storage.h"
#include "methods/structures.h"
#include "test_util.h"
#include "util/parallel.h"

namespace hydraopt {
namespace {

using Eigen::MatrixXd;

// Tasks trained from one A initialisation: A_i = A0 + drift, B_i random.
ModuleProblem make_problem(int n, int in, int out, int r, uint64_t seed, bool missing = true) {
  ModuleProblem p;
  MatrixXd a0 = test::random_matrix(r, in, seed);
  for (int i = 0; i < n; ++i) {
    int ri = (i == 1) ? r - 1 : r;
    ModuleLora l;
    l.A = a0.topRows(ri) + 0.4 * test::random_matrix(ri, in, seed + 10 + i);
    l.B = test::random_matrix(out, ri, seed + 100 + i) * (1 + i % 3);
    l.scale = 0.5 + 0.25 * i;
    if (missing && i == n - 1) {
      l.A.resize(0, in);
      l.B.resize(out, 0);
    }
    p.loras.push_back(l);
  }
  for (int i = 0; i < n; ++i) {
    double norm = (p.left(i) * p.loras[i].A).squaredNorm();
    p.weights.push_back(norm > 0 ? 1 / norm : 1);
  }
  return p;
}

MatrixXd dense(const ModuleProblem& p, size_t i) { return p.left(i) * p.loras[i].A; }
MatrixXd dense(const ModuleFit& f, size_t i) { return f.left(i) * f.right(i); }

double dense_weighted_error(const ModuleProblem& p, const ModuleFit& f) {
  double e = 0;
  for (size_t i = 0; i < p.tasks(); ++i) e += p.weights[i] * (dense(p, i) - dense(f, i)).squaredNorm();
  return e;
}

// Optimal sum_i w_i ||dW_i - dW_i V V^T||^2 over rank-k V: tail of the
// singular values of the dense weighted stack.
double dense_shared_a_optimum(const ModuleProblem& p, int k) {
  MatrixXd stack(p.tasks() * p.out(), p.in());
  for (size_t i = 0; i < p.tasks(); ++i) stack.middleRows(i * p.out(), p.out()) = std::sqrt(p.weights[i]) * dense(p, i);
  Eigen::JacobiSVD<MatrixXd> svd(stack);
  return svd.singularValues().tail(svd.singularValues().size() - k).squaredNorm();
}

std::vector<StructureSpec> all_specs(const ModuleShape& m) {
  std::vector<StructureSpec> v;
  for (int f = 0; f <= static_cast<int>(Family::kAvgA); ++f) {
    for (int64_t k : {1, 2, 3, 5, 8}) {
      for (int g : {0, 2, 3}) {
        StructureSpec s{static_cast<Family>(f), k, g};
        if (spec_valid(s, m)) v.push_back(s);
      }
    }
  }
  return v;
}

TEST(Structures, FactoredErrorsMatchDenseForEveryStructure) {
  auto p = make_problem(5, 9, 7, 3, 1);
  ModuleFitter fitter(p, {});
  auto specs = all_specs(fitter.shape());
  ASSERT_GT(specs.size(), 40u);
  for (auto& s : specs) {
    SCOPED_TRACE(s.label());
    ModuleFit f = fitter.fit(s);
    auto e = fit_errors2(p, f);
    for (size_t i = 0; i < p.tasks(); ++i) {
      double d = (dense(p, i) - dense(f, i)).squaredNorm();
      EXPECT_NEAR(e[i], d, 1e-9 * (1 + dense(p, i).squaredNorm())) << s.label() << " task " << i;
    }
    EXPECT_EQ(f.params(), spec_params(s, fitter.shape())) << s.label();
    // Bytes told from the spec are the fit's own, in any precision.
    int64_t numbers = 0;
    for (const StoredShape& x : spec_matrices(s, fitter.shape())) numbers += x.count * x.rows * x.cols;
    EXPECT_EQ(numbers, f.params());
    const Precision mixed{QuantFormat{3, 64, false}, QuantFormat{4, 32, true}, QuantFormat{8, 32, true}};
    for (const Precision& pr : {Precision{}, mixed, Precision{QuantFormat{2, 128, true}, {}, {}}}) {
      EXPECT_EQ(fit_bytes(f, pr, DType::BF16), spec_bytes(s, fitter.shape(), pr, DType::BF16)) << pr.label();
    }
  }
}

TEST(Structures, SharedAMatchesTheDenseSvdOptimum) {
  auto p = make_problem(6, 16, 12, 3, 2);
  ModuleFitter fitter(p, {});
  for (int k : {1, 3, 5, 8}) {
    double got = weighted_error(p, fitter.fit({Family::kSharedA, k, 0}));
    EXPECT_NEAR(got, dense_shared_a_optimum(p, k), 1e-9 * (1 + got)) << k;
    // The wide body with cores reaches the same error with k' rows.
    double core = weighted_error(p, fitter.fit({Family::kSharedACore, k, 0}));
    EXPECT_NEAR(core, got, 1e-9 * (1 + got)) << k;
  }
}

TEST(Structures, SharedBIsTheMirroredOptimum) {
  auto p = make_problem(6, 12, 16, 3, 3);
  auto t = p.transposed();
  ModuleFitter fitter(p, {});
  for (int k : {2, 4}) {
    double got = weighted_error(p, fitter.fit({Family::kSharedB, k, 0}));
    EXPECT_NEAR(got, dense_shared_a_optimum(t, k), 1e-9 * (1 + got));
  }
}

TEST(Structures, MergedIsTheBestRankKFitOfTheWeightedMean) {
  auto p = make_problem(4, 10, 8, 3, 4);
  ModuleFitter fitter(p, {});
  double wsum = 0;
  MatrixXd mean = MatrixXd::Zero(p.out(), p.in());
  for (size_t i = 0; i < p.tasks(); ++i) {
    mean += p.weights[i] * dense(p, i);
    wsum += p.weights[i];
  }
  mean /= wsum;
  Eigen::JacobiSVD<MatrixXd> svd(mean, Eigen::ComputeThinU | Eigen::ComputeThinV);
  for (int k : {1, 3}) {
    MatrixXd best = svd.matrixU().leftCols(k) * svd.singularValues().head(k).asDiagonal() *
                    svd.matrixV().leftCols(k).transpose();
    ModuleFit f = fitter.fit({Family::kMerged, k, 0});
    EXPECT_LE((dense(f, 0) - best).norm(), 1e-10 * best.norm());
  }
}

TEST(Structures, ExactAndFullRankStructuresReproduceTheUpdates) {
  auto p = make_problem(4, 10, 8, 3, 5);
  ModuleFitter fitter(p, {});
  double total = 0;
  for (size_t i = 0; i < p.tasks(); ++i) total += p.weights[i] * dense(p, i).squaredNorm();
  EXPECT_LE(weighted_error(p, fitter.fit({Family::kExact, 0, 0})), 1e-14 * total);
  const int64_t full = std::min<int64_t>(8, fitter.shape().rank_sum());
  EXPECT_LE(weighted_error(p, fitter.fit({Family::kSharedA, full, 0})), 1e-12 * total);
  EXPECT_LE(weighted_error(p, fitter.fit({Family::kMultiA, 3, 0})), 1e-12 * total);
  EXPECT_LE(weighted_error(p, fitter.fit({Family::kJdFull, 8, 0})), 1e-12 * total);
}

TEST(Structures, AlternatingFitsNeverRaiseTheObjective) {
  auto p = make_problem(6, 14, 11, 3, 6);
  ModuleFitter fitter(p, {});
  for (StructureSpec s : {StructureSpec{Family::kSharedA, 3, 2}, StructureSpec{Family::kSharedACore, 6, 2},
                          StructureSpec{Family::kJdFull, 4, 0}, StructureSpec{Family::kJdDiag, 6, 0},
                          StructureSpec{Family::kSharedB, 3, 3}}) {
    FitStats st;
    ModuleFit f = fitter.fit(s, &st);
    ASSERT_GE(st.objective.size(), 2u) << s.label();
    for (size_t j = 1; j < st.objective.size(); ++j) {
      EXPECT_LE(st.objective[j], st.objective[j - 1] * (1 + 1e-12)) << s.label() << " step " << j;
    }
    EXPECT_NEAR(st.objective.back(), dense_weighted_error(p, f), 1e-9 * st.objective.front()) << s.label();
    EXPECT_LT(st.objective.back(), st.objective.front()) << s.label() << " should improve on its start";
  }
}

TEST(Structures, MoreSharedRankNeverRaisesTheError) {
  auto p = make_problem(6, 14, 11, 3, 7);
  ModuleFitter fitter(p, {});
  for (Family fam : {Family::kSharedA, Family::kSharedACore, Family::kMerged, Family::kSharedB, Family::kJdFull}) {
    double prev = INFINITY;
    for (int k = 1; k <= 10; ++k) {
      StructureSpec s{fam, k, 0};
      if (!spec_valid(s, fitter.shape())) continue;
      double e = weighted_error(p, fitter.fit(s));
      EXPECT_LE(e, prev * (1 + 1e-9) + 1e-12) << s.label();
      prev = e;
    }
  }
}

TEST(Structures, RoundedFitsCarryTheStoredValues) {
  auto p = make_problem(3, 8, 6, 2, 8, false);
  ModuleFitter fitter(p, {});
  ModuleFit f = fitter.fit({Family::kSharedA, 2, 0}).rounded(DType::BF16);
  for (auto& h : f.heads) EXPECT_EQ(h, round_to_dtype(h, DType::BF16));
}

// The hydra point's streamed fit, on factors read transposed (as stored),
// gives the bits of fitting, rounding and measuring one after the other: by the exact solver (P = 14 rows), by the
// range finder (P = 175 > 128) for k or (body_width 4, P = 159) 4k
// columns, and by the range finder's double phase (every task with one A:
// a stack of rank 16); serially (F32) and on 2 threads (BF16). It reads
// each task twice, three times when T is needed in double (exact solver,
// double phase).
TEST(Structures, StreamedSharedHeadsEqualFitRoundAndMeasure) {
  struct Case {
    int n, in, r, body_width;
    bool one_a, dense;
  };
  // (Also rank 1, where Eigen multiplies matrix by vector, and in = 8,
  // where it multiplies coefficient by coefficient: the transposed reads are
  // copied out there.)
  for (auto c : {Case{5, 40, 3, 1, false, true}, Case{12, 300, 16, 1, false, false},
                 Case{20, 300, 8, 4, false, false}, Case{12, 300, 16, 1, true, true},
                 Case{6, 300, 1, 1, false, true}, Case{5, 8, 2, 1, false, true}}) {
    ModuleProblem p = make_problem(c.n, c.in, 30, c.r, 21, true);
    if (c.one_a) {
      for (auto& l : p.loras) l.A = p.loras[0].A.topRows(l.A.rows());
    }
    ModuleFitter fitter(p, {});
    const ModuleShape shape = fitter.shape();
    const StructureSpec s{Family::kSharedA, c.r, 0};
    FitOptions o;
    o.body_width = c.body_width;
    for (DType dtype : {DType::F32, DType::BF16}) {
      const ModuleFit want = ModuleFitter(p, o).fit(s).rounded(dtype);
      std::vector<double> err2;
      std::vector<int> reads(p.tasks(), 0);
      auto read = [&](size_t i) {
        ++reads[i];  // each task is read by one thread at a time
        return ModuleLoraT{p.loras[i].A.transpose(), p.loras[i].B.transpose(), p.loras[i].scale};
      };
      const util::InnerThreads threads(dtype == DType::BF16 ? 2 : 1);
      const ModuleFit got = fit_shared_heads(shape, p.weights, read, s, o, dtype, update_norms2(p), &err2);
      EXPECT_EQ(reads, std::vector<int>(p.tasks(), c.dense ? 3 : 2)) << c.n << " " << c.r;
      EXPECT_EQ(err2, fit_errors2(p, want));
      test::expect_same_fit(got, want);
      EXPECT_EQ(got.params(), want.params());
    }
  }
  const ModuleProblem p = make_problem(4, 20, 10, 2, 3, false);
  std::vector<double> err2;
  auto read = [&](size_t i) { return ModuleLoraT{p.loras[i].A.transpose(), p.loras[i].B.transpose(), p.loras[i].scale}; };
  const ModuleShape shape = ModuleFitter(p, {}).shape();
  EXPECT_THROW(fit_shared_heads(shape, p.weights, read, {Family::kSharedA, 2, 2}, {}, DType::F32, {}, &err2),
               std::logic_error);
  EXPECT_THROW(fit_shared_heads(shape, p.weights, read, {Family::kSharedA, 30, 0}, {}, DType::F32, update_norms2(p), &err2),
               Error);
}

TEST(Cluster, WardRecoversSeparatedGroupsDeterministically) {
  // Points on a line: {0, 0.1, 0.2} {10, 10.1} {20}
  std::vector<double> x = {10, 0, 20, 0.1, 10.1, 0.2};
  MatrixXd d2(6, 6);
  for (int i = 0; i < 6; ++i)
    for (int j = 0; j < 6; ++j) d2(i, j) = (x[i] - x[j]) * (x[i] - x[j]);
  Dendrogram t(d2, std::vector<double>(6, 1.0));
  EXPECT_EQ(t.cut(3), (std::vector<int>{0, 1, 2, 1, 0, 1}));
  EXPECT_EQ(t.cut(1), (std::vector<int>(6, 0)));
  EXPECT_EQ(t.cut(6), (std::vector<int>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(t.cut(2), (std::vector<int>{0, 1, 0, 1, 0, 1}));
}

TEST(Structures, UserGroupsAreUsedForSharedHeads) {
  auto p = make_problem(4, 10, 8, 3, 9, false);
  FitOptions o;
  o.user_groups = {5, 5, 7, 7};
  ModuleFitter fitter(p, o);
  ModuleFit f = fitter.fit({Family::kSharedA, 3, 2});
  EXPECT_EQ(f.head_of, (std::vector<int>{0, 0, 1, 1}));
}

}  // namespace
}  // namespace hydraopt

namespace hydraopt {
namespace {

// Independent dense HOOI: exact eigenvectors of the dense side matrices.
double dense_hooi_error(const ModuleProblem& p, int k, int iters) {
  const size_t n = p.tasks();
  std::vector<MatrixXd> dw(n);
  for (size_t i = 0; i < n; ++i) dw[i] = dense(p, i);
  auto top = [&](const MatrixXd& s) {
    Eigen::SelfAdjointEigenSolver<MatrixXd> eig(s);
    return MatrixXd(eig.eigenvectors().rightCols(k));
  };
  MatrixXd sv = MatrixXd::Zero(p.in(), p.in()), su = MatrixXd::Zero(p.out(), p.out());
  for (size_t i = 0; i < n; ++i) {
    sv += p.weights[i] * dw[i].transpose() * dw[i];
    su += p.weights[i] * dw[i] * dw[i].transpose();
  }
  MatrixXd v = top(sv), u = top(su);
  for (int it = 0; it < iters; ++it) {
    sv.setZero();
    for (size_t i = 0; i < n; ++i) sv += p.weights[i] * dw[i].transpose() * u * u.transpose() * dw[i];
    v = top(sv);
    su.setZero();
    for (size_t i = 0; i < n; ++i) su += p.weights[i] * dw[i] * v * v.transpose() * dw[i].transpose();
    u = top(su);
  }
  double e = 0;
  for (size_t i = 0; i < n; ++i) e += p.weights[i] * (dw[i] - u * u.transpose() * dw[i] * v * v.transpose()).squaredNorm();
  return e;
}

TEST(Structures, JdFullReachesTheDenseHooiOptimum) {
  auto p = make_problem(5, 12, 10, 3, 11);
  FitOptions o;
  o.max_iters = 500;
  o.tol = 1e-12;
  ModuleFitter fitter(p, o);
  for (int k : {2, 4, 6}) {
    double ours = weighted_error(p, fitter.fit({Family::kJdFull, k, 0}));
    double ref = dense_hooi_error(p, k, 200);
    EXPECT_NEAR(ours, ref, 1e-5 * ref) << k;
  }
}

// Independent dense CP/INDSCAL ALS for dW_i ~ U diag(c_i) V^T: each block
// an ordinary least-squares problem on the dense, weighted updates, solved
// by QR (the library works on rank-sized Grams and pseudo-inverses).
struct DenseCp {
  MatrixXd u, v;  // out x k, in x k
  std::vector<Eigen::VectorXd> c;
};

double dense_cp_objective(const ModuleProblem& p, const DenseCp& m) {
  double e = 0;
  for (size_t i = 0; i < p.tasks(); ++i) {
    e += p.weights[i] * (dense(p, i) - m.u * m.c[i].asDiagonal() * m.v.transpose()).squaredNorm();
  }
  return e;
}

// The start fit_jd documents: V and U the top-k right singular vectors of
// the weighted stacks of the dW_i and of the dW_i^T, c_i = diag(U^T dW_i V).
DenseCp dense_cp_start(const ModuleProblem& p, int k) {
  const size_t n = p.tasks();
  MatrixXd rows(n * p.out(), p.in()), cols(n * p.in(), p.out());
  for (size_t i = 0; i < n; ++i) {
    rows.middleRows(i * p.out(), p.out()) = std::sqrt(p.weights[i]) * dense(p, i);
    cols.middleRows(i * p.in(), p.in()) = std::sqrt(p.weights[i]) * dense(p, i).transpose();
  }
  DenseCp m;
  m.v = Eigen::JacobiSVD<MatrixXd>(rows, Eigen::ComputeThinV).matrixV().leftCols(k);
  m.u = Eigen::JacobiSVD<MatrixXd>(cols, Eigen::ComputeThinV).matrixV().leftCols(k);
  for (size_t i = 0; i < n; ++i) m.c.push_back((m.u.transpose() * dense(p, i) * m.v).diagonal());
  return m;
}

// One sweep in the library's block order: U, every c_i, V.
void dense_cp_sweep(const ModuleProblem& p, DenseCp& m) {
  const size_t n = p.tasks();
  const Eigen::Index k = m.u.cols(), in = p.in(), out = p.out();
  // U: [sqrt(w_i) dW_i]_i = U [sqrt(w_i) diag(c_i) V^T]_i side by side.
  MatrixXd x(out, n * in), mt(n * in, k);
  for (size_t i = 0; i < n; ++i) {
    x.middleCols(i * in, in) = std::sqrt(p.weights[i]) * dense(p, i);
    mt.middleRows(i * in, in) = std::sqrt(p.weights[i]) * m.v * m.c[i].asDiagonal();
  }
  m.u = mt.colPivHouseholderQr().solve(x.transpose()).transpose();
  // c_i: vec(dW_i) = sum_j c_ij vec(u_j v_j^T).
  for (size_t i = 0; i < n; ++i) {
    MatrixXd design(out * in, k);
    for (Eigen::Index j = 0; j < k; ++j) {
      const MatrixXd rank1 = m.u.col(j) * m.v.col(j).transpose();
      design.col(j) = Eigen::Map<const Eigen::VectorXd>(rank1.data(), rank1.size());
    }
    const MatrixXd d = dense(p, i);
    m.c[i] = design.colPivHouseholderQr().solve(Eigen::Map<const Eigen::VectorXd>(d.data(), d.size()));
  }
  // V: [sqrt(w_i) dW_i]_i = [sqrt(w_i) U diag(c_i)]_i V^T stacked.
  MatrixXd y(n * out, in), nn(n * out, k);
  for (size_t i = 0; i < n; ++i) {
    y.middleRows(i * out, out) = std::sqrt(p.weights[i]) * dense(p, i);
    nn.middleRows(i * out, out) = std::sqrt(p.weights[i]) * m.u * m.c[i].asDiagonal();
  }
  m.v = nn.colPivHouseholderQr().solve(y).transpose();
}

TEST(Structures, JdDiagMatchesADenseAlsReference) {
  auto p = make_problem(4, 9, 8, 2, 12, false);
  const int k = 3;
  DenseCp ref = dense_cp_start(p, k);
  // Step by step: the library's objective after its start and each sweep
  // is the dense reference's after as many sweeps, and so is the fit.
  {
    FitOptions o;
    o.max_iters = 25;
    o.tol = 0;
    FitStats st;
    ModuleFit f = ModuleFitter(p, o).fit({Family::kJdDiag, k, 0}, &st);
    EXPECT_EQ(st.objective.size(), 26u);  // never stopped by a rising objective
    DenseCp m = ref;
    for (size_t j = 0; j < st.objective.size(); ++j) {
      if (j > 0) dense_cp_sweep(p, m);
      EXPECT_NEAR(st.objective[j], dense_cp_objective(p, m), 1e-9 * st.objective[0]) << "sweep " << j;
    }
    EXPECT_LT(st.objective.back(), 0.9 * st.objective.front());  // the sweeps did something
    for (size_t i = 0; i < p.tasks(); ++i) {
      const MatrixXd want = m.u * m.c[i].asDiagonal() * m.v.transpose();
      EXPECT_LE((dense(f, i) - want).norm(), 1e-6 * dense(p, i).norm()) << "task " << i;
    }
  }
  // Converged: the same objective as the reference run as long.
  FitOptions o;
  o.max_iters = 3000;
  o.tol = 1e-14;
  ModuleFit f = ModuleFitter(p, o).fit({Family::kJdDiag, k, 0});
  for (int j = 0; j < 3000; ++j) dense_cp_sweep(p, ref);
  const double want = dense_cp_objective(p, ref);
  EXPECT_NEAR(weighted_error(p, f), want, 1e-6 * want);
}

TEST(Structures, HydraAvgIsTheMeanOfTheAs) {
  auto p = make_problem(4, 9, 8, 3, 13, false);
  p.loras[1].A = test::random_matrix(3, 9, 77);
  p.loras[1].B = test::random_matrix(8, 3, 78);
  ModuleFitter fitter(p, {});
  ModuleFit f = fitter.fit({Family::kAvgA, 0, 0});
  MatrixXd mean = MatrixXd::Zero(3, 9);
  for (auto& l : p.loras) mean += l.A / 4.0;
  for (size_t i = 0; i < 4; ++i) {
    MatrixXd expect = p.loras[i].scale * p.loras[i].B * mean;
    EXPECT_LE((dense(f, i) - expect).norm(), 1e-12 * expect.norm());
  }
}

}  // namespace
}  // namespace hydraopt
