// Predicted errors (Predictor::predict) against fitted and measured ones.
#include <gtest/gtest.h>

#include <cmath>

#include <Eigen/QR>
#include <Eigen/SVD>

#include "core/rounding.h"
#include "linalg/factored.h"
#include "methods/predict.h"
#include "methods/structures.h"
#include "plan/candidates.h"
#include "test_util.h"

namespace hydraopt {
namespace {

using Eigen::MatrixXd;

// Adapters trained from one A initialisation, drifting along shared
// directions, with heads alike within clusters (as synth makes them).
ModuleProblem make_problem(int n, int in, int out, int r, double drift, uint64_t seed) {
  ModuleProblem p;
  const MatrixXd a0 = test::random_matrix(r, in, seed), d = test::random_matrix(2 * r, in, seed + 1);
  for (int i = 0; i < n; ++i) {
    ModuleLora l;
    l.A = a0 + drift * (test::random_matrix(r, 2 * r, seed + 10 + i) * d) / std::sqrt(2.0 * r) +
          0.3 * drift * test::random_matrix(r, in, seed + 100 + i);
    l.B = test::random_matrix(out, r, seed + 200 + i % 3) + 0.6 * test::random_matrix(out, r, seed + 300 + i);
    l.scale = 2.0;
    p.loras.push_back(l);
  }
  for (int i = 0; i < n; ++i) p.weights.push_back(1 / (p.left(i) * p.loras[i].A).squaredNorm());
  return p;
}

double total(const ModuleProblem& p) {
  double t = 0;
  for (size_t i = 0; i < p.tasks(); ++i) t += p.weights[i] * (p.left(i) * p.loras[i].A).squaredNorm();
  return t;
}

// Families whose prediction comes from a single-precision Gram (grouped
// cores and multi bodies): accurate to ~1e-6 of the update's energy.
bool from_single_gram(const StructureSpec& s, size_t tasks) {
  switch (s.family) {
    case Family::kMultiA:
    case Family::kMultiB: return true;
    case Family::kSharedACore:
    case Family::kSharedBCore: return group_count(s.groups, tasks) < static_cast<int>(tasks);
    default: return false;
  }
}

class PredictTest : public ::testing::TestWithParam<std::tuple<int, int, int, int, double>> {};

TEST_P(PredictTest, EveryCandidateMatchesItsClosedFormStart) {
  const auto [n, in, out, r, drift] = GetParam();
  const ModuleProblem p = make_problem(n, in, out, r, drift, 7);
  FitOptions start;
  start.max_iters = 0;  // the closed-form starts, as predicted
  Predictor predictor(p, start);
  ModuleFitter fitter(p, start);
  const double t = total(p);
  int checked = 0;
  for (const CandidateSpec& c : candidate_specs(shape_of(p), Share::kAuto, 0)) {
    if (c.spec.family == Family::kExact) continue;
    const double predicted = predictor.predict(c.spec, DType::F64).error;
    const double fitted = weighted_error(p, fitter.fit(c.spec));
    SCOPED_TRACE(c.spec.label() + ": predicted " + std::to_string(predicted) + ", fitted " + std::to_string(fitted));
    EXPECT_NEAR(predicted, fitted, (from_single_gram(c.spec, p.tasks()) ? 1e-5 : 1e-9) * t + 1e-6 * fitted);
    ++checked;
  }
  EXPECT_GT(checked, 20);
}

// The planner predicts from the range finder's estimate (single precision,
// looser stop): within ~1e-3 of the error plus float rounding of the energy.
TEST_P(PredictTest, EstimatedSubspacesPredictWithinTheirTolerance) {
  const auto [n, in, out, r, drift] = GetParam();
  const ModuleProblem p = make_problem(n, in, out, r, drift, 7);
  FitOptions start, estimate;
  start.max_iters = estimate.max_iters = 0;
  estimate.estimate = true;
  Predictor predictor(p, estimate);
  ModuleFitter fitter(p, start);
  const double t = total(p);
  for (const CandidateSpec& c : candidate_specs(shape_of(p), Share::kAuto, 0)) {
    if (c.spec.family == Family::kExact) continue;
    const double predicted = predictor.predict(c.spec, DType::F64).error;
    const double fitted = weighted_error(p, fitter.fit(c.spec));
    SCOPED_TRACE(c.spec.label() + ": predicted " + std::to_string(predicted) + ", fitted " + std::to_string(fitted));
    EXPECT_NEAR(predicted, fitted, 2e-3 * fitted + 1e-5 * t);
  }
}

TEST_P(PredictTest, RoundingModelTracksTheMeasuredErrorInBf16) {
  const auto [n, in, out, r, drift] = GetParam();
  const ModuleProblem p = make_problem(n, in, out, r, drift, 11);
  FitOptions start;
  start.max_iters = 0;
  Predictor predictor(p, start);
  ModuleFitter fitter(p, start);
  const double t = total(p);
  for (const CandidateSpec& c : candidate_specs(shape_of(p), Share::kAuto, 0)) {
    if (c.spec.family == Family::kExact) continue;
    const double unrounded = predictor.predict(c.spec, DType::F64).error;
    const double predicted = predictor.predict(c.spec, DType::BF16).error;
    const double measured = weighted_error(p, fitter.fit(c.spec).rounded(DType::BF16));
    SCOPED_TRACE(c.spec.label() + ": unrounded " + std::to_string(unrounded) + ", predicted " +
                 std::to_string(predicted) + ", measured " + std::to_string(measured));
    // The model is the rise's expectation: within half of it, or, where the
    // fit leaves much more than rounding adds (and the rounding noise's
    // correlation with the residual moves the error either way), within
    // 1e-4 of the error.
    EXPECT_GT(predicted, unrounded);
    EXPECT_NEAR(predicted, measured, std::max(0.5 * std::abs(measured - unrounded), 1e-4 * measured) + 1e-12 * t);
  }
}

// Against known eigenvalues, on both routes: the dense single-precision
// sum (n < 640) within float rounding of the largest eigenvalue; the block
// Krylov Ritz sum (n >= 640) from below up to float rounding and within its
// stopping tolerance, on a decaying spectrum, on a flat one (slow for
// subspace iteration) and past G's rank (the space exhausted).
TEST(TopEigenSum, MatchesKnownEigenvalues) {
  for (const Eigen::Index n : {300, 800}) {
    for (const double decay : {0.93, 0.999}) {
      const Eigen::Index rank = 120;
      Eigen::HouseholderQR<MatrixXd> qr(test::random_matrix(n, rank, 3));
      const MatrixXd q = qr.householderQ() * MatrixXd::Identity(n, rank);
      Eigen::VectorXd values(rank);  // descending
      for (int j = 0; j < rank; ++j) values(j) = std::pow(decay, j);
      const MatrixXd g = q * values.asDiagonal() * q.transpose();
      for (Eigen::Index k : {1, 6, 32, 120, 150}) {
        const double exact = values.head(std::min(k, rank)).sum();
        const double sum = linalg::top_eigen_sum(g, k);
        SCOPED_TRACE("n " + std::to_string(n) + ", decay " + std::to_string(decay) + ", k " + std::to_string(k));
        if (n >= 640 && 4 * (k + 8) <= n) {
          EXPECT_LE(sum, exact + 1e-5 * static_cast<double>(std::min(k, rank)));
          EXPECT_GE(sum, exact * (1 - 1e-5));
        } else {
          EXPECT_NEAR(sum, exact, 1e-5 * static_cast<double>(std::min(k, rank)));
        }
      }
      EXPECT_EQ(linalg::top_eigen_sum(g, 0), 0);
      EXPECT_EQ(linalg::top_eigen_sum(MatrixXd::Zero(n, n), 8), 0);
    }
  }
}

// Against known eigenvalues: the estimate's (single precision) captured
// energy within its tolerance of the exact one, its vectors orthonormal to
// float precision, and its values what its basis captures.
TEST(TopEigenSubspace, EstimateCapturesTheTopEnergy) {
  const Eigen::Index n = 400, rank = 300;
  Eigen::HouseholderQR<MatrixXd> qr(test::random_matrix(n, rank, 5));
  const MatrixXd q = qr.householderQ() * MatrixXd::Identity(n, rank);
  Eigen::VectorXd values(rank);
  for (int j = 0; j < rank; ++j) values(j) = std::pow(0.97, j);
  const MatrixXd g = q * values.asDiagonal() * q.transpose();
  for (Eigen::Index k : {8, 40, 100}) {
    const linalg::Subspace exact = linalg::top_eigen_subspace(g, k);
    const linalg::Subspace est = linalg::estimate_top_eigen_subspace(g, k);
    SCOPED_TRACE("k " + std::to_string(k));
    EXPECT_NEAR(exact.values.squaredNorm(), values.head(k).sum(), 1e-9);
    const double tail = values.sum() - values.head(k).sum();
    EXPECT_LE(est.values.squaredNorm(), exact.values.squaredNorm() * (1 + 1e-6));
    EXPECT_GE(est.values.squaredNorm(), exact.values.squaredNorm() - 2e-3 * tail - 1e-5 * values.sum());
    EXPECT_LT((est.basis.transpose() * est.basis - MatrixXd::Identity(k, k)).norm(), 1e-4);
    // The captured energy is the basis's: tr(U^T G U).
    EXPECT_NEAR((est.basis.transpose() * g * est.basis).trace(), est.values.squaredNorm(), 1e-5 * values.sum());
  }
}

// The fits' range finder on the same stack: the per-task closed forms
// (projections on the top body subspace) reach the optimum the exact
// predictor computes, to the range finder's tolerance (1e-4 of the
// residual; 1e-3 allowed). A rate taken from the random start's first gain
// once stopped it 1% short here.
TEST(PredictLarge, FitsReachTheExactOptimum) {
  const ModuleProblem p = make_problem(24, 300, 200, 8, 0.3, 7);
  FitOptions start;
  start.max_iters = 0;
  Predictor reference(p, start);
  for (const Family f : {Family::kSharedA, Family::kSharedACore, Family::kSharedB, Family::kSharedBCore}) {
    for (int64_t k : {8, 16, 24, 32}) {
      const StructureSpec s{f, k, 0};
      if (!spec_valid(s, shape_of(p))) continue;
      ModuleFitter fitter(p, start);  // a fresh fitter: its subspace solved at k (or 4r) from scratch
      const double want = reference.predict(s, DType::F64).error;
      const double got = weighted_error(p, fitter.fit(s));
      SCOPED_TRACE(s.label() + ": optimum " + std::to_string(want) + ", fitted " + std::to_string(got));
      EXPECT_GE(got, want * (1 - 1e-9));
      EXPECT_LE(got, want * (1 + 1e-3));
    }
  }
}

// The product's singular values from its two Grams against a dense SVD of
// the product: the captured energy within the estimate's tolerance, never
// above the true one, and the leading values close.
TEST(ProductValues, EstimateFromGramsMatchesTheDenseSvd) {
  const MatrixXd l = test::random_matrix(120, 200, 21) * 0.2, r = test::random_matrix(200, 90, 22);
  Eigen::BDCSVD<MatrixXd> svd(l * r);
  const Eigen::VectorXd sigma = svd.singularValues();
  const double total = sigma.squaredNorm();
  for (Eigen::Index k : {1, 10, 40}) {
    const Eigen::VectorXd est =
        linalg::estimate_product_values(l.transpose() * l, r * r.transpose(), k);
    SCOPED_TRACE("k " + std::to_string(k));
    ASSERT_EQ(est.size(), k);
    const double want = sigma.head(k).squaredNorm(), got = est.squaredNorm();
    EXPECT_LE(got, want * (1 + 1e-6));
    EXPECT_GE(got, want - 2e-3 * (total - want) - 1e-5 * total);
    EXPECT_NEAR(est(0), sigma(0), 2e-3 * sigma(0));
  }
}

// A task without this module (rank 0) and a task of weight 0: both
// predictors (exact and estimate) still match every closed-form start.
TEST(PredictEdges, EmptyTaskAndZeroWeight) {
  ModuleProblem p = make_problem(9, 40, 30, 3, 0.5, 9);
  p.loras[2].A.resize(0, 40);
  p.loras[2].B.resize(30, 0);
  p.weights[2] = 0;
  p.weights[5] = 0;
  FitOptions start, estimate;
  start.max_iters = estimate.max_iters = 0;
  estimate.estimate = true;
  Predictor exact(p, start), estimated(p, estimate);
  ModuleFitter fitter(p, start);
  const double t = total(p);
  int checked = 0;
  for (const CandidateSpec& c : candidate_specs(shape_of(p), Share::kAuto, 0)) {
    if (c.spec.family == Family::kExact) continue;
    const double fitted = weighted_error(p, fitter.fit(c.spec));
    SCOPED_TRACE(c.spec.label() + ": fitted " + std::to_string(fitted));
    const double tol = (from_single_gram(c.spec, p.tasks()) ? 1e-5 : 1e-9) * t + 1e-6 * fitted;
    EXPECT_NEAR(exact.predict(c.spec, DType::F64).error, fitted, tol);
    EXPECT_NEAR(estimated.predict(c.spec, DType::F64).error, fitted, 2e-3 * fitted + 1e-5 * t);
    ++checked;
  }
  EXPECT_GT(checked, 20);
}

// A Predictor lets one side's big Grams go while the other side is asked
// (the planner asks side by side) and makes them again when needed: every
// candidate's prediction is the same bits in any order of asking.
TEST_P(PredictTest, AnyOrderOfCandidatesPredictsTheSame) {
  const auto [n, in, out, r, drift] = GetParam();
  const ModuleProblem p = make_problem(n, in, out, r, drift, 5);
  FitOptions estimate;
  estimate.estimate = true;
  std::vector<StructureSpec> specs;
  for (const CandidateSpec& c : candidate_specs(shape_of(p), Share::kAuto, 0)) {
    if (c.spec.family != Family::kExact) specs.push_back(c.spec);
  }
  Predictor in_order(p, estimate);
  std::vector<double> want;
  for (const StructureSpec& s : specs) want.push_back(in_order.predict(s, DType::BF16).error);
  // Backwards, then alternating between the two ends: each side asked
  // again after the other.
  Predictor backwards(p, estimate), alternating(p, estimate);
  for (size_t j = specs.size(); j-- > 0;) {
    SCOPED_TRACE(specs[j].label());
    EXPECT_EQ(backwards.predict(specs[j], DType::BF16).error, want[j]);
  }
  for (size_t lo = 0, hi = specs.size(); lo < hi;) {
    const size_t j = (lo + specs.size() - hi) % 2 == 0 ? lo++ : --hi;
    SCOPED_TRACE(specs[j].label());
    EXPECT_EQ(alternating.predict(specs[j], DType::BF16).error, want[j]);
  }
}

// (tasks, in, out, rank, drift): exact solves (small) and the randomized
// range finder (in above 128), strongly and weakly shared A's.
INSTANTIATE_TEST_SUITE_P(Shapes, PredictTest,
                         ::testing::Values(std::make_tuple(9, 40, 30, 3, 0.5), std::make_tuple(12, 160, 96, 6, 0.45),
                                           std::make_tuple(12, 160, 200, 6, 0.05)));

// A stack wider than the exact solvers take (sum of ranks 192): the
// estimate's subspace iteration on the Grams against the exact predictor
// (an eigendecomposition in double, the optimum the fits' range finders
// approach to their own tolerance).
TEST(PredictLarge, EstimateTracksTheExactPrediction) {
  const ModuleProblem p = make_problem(24, 300, 200, 8, 0.3, 7);
  FitOptions exact, estimate;
  estimate.estimate = true;
  Predictor reference(p, exact), predictor(p, estimate);
  const double t = total(p);
  int checked = 0;
  for (const CandidateSpec& c : candidate_specs(shape_of(p), Share::kAuto, 0)) {
    if (c.spec.family == Family::kExact) continue;
    const double want = reference.predict(c.spec, DType::F64).error;
    const double got = predictor.predict(c.spec, DType::F64).error;
    SCOPED_TRACE(c.spec.label() + ": exact " + std::to_string(want) + ", estimate " + std::to_string(got));
    EXPECT_NEAR(got, want, 2e-3 * want + 1e-5 * t);
    ++checked;
  }
  EXPECT_GT(checked, 20);
}

}  // namespace
}  // namespace hydraopt
