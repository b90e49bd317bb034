// The randomized range finder against the exact top-k right subspace: the
// residual energy ||T||^2 - ||T V||^2 is what every fit minimises, so that is
// what must agree (within the design's 0.1%; the solver aims at 0.01%).
#include <gtest/gtest.h>

#include <Eigen/QR>
#include <Eigen/SVD>
#include <cmath>

#include "linalg/factored.h"
#include "util/parallel.h"
#include "test_util.h"
#include "util/random.h"

namespace hydraopt {
namespace {

using Eigen::MatrixXd;

// T = U diag(s) W^T with orthonormal U (P x m), W (n x m), s_j = decay^j.
MatrixXd with_spectrum(Eigen::Index p, Eigen::Index n, double decay, uint64_t seed) {
  util::Stream rng(seed, 1);
  const Eigen::Index m = std::min(p, n);
  Eigen::HouseholderQR<MatrixXd> qu(rng.normal(p, m, 1.0)), qw(rng.normal(n, m, 1.0));
  MatrixXd u = qu.householderQ() * MatrixXd::Identity(p, m);
  MatrixXd w = qw.householderQ() * MatrixXd::Identity(n, m);
  Eigen::VectorXd s(m);
  for (Eigen::Index j = 0; j < m; ++j) s(j) = std::pow(decay, static_cast<double>(j));
  return u * s.asDiagonal() * w.transpose();
}

double residual(const MatrixXd& t, const MatrixXd& v) { return t.squaredNorm() - (t * v).squaredNorm(); }

void expect_orthonormal(const MatrixXd& v) {
  EXPECT_LT((v.transpose() * v - MatrixXd::Identity(v.cols(), v.cols())).cwiseAbs().maxCoeff(), 1e-10);
}

struct Case {
  Eigen::Index p, n, k;
  double decay;
};

class RangeFinder : public ::testing::TestWithParam<Case> {};

TEST_P(RangeFinder, ResidualMatchesTheExactOptimum) {
  const Case c = GetParam();
  const MatrixXd t = with_spectrum(c.p, c.n, c.decay, 7);
  const linalg::Subspace fast = linalg::top_right_subspace(t, c.k);
  const linalg::Subspace exact = linalg::top_right_subspace_exact(t, c.k);
  ASSERT_EQ(fast.basis.rows(), c.n);
  ASSERT_EQ(fast.basis.cols(), c.k);
  expect_orthonormal(fast.basis);
  // The closed form of the optimum: the energy of the spectrum's tail.
  double tail = 0;
  for (Eigen::Index j = c.k; j < std::min(c.p, c.n); ++j) tail += std::pow(c.decay, 2.0 * static_cast<double>(j));
  EXPECT_NEAR(residual(t, exact.basis), tail, 1e-9 * t.squaredNorm());
  EXPECT_LE(residual(t, fast.basis), tail * (1 + 1e-3) + 1e-12 * t.squaredNorm())
      << "iterations " << fast.iterations << (fast.exact ? " (exact)" : "");
  // Reported singular values are sqrt of the captured energies.
  EXPECT_NEAR(fast.values.squaredNorm(), (t * fast.basis).squaredNorm(), 1e-6 * t.squaredNorm());
  EXPECT_FALSE(fast.exact) << "these sizes must use the randomized solver";
}

INSTANTIATE_TEST_SUITE_P(Spectra, RangeFinder,
                         ::testing::Values(Case{320, 256, 8, 0.9},     // tall, fast decay
                                           Case{320, 256, 32, 0.99},   // slow decay, no gap
                                           Case{300, 900, 16, 0.97},   // wide: P < n
                                           Case{400, 400, 40, 1.0},    // flat: worst case
                                           Case{320, 256, 8, 0.7},     // residual 0.3%: single precision
                                           Case{320, 256, 8, 0.5}));   // nearly exact: double phase

TEST(RangeFinder, LowRankInputIsCapturedExactly) {
  util::Stream rng(3, 2);
  const MatrixXd t = rng.normal(400, 6, 1.0) * rng.normal(6, 300, 1.0);  // rank 6
  const auto s = linalg::top_right_subspace(t, 8);
  EXPECT_LT(residual(t, s.basis), 1e-10 * t.squaredNorm());
  EXPECT_FALSE(s.exact);
  EXPECT_LE(s.iterations, 3);
}

TEST(RangeFinder, SmallProblemsAreSolvedExactly) {
  const MatrixXd t = with_spectrum(60, 50, 0.9, 5);
  const auto fast = linalg::top_right_subspace(t, 4);
  EXPECT_TRUE(fast.exact);
  const auto exact = linalg::top_right_subspace_exact(t, 4);
  EXPECT_EQ((fast.basis - exact.basis).cwiseAbs().maxCoeff(), 0.0);
}

TEST(RangeFinder, SameInputSameBits) {
  const MatrixXd t = with_spectrum(320, 256, 0.95, 11);
  const auto a = linalg::top_right_subspace(t, 16), b = linalg::top_right_subspace(t, 16);
  EXPECT_EQ((a.basis - b.basis).cwiseAbs().maxCoeff(), 0.0);
}

// Products with T run in fixed blocks of rows and columns, spread over the
// threads util::InnerThreads allows: the thread count must not change a
// bit, nor must handing the stack over in single precision with T on demand.
TEST(RangeFinder, SameBitsWhateverTheThreadCount) {
  const MatrixXd t = with_spectrum(700, 500, 0.95, 13);  // 6 row blocks, 4 column blocks
  const auto one = linalg::top_right_subspace(t, 24);
  ASSERT_FALSE(one.exact);
  for (int threads : {2, 3}) {
    const util::InnerThreads inner(threads);
    const auto many = linalg::top_right_subspace(t, 24);
    EXPECT_EQ((one.basis - many.basis).cwiseAbs().maxCoeff(), 0.0) << threads;
  }
  int asked = 0;
  const auto lazy = linalg::top_right_subspace(t.cast<float>(), [&]() -> const MatrixXd& {
    ++asked;
    return t;
  }, 24);
  EXPECT_EQ((one.basis - lazy.basis).cwiseAbs().maxCoeff(), 0.0);
  EXPECT_EQ(asked, 0);  // the residual stays above 0.1% of ||T||^2: single precision throughout

  // Residual ~0.3% of ||T||^2 (strongly shared adapters): still single
  // precision, and within the tolerance of the optimum (sum_{j>=24} s_j^2).
  const MatrixXd moderate = with_spectrum(700, 500, 0.886, 19);
  const auto lazy_moderate = linalg::top_right_subspace(moderate.cast<float>(), [&]() -> const MatrixXd& {
    ++asked;
    return moderate;
  }, 24);
  EXPECT_EQ(asked, 0);
  double optimum = 0;
  for (int j = 24; j < 500; ++j) optimum += std::pow(0.886, 2.0 * j);
  EXPECT_GT(optimum, 1e-3 * moderate.squaredNorm());
  EXPECT_LT(optimum, 1e-2 * moderate.squaredNorm());
  EXPECT_LE(residual(moderate, lazy_moderate.basis), optimum * (1 + 1e-3));

  const MatrixXd steep = with_spectrum(700, 500, 0.7, 17);  // residual ~1e-8: a double phase
  const auto dense = linalg::top_right_subspace(steep, 24);
  const auto lazy_steep = linalg::top_right_subspace(steep.cast<float>(), [&]() -> const MatrixXd& {
    ++asked;
    return steep;
  }, 24);
  EXPECT_EQ(asked, 1);
  EXPECT_EQ((dense.basis - lazy_steep.basis).cwiseAbs().maxCoeff(), 0.0);
}

// A wide k on a flat floor of small singular values (what the widest
// shared bodies meet: the tasks' own directions past the shared ones)
// converges slowly by iterating; the range finder takes the Gram's top
// eigenpairs instead, and must still reach the optimum. On a steep
// spectrum of the same shape (residual ~1e-18 of ||T||^2) a single-precision
// Gram would be too coarse: the iterations reach the double phase first
// and go on there.
TEST(RangeFinder, GramRouteOnAFlatFloorReachesTheOptimum) {
  const Eigen::Index p = 600, n = 800, k = 120;
  util::Stream rng(29, 1);
  Eigen::HouseholderQR<MatrixXd> qu(rng.normal(p, p, 1.0)), qw(rng.normal(n, p, 1.0));
  const MatrixXd u = qu.householderQ() * MatrixXd::Identity(p, p), w = qw.householderQ() * MatrixXd::Identity(n, p);
  Eigen::VectorXd s(p);
  for (Eigen::Index j = 0; j < p; ++j) s(j) = j < 60 ? 1.0 + std::pow(0.9, double(j)) : 0.1 * (1.0 - double(j) / 2000);
  const MatrixXd t = u * s.asDiagonal() * w.transpose();
  double optimum = 0;
  for (Eigen::Index j = k; j < p; ++j) optimum += s(j) * s(j);
  ASSERT_GT(optimum, 1e-3 * t.squaredNorm());
  int asked = 0;
  const auto flat = linalg::top_right_subspace(t.cast<float>(), [&]() -> const MatrixXd& {
    ++asked;
    return t;
  }, k);
  EXPECT_EQ(asked, 0);
  ASSERT_EQ(flat.basis.cols(), k);
  expect_orthonormal(flat.basis);
  EXPECT_LE(residual(t, flat.basis), optimum * (1 + 1e-4));
  EXPECT_NEAR(flat.values.squaredNorm(), (t * flat.basis).squaredNorm(), 1e-5 * t.squaredNorm());
  if (HYDRAOPT_HAVE_LAPACKE) EXPECT_EQ(flat.iterations, 2);  // the Gram route, after the second iteration

  const MatrixXd steep = with_spectrum(p, n, 0.84, 31);
  const auto dense = linalg::top_right_subspace(steep, k);
  const auto lazy = linalg::top_right_subspace(steep.cast<float>(), [&]() -> const MatrixXd& {
    ++asked;
    return steep;
  }, k);
  EXPECT_EQ(asked, 1);  // the double phase
  EXPECT_EQ((dense.basis - lazy.basis).cwiseAbs().maxCoeff(), 0.0);
  double steep_optimum = 0;
  for (Eigen::Index j = k; j < p; ++j) steep_optimum += std::pow(0.84, 2.0 * double(j));
  EXPECT_LE(residual(steep, dense.basis), steep_optimum * (1 + 1e-3) + 1e-12 * steep.squaredNorm());
  EXPECT_GT(dense.iterations, 2);
}

// The product form against the exact truncated SVD of L R: the captured
// energy ||L R V||^2 must match the optimum's (the merged fits' error is
// ||L R||^2 minus it), on a product wide enough for the randomized path.
TEST(RangeFinder, ProductMatchesTheExactTruncatedSvd) {
  const MatrixXd t = with_spectrum(600, 500, 0.97, 19);  // = L R with a known spectrum
  const MatrixXd l = t.leftCols(300), r = MatrixXd::Identity(300, 500);
  const MatrixXd lr = l * r;
  for (Eigen::Index k : {8, 40}) {
    const auto fast = linalg::top_right_subspace_of_product(l, r, k);
    EXPECT_FALSE(fast.exact);
    ASSERT_EQ(fast.basis.cols(), k);
    expect_orthonormal(fast.basis);
    MatrixXd u, vt;
    linalg::factored_svd(l, r, k, &u, &vt);
    const double best = u.squaredNorm(), got = (lr * fast.basis).squaredNorm();
    EXPECT_LE(got, best * (1 + 1e-12));
    EXPECT_GE(got, best * (1 - 1e-3) - (lr.squaredNorm() - best) * 1e-3) << "k " << k << " iterations " << fast.iterations;
  }
  const auto small = linalg::top_right_subspace_of_product(l.leftCols(20), r.topRows(20), 5);
  EXPECT_TRUE(small.exact);
}

// S^T S must equal L^T L (the Cholesky path), also when L is rank
// deficient (the QR fallback), and a wide L is returned as is.
TEST(LeftCore, ReproducesTheGram) {
  util::Stream rng(21, 3);
  MatrixXd full = rng.normal(500, 12, 1.0);
  MatrixXd deficient = rng.normal(500, 5, 1.0) * rng.normal(5, 12, 1.0);  // rank 5
  for (const MatrixXd& l : {full, deficient}) {
    const MatrixXd s = linalg::left_core(l);
    ASSERT_EQ(s.rows(), 12);
    ASSERT_EQ(s.cols(), 12);
    EXPECT_EQ(MatrixXd(s.triangularView<Eigen::StrictlyLower>()).cwiseAbs().maxCoeff(), 0.0);
    const MatrixXd g = l.transpose() * l;
    EXPECT_LT((s.transpose() * s - g).norm(), 1e-12 * g.norm());
  }
  const MatrixXd wide = rng.normal(4, 12, 1.0);
  EXPECT_EQ(linalg::left_core(wide), wide);
}

// The Grams of X and of X^T agree bit for bit, and so do the left cores,
// also where a last block of rows is thin enough for Eigen's small-product
// path (266 = 256 + 10 rows, 4 columns).
TEST(Grams, OfAMatrixAndOfItsTransposeAreTheSameBits) {
  for (auto [rows, cols] : {std::pair<int, int>{266, 4}, {700, 32}, {9, 3}, {300, 1}}) {
    const MatrixXd x = test::random_matrix(rows, cols, 17);
    const MatrixXd xt = x.transpose();
    EXPECT_EQ(linalg::column_gram(x), linalg::row_gram(xt)) << rows << " x " << cols;
    EXPECT_EQ(linalg::left_core(x), linalg::left_core_transposed(xt)) << rows << " x " << cols;
    EXPECT_NEAR((linalg::column_gram(x) - x.transpose() * x).norm(), 0, 1e-12 * x.squaredNorm());
  }
}

}  // namespace
}  // namespace hydraopt

