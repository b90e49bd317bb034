#include "linalg/factored.h"

#include <Eigen/Cholesky>
#include <Eigen/Eigenvalues>
#include <Eigen/QR>
#include <Eigen/SVD>
#include <algorithm>
#include <array>
#include <cmath>
#include <memory>
#include <mutex>
#include <optional>
#include <type_traits>

#include "util/parallel.h"
#include "util/random.h"

namespace hydraopt::linalg {

using Eigen::Index;
using Eigen::MatrixXd;

bool order_free_product(Index m, Index depth, Index n) {
  return depth == 1 || (m > 1 && n > 1 && m + n + depth >= 20);
}

namespace {

// Grams of tall (or wide) factors, summed over blocks of 256 rows (or
// columns): full products of short blocks take about half the time of
// Eigen's symmetric rank update of the whole factor. The lower triangle is
// mirrored, so the result is exactly symmetric. A block whose product
// Eigen would not do by its general matrix product (order_free_product) is
// copied out first, so that gram(X) and gram_rows(X^T) are the same bits
// (Eigen's small and matrix-vector products sum in an order that depends
// on the operands' layout and alignment).
constexpr Index kGramBlock = 256;

template <typename Matrix>
Matrix gram(const Matrix& x) {  // X^T X
  Matrix g = Matrix::Zero(x.cols(), x.cols());
  for (Index r = 0; r < x.rows(); r += kGramBlock) {
    const auto b = x.middleRows(r, std::min(kGramBlock, x.rows() - r));
    if (order_free_product(b.cols(), b.rows(), b.cols())) {
      g.noalias() += b.transpose() * b;
    } else {
      const Matrix c = b;
      g.noalias() += c.transpose() * c;
    }
  }
  return g.template selfadjointView<Eigen::Lower>();
}

template <typename Matrix>
Matrix gram_rows(const Matrix& y) {  // Y Y^T, as gram(Y^T)
  Matrix g = Matrix::Zero(y.rows(), y.rows());
  for (Index c = 0; c < y.cols(); c += kGramBlock) {
    const auto b = y.middleCols(c, std::min(kGramBlock, y.cols() - c));
    if (order_free_product(b.rows(), b.cols(), b.rows())) {
      g.noalias() += b * b.transpose();
    } else {
      const Matrix t = b.transpose();
      g.noalias() += t.transpose() * t;
    }
  }
  return g.template selfadjointView<Eigen::Lower>();
}

// Orthonormal basis Q of the columns of V (n x k, n >= k) with q_j . v_j >= 0
// (deterministic). By Cholesky QR twice, Q = V R1^-1 R2^-1: two Grams and
// two triangular solves, several times faster than Householder on tall
// thin V and as accurate while cond(V) is well below 1/sqrt(eps): we ask
// the first Gram's estimated reciprocal condition, 1/cond(V)^2, to be above
// 1e-4 in single precision (the first pass then leaves at most ~1e-3 of
// loss of orthogonality, which the second removes) and 1e-12 in double.
// A single-precision V (the range finders' iterates) is done in single
// precision if it can, else in double; otherwise (V near rank deficient)
// by Householder QR.
template <typename Matrix>
Matrix orthonormal_like(const Matrix& v) {
  const Index k = v.cols();
  if constexpr (std::is_same_v<typename Matrix::Scalar, float>) {
    Eigen::MatrixXf q = v;
    bool ok = k > 0;
    for (int pass = 0; pass < 2 && ok; ++pass) {
      Eigen::LLT<Eigen::MatrixXf> llt(gram(q));
      ok = llt.info() == Eigen::Success && (pass == 1 || llt.rcond() > 1e-4);
      if (ok) llt.matrixU().template solveInPlace<Eigen::OnTheRight>(q);
    }
    if (ok) return q;
  }
  MatrixXd q = v.template cast<double>();
  bool ok = k > 0;
  for (int pass = 0; pass < 2 && ok; ++pass) {
    Eigen::LLT<MatrixXd> llt(gram(q));
    ok = llt.info() == Eigen::Success && (pass == 1 || llt.rcond() > 1e-12);
    if (ok) llt.matrixU().template solveInPlace<Eigen::OnTheRight>(q);
  }
  if (ok) return q.template cast<typename Matrix::Scalar>();
  Eigen::HouseholderQR<Matrix> qr(v);
  Matrix h = qr.householderQ() * Matrix::Identity(v.rows(), k);
  for (Index j = 0; j < k; ++j) {
    if (h.col(j).dot(v.col(j)) < 0) h.col(j) = -h.col(j);
  }
  return h;
}

// A range finder's start: the orthonormalised Gaussian n x l matrix of
// the counter-based stream keyed (seed, p, n, k). Every module of a given
// shape starts from the same one, so the last few are kept (by key; each
// is a pure function of its key, so keeping them changes no bit).
std::shared_ptr<const MatrixXd> random_start(uint64_t seed, Index p, Index n, Index k, Index l) {
  using Key = std::array<uint64_t, 5>;
  static std::mutex mu;
  static std::vector<std::pair<Key, std::shared_ptr<const MatrixXd>>> kept;  // most recent last
  const Key key{seed, static_cast<uint64_t>(p), static_cast<uint64_t>(n), static_cast<uint64_t>(k),
                static_cast<uint64_t>(l)};
  {
    std::lock_guard<std::mutex> lock(mu);
    for (auto& [k2, z] : kept) {
      if (k2 == key) return z;
    }
  }
  util::Stream rng(seed, key[1], key[2], key[3]);
  auto z = std::make_shared<const MatrixXd>(orthonormal_like(rng.normal(n, l, 1.0)));
  std::lock_guard<std::mutex> lock(mu);
  constexpr size_t kKept = 8;
  if (kept.size() == kKept) kept.erase(kept.begin());
  kept.emplace_back(key, z);
  return z;
}

// The range finders' stopping rule on successive changes d (latest) and
// d_prev of the energy they track: d itself negligible (below `floor`), or
// the geometric tail d rho / (1 - rho), rho = d / d_prev < 1, below `tol`.
bool converged(double d, double d_prev, double floor, double tol) {
  if (d <= floor) return true;
  if (!std::isfinite(d_prev) || d >= d_prev) return false;
  const double rho = std::max(0.0, d / d_prev);
  return d * rho / (1 - rho) <= tol;
}

// An iteration's gains in what it tracks (a residual falling, a captured
// energy rising), for converged(). The first two iterations set no rate:
// the first gain is from the random start, and a rate taken from it once
// stopped the range finder 1% short of the optimum on a flat spectrum.
class Gains {
 public:
  /// converged() after iteration `it` (from 1) with this gain.
  bool stop(int it, double gain, double floor, double tol) {
    const bool done = converged(gain, prev_, floor, tol);
    prev_ = it <= 2 ? INFINITY : gain;
    return done;
  }
  /// Iterations converged() still needs if the gains keep falling at the
  /// rate of this one to the last (infinity without a rate). Before stop().
  double remaining(double gain, double tol) const {
    if (!std::isfinite(prev_) || !(gain > 0) || !(gain < prev_)) return INFINITY;
    const double rho = gain / prev_;
    return std::max(1.0, std::ceil(std::log(tol * (1 - rho) / (gain * rho)) / std::log(rho)));
  }
  /// No rate until two more gains (the iteration starts over).
  void reset() { prev_ = INFINITY; }