namespace hydraopt {
namespace {

// left_singular_pairs (the whitening's factorisation) against a dense SVD:
// the same values, an orthonormal basis spanning the same singular vectors
// (U U^T, unique where the values are distinct), G = U diag(s) V^T for V
// = G^T U / s.
TEST(LeftSingularPairs, MatchesDenseSvd) {
  for (const auto& [n, k] : {std::pair<Eigen::Index, Eigen::Index>{40, 7}, {300, 60}, {64, 64}}) {
    const MatrixXd g = with_spectrum(n, k, 0.8, 70 + static_cast<uint64_t>(n));
    const linalg::Subspace s = linalg::left_singular_pairs(g);
    Eigen::JacobiSVD<MatrixXd> svd(g, Eigen::ComputeThinU);
    ASSERT_EQ(s.values.size(), k);
    // From the Gram: each value's square to ~1e-16 of the largest square.
    const double top2 = svd.singularValues()(0) * svd.singularValues()(0);
    EXPECT_LT((s.values.array().square() - svd.singularValues().array().square()).abs().maxCoeff(), 1e-13 * top2) << n;
    expect_orthonormal(s.basis);
    const MatrixXd u = svd.matrixU();
    // Values above 1e-3 of the largest: the Gram determines their vectors
    // (eigenvalue gaps far above its rounding).
    const Eigen::Index firm = (svd.singularValues().array() > 1e-3 * svd.singularValues()(0)).count();
    EXPECT_LT((s.basis.leftCols(firm) * s.basis.leftCols(firm).transpose() -
               u.leftCols(firm) * u.leftCols(firm).transpose()).norm(), 1e-8) << n;
    EXPECT_LT((s.basis * s.basis.transpose() * g - g).norm(), 1e-10 * g.norm()) << n;
  }
}

// The one-pass sketch of the top-k left singular pairs: exact (to single
// precision) when G has rank <= k; otherwise values at most the true
// ones, and a basis capturing nearly the top-k energy on a decaying
// spectrum.
TEST(SketchedLeftSingularPairs, BoundsAndLowRankExactness) {
  const Eigen::Index n = 400, m = 900, k = 40;
  {
    const MatrixXd low = with_spectrum(n, 30, 0.9, 80) * with_spectrum(30, m, 1.0, 81);  // rank 30
    const linalg::Subspace s = linalg::sketched_left_singular_pairs(low.cast<float>(), k);
    Eigen::BDCSVD<MatrixXd> svd(low);
    ASSERT_EQ(s.values.size(), k);
    EXPECT_LT((s.values.head(30) - svd.singularValues().head(30)).cwiseAbs().maxCoeff(), 1e-5 * svd.singularValues()(0));
    EXPECT_LT((s.basis.leftCols(30) * s.basis.leftCols(30).transpose() * low - low).norm(), 1e-5 * low.norm());
  }
  const MatrixXd g = with_spectrum(n, m, 0.95, 82);
  const linalg::Subspace s = linalg::sketched_left_singular_pairs(g.cast<float>(), k);
  Eigen::BDCSVD<MatrixXd> svd(g);
  const Eigen::VectorXd truth = svd.singularValues().head(k);
  for (Eigen::Index j = 0; j < k; ++j) EXPECT_LE(s.values(j), truth(j) * (1 + 1e-5)) << j;
  EXPECT_LT((s.basis.transpose() * s.basis - MatrixXd::Identity(k, k)).cwiseAbs().maxCoeff(), 1e-5);
  const double captured = (s.basis.transpose() * g).squaredNorm();
  EXPECT_GT(captured, 0.97 * truth.squaredNorm());
  EXPECT_LE(captured, truth.squaredNorm() * (1 + 1e-5));
  // The values are those of the captured part: ||U^T G||^2 = sum s_j^2.
  EXPECT_NEAR(s.values.squaredNorm(), captured, 1e-5 * captured);
}

}  // namespace
}  // namespace hydraopt