 private:
  double prev_ = INFINITY;
};

// Products with a stack T in fixed blocks of 128 rows (T z) or columns
// (T^T y), spread by util::parallel_for. The blocks do not depend on the
// thread count, so neither do the sums.
constexpr Index kBlock = 128;

Index blocks(Index n) { return (n + kBlock - 1) / kBlock; }

template <typename M>
M times(const M& t, const M& z) {  // T z
  M y(t.rows(), z.cols());
  util::parallel_for(static_cast<size_t>(blocks(t.rows())), [&](size_t b) {
    const Index r0 = static_cast<Index>(b) * kBlock, rn = std::min(kBlock, t.rows() - r0);
    y.middleRows(r0, rn).noalias() = t.middleRows(r0, rn) * z;
  });
  return y;
}

template <typename M>
M transposed_times(const M& t, const M& y) {  // T^T y
  M z(t.cols(), y.cols());
  util::parallel_for(static_cast<size_t>(blocks(t.cols())), [&](size_t b) {
    const Index c0 = static_cast<Index>(b) * kBlock, cn = std::min(kBlock, t.cols() - c0);
    z.middleRows(c0, cn).noalias() = t.middleCols(c0, cn).transpose() * y;
  });
  return z;
}

// Columns the range finders iterate with for k wanted: k oversampled.
Index oversampled(Index k) { return k + std::max<Index>(10, k / 2); }

// Whether a range finder solves a P x n problem exactly for k columns:
// small problems, where the exact solver is as cheap as a few iterations.
bool solved_exactly(Index p, Index n, Index k) {
  return k <= 0 || std::min(p, n) <= std::max<Index>(128, 2 * oversampled(k));
}

// Whether this build has LAPACK's ssyevr (float_top_eigen_subspace).
#ifdef EIGEN_USE_LAPACKE
constexpr bool kHaveSsyevr = true;
#else
constexpr bool kHaveSsyevr = false;
#endif

// The top k eigenpairs of a symmetric G (overwritten) by LAPACK's ssyevr
// (MRRR after one tridiagonal reduction, the n^3 part), to single
// precision; none in a build without LAPACKE, or if it fails.
std::optional<Subspace> float_top_eigen_subspace(Eigen::MatrixXf a, Index k) {
#ifdef EIGEN_USE_LAPACKE
  const Index n = a.rows();
  Eigen::MatrixXf z(n, k);
  Eigen::VectorXf w(n);
  std::vector<lapack_int> support(2 * static_cast<size_t>(k));
  lapack_int found = 0;
  const lapack_int info = LAPACKE_ssyevr(LAPACK_COL_MAJOR, 'V', 'I', 'L', static_cast<lapack_int>(n), a.data(),
                                         static_cast<lapack_int>(n), 0.0f, 0.0f, static_cast<lapack_int>(n - k + 1),
                                         static_cast<lapack_int>(n), 0.0f, &found, w.data(), z.data(),
                                         static_cast<lapack_int>(n), support.data());
  if (info != 0 || found != k) return std::nullopt;
  Subspace s;  // ascending from LAPACK: reversed
  s.basis = z.rowwise().reverse().cast<double>();
  s.values = w.head(k).reverse().cast<double>().cwiseMax(0).cwiseSqrt();
  s.exact = false;
  return s;
#else
  (void)a;
  (void)k;
  return std::nullopt;
#endif
}

// The range finder's other way, for a slowly converging (flat) spectrum:
// the top k eigenpairs of T's smaller Gram, formed and solved in single
// precision (ssyevr; V = T^T Y / sigma for a wide T), re-orthonormalised in
// double. Rounding of the Gram (~1e-7 ||T||^2) is the same share of the
// residual as the single-precision iterations'. Its cost in multiply-adds,
// with the eigenpairs' at kEigenCost m^3: on llama-1b's 1280 x 2048 stacks
// at k = 128 (one thread, AMD EPYC) it took 0.19 s, four iterations' time.
constexpr double kEigenCost = 0.5;

double gram_route_cost(Index p, Index n, Index k) {
  const double m = static_cast<double>(std::min(p, n)), big = static_cast<double>(std::max(p, n));
  return m * m * big + kEigenCost * m * m * m + (n > p ? m * big * static_cast<double>(k) : 0.0);
}

// None if the residual it finds is below `least` (single precision then
// too coarse: the iterations go on, in double).
std::optional<Subspace> gram_route(const Eigen::MatrixXf& tf, Index k, int iterations, double total, double least) {
  const Index p = tf.rows(), n = tf.cols();
  std::optional<Subspace> s = float_top_eigen_subspace(n <= p ? gram(tf) : gram_rows(tf), k);
  if (!s || total - s->values.squaredNorm() < least) return std::nullopt;
  if (n > p) {
    const Eigen::VectorXd inv = s->values.unaryExpr([](double v) { return v > 0 ? 1 / v : 0.0; });
    s->basis = transposed_times(tf, Eigen::MatrixXf(s->basis.cast<float>())).cast<double>() * inv.asDiagonal();
  }
  s->basis = orthonormal_like(s->basis);
  s->iterations = iterations;
  return s;
}

}  // namespace

double product_norm2(const MatrixXd& x, const MatrixXd& y) {
  if (x.cols() == 0) return 0;
  return norm2_from_grams(gram(x), gram_rows(y));
}

MatrixXd column_gram(const MatrixXd& x) { return gram(x); }
MatrixXd row_gram(const MatrixXd& y) { return gram_rows(y); }

double norm2_from_grams(const MatrixXd& gx, const MatrixXd& gy) { return std::max(0.0, gx.cwiseProduct(gy).sum()); }

double product_norm2_transposed(const MatrixXd& xt, const MatrixXd& yt) {
  if (xt.rows() == 0) return 0;
  return norm2_from_grams(gram_rows(xt), gram(yt));
}

MatrixXd left_core(const MatrixXd& l) {
  const Index p = l.cols();
  if (l.rows() < p) return l;  // L itself is already small
  // Cholesky of the Gram is a few times cheaper than a Householder QR of a
  // tall L, and backward stable: S^T S = L^T L up to rounding of the Gram,
  // which is all callers rely on. If the Gram is numerically singular the
  // factorisation can fail; QR then gives the triangular factor.
  Eigen::LLT<MatrixXd> llt(gram(l));
  if (llt.info() == Eigen::Success) return llt.matrixU();
  Eigen::HouseholderQR<MatrixXd> qr(l);
  return qr.matrixQR().topRows(p).triangularView<Eigen::Upper>();
}

MatrixXd left_core_transposed(const MatrixXd& lt) {
  const Index p = lt.rows();
  if (lt.cols() < p) return lt.transpose();
  Eigen::LLT<MatrixXd> llt(gram_rows(lt));
  if (llt.info() == Eigen::Success) return llt.matrixU();
  Eigen::HouseholderQR<MatrixXd> qr(lt.transpose());
  return qr.matrixQR().topRows(p).triangularView<Eigen::Upper>();
}

Subspace top_right_subspace_exact(const MatrixXd& t, Index k) {
  const Index p = t.rows(), n = t.cols();
  k = std::min({k, p, n});
  Subspace s;
  if (k <= 0) {
    s.basis = MatrixXd(n, 0);
    return s;
  }
  if (n <= p) {
    Eigen::SelfAdjointEigenSolver<MatrixXd> eig(gram(t));
    s.basis = eig.eigenvectors().rightCols(k).rowwise().reverse();
    s.values = eig.eigenvalues().tail(k).reverse().cwiseMax(0).cwiseSqrt();
    return s;
  }
  // Wide T: eigenvectors Y of T T^T give V = T^T Y / sigma.
  Eigen::SelfAdjointEigenSolver<MatrixXd> eig(gram_rows(t));
  MatrixXd y = eig.eigenvectors().rightCols(k).rowwise().reverse();
  s.values = eig.eigenvalues().tail(k).reverse().cwiseMax(0).cwiseSqrt();
  s.basis = orthonormal_like(MatrixXd(t.transpose() * y));  // columns with tiny sigma are unreliable
  return s;
}

namespace {

// Every eigenpair of a symmetric A (overwritten by the vectors), ascending.
void symmetric_eigen(MatrixXd* a, Eigen::VectorXd* w) {
  const Index n = a->rows();
  w->resize(n);
#ifdef EIGEN_USE_LAPACKE
  if (n > 0 && LAPACKE_dsyevd(LAPACK_COL_MAJOR, 'V', 'L', static_cast<lapack_int>(n), a->data(),
                              static_cast<lapack_int>(n), w->data()) == 0) {
    return;
  }
#endif
  Eigen::SelfAdjointEigenSolver<MatrixXd> eig(*a);
  *w = eig.eigenvalues();
  *a = eig.eigenvectors();
}

}  // namespace

Subspace left_singular_pairs(const MatrixXd& g) {
  const Index k = g.cols();
  MatrixXd v = gram(g);
  Eigen::VectorXd lambda;
  symmetric_eigen(&v, &lambda);
  Subspace s;
  s.values = lambda.reverse().cwiseMax(0).cwiseSqrt();
  const Eigen::VectorXd inv = s.values.unaryExpr([](double x) { return x > 0 ? 1 / x : 0.0; });
  s.basis = k > 0 ? orthonormal_like(MatrixXd(g * v.rowwise().reverse() * inv.asDiagonal())) : MatrixXd(g.rows(), 0);
  return s;
}

Subspace sketched_left_singular_pairs(const Eigen::MatrixXf& g, Index k) {
  const Index n = g.rows(), m = g.cols();
  k = std::min({k, n, m});
  const Index l = std::min({k + 32, n, m});
  Subspace s;
  s.exact = false;
  if (k <= 0) {
    s.basis = MatrixXd(n, 0);
    return s;
  }
  const Eigen::MatrixXf omega = random_start(0x5eed, n, m, k, l)->cast<float>();
  const Eigen::MatrixXf q = orthonormal_like(Eigen::MatrixXf(g * omega));
  MatrixXd b = gram_rows(MatrixXd((q.transpose() * g).cast<double>()));  // (Q^T G)(Q^T G)^T, l x l
  Eigen::VectorXd lambda;
  symmetric_eigen(&b, &lambda);
  s.values = lambda.tail(k).reverse().cwiseMax(0).cwiseSqrt();
  s.basis = (q * b.rightCols(k).rowwise().reverse().cast<float>()).cast<double>();
  return s;
}

Subspace top_right_subspace(const MatrixXd& t, Index k) {
  const Index p = t.rows(), n = t.cols();
  if (solved_exactly(p, n, std::min({k, p, n}))) return top_right_subspace_exact(t, k);
  return top_right_subspace(t.cast<float>(), [&]() -> const MatrixXd& { return t; }, k);
}

namespace {

// top_right_subspace of tf, with T in double from dense() when needed.
Subspace range_finder(const Eigen::MatrixXf& tf, const std::function<const MatrixXd&()>& dense, Index k) {
  const Index p = tf.rows(), n = tf.cols();
  k = std::min({k, p, n});
  if (solved_exactly(p, n, k)) return top_right_subspace_exact(dense(), k);
  const Index l = oversampled(k);
  // The Gram route's cost in iterations. An iteration's multiply-adds: two
  // products with T, and the Grams of its n x l orthonormalisation (in
  // double: counted twice).
  const double per_iteration = 2.0 * static_cast<double>(p * n * l) + 4.0 * static_cast<double>(n * l * l);
  const double route = kHaveSsyevr ? gram_route_cost(p, n, k) / per_iteration : INFINITY;
  constexpr double kFewIterations = 4;

  constexpr int kMaxIters = 40;
  constexpr double kTol = 1e-4, kFloor = 1e-13;
  // Single precision suffices while the residual is at least this share of
  // ||T||^2: rounding (~1e-7 of ||T||^2) is then at most ~1e-4 of the
  // residual, the stopping tolerance. (At 1e-2, strongly shared adapters,
  // whose residual is ~0.1-1%, spent most of the hydra point in double.)
  constexpr double kSingleFloor = 1e-3;
  Eigen::MatrixXf zf = random_start(0x5ca1ab1e, p, n, k, l)->cast<float>(), yf;
  MatrixXd z;                   // the iterate, once the double phase starts
  const MatrixXd* t = nullptr;  // T in double, once the double phase starts
  double total = 0;             // ||T||^2: of tf (columns in single precision, summed in double), then of T
  for (Index j = 0; j < n; ++j) total += static_cast<double>(tf.col(j).squaredNorm());
  bool single = true, gram_tried = false;
  double prev_tail = INFINITY;
  Gains gains;
  for (int it = 1; it <= kMaxIters; ++it) {
    MatrixXd y;  // T z, P x l
    if (single) {
      yf = times(tf, zf);
      y = yf.cast<double>();
    } else {
      y = times(*t, z);
    }
    // Rayleigh-Ritz in span(z): eigenpairs of z^T T^T T z.
    Eigen::SelfAdjointEigenSolver<MatrixXd> eig(y.transpose() * y);
    const Eigen::VectorXd top = eig.eigenvalues().tail(k).reverse().cwiseMax(0);
    const double tail = std::max(0.0, total - top.sum());
    if (single && tail < kSingleFloor * total) {
      // Nearly exact: redo this step, and go on, in double precision.
      single = false;
      t = &dense();
      total = t->squaredNorm();
      z = zf.cast<double>();
      prev_tail = INFINITY;
      gains.reset();
      --it;
      continue;
    }
    const double drop = prev_tail - tail;
    const double left = gains.remaining(drop, kTol * tail);
    if (gains.stop(it, drop, kFloor * total, kTol * tail)) {
      const MatrixXd ritz = eig.eigenvectors().rightCols(k).rowwise().reverse();
      MatrixXd basis = single ? orthonormal_like(MatrixXd(zf.cast<double>() * ritz)) : MatrixXd(z * ritz);
      return {std::move(basis), top.cwiseSqrt(), it, false};
    }
    // The Gram route instead of the iterations still to go, when it costs
    // less than they would: at the second iteration (the first after a
    // power step) if it costs at most kFewIterations, about what a run
    // that does not stop at its first chance (the fourth) still takes;
    // later, if less than the gains' rate predicts. Tried once, in the
    // single-precision phase only; it gives way to the iterations if its
    // residual is below that phase's floor.
    if (single && !gram_tried && ((it == 2 && route <= kFewIterations) || (std::isfinite(left) && left > route))) {
      gram_tried = true;
      if (std::optional<Subspace> s = gram_route(tf, k, it, total, kSingleFloor * total)) return std::move(*s);
    }
    prev_tail = tail;
    if (single) {  // next iterate: T^T T z
      zf = orthonormal_like(transposed_times(tf, yf));
    } else {
      z = orthonormal_like(transposed_times(*t, y));
    }
  }
  return top_right_subspace_exact(dense(), k);
}

}  // namespace

Subspace top_right_subspace(const Eigen::MatrixXf& tf, const std::function<const MatrixXd&()>& dense, Index k) {
  return range_finder(tf, dense, k);
}

Subspace top_eigen_subspace(const MatrixXd& g, Index k) {
  const Index n = g.rows();
  k = std::min(k, n);
  Subspace s;
  if (k <= 0) {
    s.basis = MatrixXd(n, 0);
    return s;
  }
  Eigen::SelfAdjointEigenSolver<MatrixXd> eig(g);
  s.basis = eig.eigenvectors().rightCols(k).rowwise().reverse();
  s.values = eig.eigenvalues().tail(k).reverse().cwiseMax(0).cwiseSqrt();
  return s;
}

Subspace estimate_top_eigen_subspace(const MatrixXd& g, Index k) {
  const Index n = g.rows();
  k = std::min(k, n);
  if (k <= 0) return top_eigen_subspace(g, k);
  // The spectrum at once, to single precision (the exact solver without LAPACKE).
  if (std::optional<Subspace> s = float_top_eigen_subspace(g.cast<float>(), k)) return std::move(*s);
  return top_eigen_subspace(g, k);
}

Eigen::VectorXd estimate_product_values(const MatrixXd& gl, const MatrixXd& gr, Index k) {
  const Index p = gl.rows();
  k = std::min(k, p);
  if (k <= 0) return Eigen::VectorXd();
  // sigma^2 are the eigenvalues of H = G_L G_R, self-adjoint in the inner
  // product <x, y> = x^T G_R y (x: coefficients of R^T x): subspace
  // iteration on H with G_R-orthonormal iterates X, Ritz values those of
  // X^T G_R H X = (G_R X)^T G_L (G_R X).
  const Index l = std::min(p, oversampled(k));
  constexpr int kMaxIters = 40;
  const Eigen::MatrixXf lf = gl.cast<float>(), rf = gr.cast<float>();
  const double total = gl.cwiseProduct(gr).sum();  // ||L R||^2
  Eigen::MatrixXf x = random_start(0x5ca1ab1f, p, p, k, l)->cast<float>();
  Eigen::MatrixXf y = times(rf, x);  // G_R X
  double prev_tail = INFINITY;
  Gains gains;
  bool was_converged = false;
  for (int it = 1;; ++it) {
    // X G_R-orthonormal: X^T G_R X = C = U^T U, X <- X U^-1 (G_R X too).
    MatrixXd c = x.cast<double>().transpose() * y.cast<double>();
    Eigen::SelfAdjointEigenSolver<MatrixXd> ce((c + c.transpose()) / 2);
    const Eigen::VectorXd cv = ce.eigenvalues();
    const double floor = 1e-10 * std::max(cv.maxCoeff(), 1e-300);
    Eigen::VectorXd inv = cv.unaryExpr([floor](double v) { return v > floor ? 1 / std::sqrt(v) : 0.0; });
    const Eigen::MatrixXf w = (ce.eigenvectors() * inv.asDiagonal()).cast<float>();
    x = x * w;
    y = y * w;
    const Eigen::MatrixXf z = times(lf, y);  // G_L G_R X
    Eigen::SelfAdjointEigenSolver<MatrixXd> eig(y.cast<double>().transpose() * z.cast<double>(),
                                               Eigen::EigenvaluesOnly);
    const Eigen::VectorXd top = eig.eigenvalues().tail(k).reverse().cwiseMax(0);
    const double tail = std::max(0.0, total - top.sum());
    const double drop = prev_tail - tail;
    const bool now = gains.stop(it, drop, 1e-7 * total, 1e-3 * tail);
    if ((now && was_converged) || it == kMaxIters) return top.cwiseSqrt();
    was_converged = now;
    prev_tail = tail;
    x = z;
    y = times(rf, x);
  }
}

Subspace top_right_subspace_of_product(const MatrixXd& l, const MatrixXd& r, Index k) {
  const Index p = l.cols(), n = r.cols();
  k = std::min({k, l.rows(), p, n});
  const Index w = oversampled(k);
  auto exact = [&] {
    MatrixXd u, vt;
    factored_svd(l, r, k, &u, &vt);
    Subspace s;
    s.basis = vt.transpose();
    s.values = u.colwise().norm().transpose();
    return s;
  };
  if (solved_exactly(p, n, k)) return exact();

  constexpr int kMaxIters = 40;
  constexpr double kTol = 1e-4;
  const Eigen::MatrixXf lf = l.cast<float>(), rf = r.cast<float>();
  Eigen::MatrixXf zf = random_start(0x5ca1ab1f, p, n, k, w)->cast<float>(), yf;
  double prev = 0;
  Gains gains;
  for (int it = 1; it <= kMaxIters; ++it) {
    yf.noalias() = lf * (rf * zf);  // L R z
    const MatrixXd y = yf.cast<double>();
    Eigen::SelfAdjointEigenSolver<MatrixXd> eig(y.transpose() * y);
    const Eigen::VectorXd top = eig.eigenvalues().tail(k).reverse().cwiseMax(0);
    const double captured = top.sum(), gain = captured - prev;
    if (gains.stop(it, gain, 1e-13 * captured, kTol * captured)) {
      const MatrixXd ritz = eig.eigenvectors().rightCols(k).rowwise().reverse();
      return {orthonormal_like(MatrixXd(zf.cast<double>() * ritz)), top.cwiseSqrt(), it, false};
    }
    prev = captured;
    zf = orthonormal_like(Eigen::MatrixXf(rf.transpose() * (lf.transpose() * yf)));
  }
  return exact();
}

void factored_svd(const MatrixXd& l, const MatrixXd& r, Index k, MatrixXd* u, MatrixXd* vt) {
  const Index m = l.rows(), p = l.cols(), n = r.cols();
  k = std::min({k, m, n, p});
  if (k <= 0) {
    *u = MatrixXd::Zero(m, 0);
    *vt = MatrixXd::Zero(0, n);
    return;
  }
  // L = Ql Sl, R^T = Qr Sr  =>  L R = Ql (Sl Sr^T) Qr^T, an SVD of a p x p core.
  Eigen::HouseholderQR<MatrixXd> ql(l), qr(r.transpose());
  const Index pl = std::min(m, p), pr = std::min(n, p);
  MatrixXd sl = ql.matrixQR().topRows(pl).triangularView<Eigen::Upper>();
  MatrixXd sr = qr.matrixQR().topRows(pr).triangularView<Eigen::Upper>();
  Eigen::JacobiSVD<MatrixXd> svd(sl * sr.transpose(), Eigen::ComputeThinU | Eigen::ComputeThinV);
  k = std::min(k, static_cast<Index>(svd.singularValues().size()));
  MatrixXd qlm = ql.householderQ() * MatrixXd::Identity(m, pl);
  MatrixXd qrm = qr.householderQ() * MatrixXd::Identity(n, pr);
  *u = qlm * (svd.matrixU().leftCols(k) * svd.singularValues().head(k).asDiagonal());
  *vt = (qrm * svd.matrixV().leftCols(k)).transpose();
}

namespace {

constexpr Index kKrylovExtra = 8;   // a block's columns beyond k
constexpr Index kKrylovFrom = 640;  // rows; below, the dense solve costs no more than a few blocks

// The k largest eigenvalues' sum by Rayleigh-Ritz on a block Krylov space
// of G in single precision: K = [Q_0, Q_1, ...], Q_0 a fixed-seed start of
// b = k + kKrylovExtra columns, each next block G Q_j orthonormalised against all of
// K (twice), until the Ritz sum gains less than 1e-6 of itself. Nullopt
// when K would pass half of G's width first (a dense solve is then as
// cheap). A Ritz sum never exceeds the true one.
std::optional<double> krylov_top_eigen_sum(const MatrixXd& g, Index k) {
  const Index n = g.rows(), b = k + kKrylovExtra;
  const Eigen::MatrixXf gf = g.cast<float>();
  Eigen::MatrixXf basis = random_start(0x70e16e, n, n, k, b)->cast<float>();
  Eigen::MatrixXf gk = gf * basis;  // G K
  double prev = 0;
  for (;;) {
    const Eigen::MatrixXf h = basis.transpose() * gk;
    const MatrixXd hs = ((h + h.transpose()) / 2).cast<double>();
    Eigen::SelfAdjointEigenSolver<MatrixXd> eig(hs, Eigen::EigenvaluesOnly);
    const double sum = eig.eigenvalues().tail(k).cwiseMax(0).sum();
    if (sum - prev <= 1e-6 * sum) return sum;
    prev = sum;
    const Index c = basis.cols();
    if (2 * (c + b) > n) return std::nullopt;
    Eigen::MatrixXf next = gk.rightCols(b);
    for (int pass = 0; pass < 2; ++pass) next -= basis * (basis.transpose() * next);
    basis.conservativeResize(Eigen::NoChange, c + b);
    basis.rightCols(b) = orthonormal_like(next);
    gk.conservativeResize(Eigen::NoChange, c + b);
    gk.rightCols(b).noalias() = gf * basis.rightCols(b);
  }
}

}  // namespace

double top_eigen_sum(const MatrixXd& g, Index k) {
  const Index n = g.rows();
  k = std::min(k, n);
  if (k <= 0) return 0;
  if (n >= kKrylovFrom && 4 * (k + kKrylovExtra) <= n) {
    if (const auto sum = krylov_top_eigen_sum(g, k)) return *sum;
  }
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXf> eig(g.cast<float>(), Eigen::EigenvaluesOnly);
  return eig.eigenvalues().tail(k).cast<double>().cwiseMax(0).sum();
}

MatrixXd psd_pinv(const MatrixXd& g) {
  if (g.size() == 0) return g;
  Eigen::SelfAdjointEigenSolver<MatrixXd> eig(g);
  const auto& ev = eig.eigenvalues();
  const double cut = 1e-12 * std::max(ev.cwiseAbs().maxCoeff(), 1e-300);
  Eigen::VectorXd inv = ev.unaryExpr([cut](double x) { return x > cut ? 1.0 / x : 0.0; });
  return eig.eigenvectors() * inv.asDiagonal() * eig.eigenvectors().transpose();
}

}  // namespace hydraopt::linalg
