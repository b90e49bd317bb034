#include "methods/whitening.h"

#include <Eigen/Cholesky>
#include <Eigen/Eigenvalues>
#include <cmath>
#include <string>

#include "core/rounding.h"
#include "linalg/factored.h"
#include "hydraopt/error.h"

namespace hydraopt {

Eigen::MatrixXd Moment::between(const Eigen::MatrixXd& x, const Eigen::MatrixXd& y) const {
  Eigen::MatrixXd out = x * d.asDiagonal() * y.transpose();
  if (g.cols() > 0) out += (x * g) * (y * g).transpose();
  return out;
}

Eigen::MatrixXd Moment::times(const Eigen::MatrixXd& x) const {
  Eigen::MatrixXd out = x * d.asDiagonal();
  if (g.cols() > 0) out += (x * g) * g.transpose();
  return out;
}

Eigen::MatrixXd Moment::dense() const {
  Eigen::MatrixXd c = g * g.transpose();
  c.diagonal() += d;
  return c;
}

Moment shrink(Moment c, double alpha) {
  const double scale = c.in() > 0 ? c.trace() / static_cast<double>(c.in()) : 0.0;
  c.d = (1.0 - alpha) * c.d + Eigen::VectorXd::Constant(c.in(), alpha * scale);
  c.g *= std::sqrt(1.0 - alpha);
  return c;
}

Eigen::MatrixXd shrink(const Eigen::MatrixXd& c, double alpha) {
  const double scale = c.rows() > 0 ? c.trace() / static_cast<double>(c.rows()) : 0.0;
  Eigen::MatrixXd out = (1.0 - alpha) * c;
  out.diagonal().array() += alpha * scale;
  return out;
}

// G G^T's top eigenpairs as G's left singular pairs: exactly from the
// in x in Gram (in <= kExactWidth), else estimated by a one-pass
// randomized range finder in single precision
// (linalg::sketched_left_singular_pairs): not the tightest top
// eigenspace, but what is cut goes to the diagonal.
Moment compressed(Moment c, Eigen::Index max_rank) {
  if (c.g.cols() <= max_rank) return c;
  const Eigen::VectorXd before = c.g.rowwise().squaredNorm();
  if (c.in() <= std::max(max_rank, kExactWidth)) {
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(c.g * c.g.transpose());
    const Eigen::Index k = std::min(max_rank, c.in());
    c.g = eig.eigenvectors().rightCols(k) * eig.eigenvalues().tail(k).cwiseMax(0.0).cwiseSqrt().asDiagonal();
  } else {
    const linalg::Subspace s = linalg::sketched_left_singular_pairs(c.g.cast<float>(), max_rank);
    c.g = s.basis * s.values.asDiagonal();
  }
  c.d += (before - c.g.rowwise().squaredNorm()).cwiseMax(0.0);
  return c;
}

Whitening::Whitening(const Eigen::MatrixXd& c) : in_(c.rows()) {
  if (c.rows() != c.cols()) throw std::logic_error("Whitening: C must be square");
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(0.5 * (c + c.transpose()));
  const Eigen::VectorXd& mu = eig.eigenvalues();
  if (mu.size() > 0 && !(mu.minCoeff() > 0)) {
    throw Error("calibration: an input second moment is not positive definite (least eigenvalue " +
                std::to_string(mu.minCoeff()) + "); give a shrinkage above 0");
  }
  const Eigen::MatrixXd& u = eig.eigenvectors();
  root_ = u * mu.cwiseSqrt().asDiagonal() * u.transpose();
  inv_root_ = u * mu.cwiseSqrt().cwiseInverse().asDiagonal() * u.transpose();
}

namespace {

// The factored form needs D well above 0 (W = D^{-1/2} G); below this
// fraction of the mean eigenvalue the dense form is used.
constexpr double kLeastDiagonal = 1e-8;
constexpr Eigen::Index kDenseLimit = 4096;

Whitening dense_whitening(const Moment& c) {
  if (c.in() > kDenseLimit) {
    throw Error("calibration: an input second moment of width " + std::to_string(c.in()) +
                " has a diagonal at or near 0, which only the dense whitening (width <= " +
                std::to_string(kDenseLimit) + ") takes; give a shrinkage above 0");
  }
  return Whitening(c.dense());
}

}  // namespace

Whitening::Whitening(const Moment& c) : in_(c.in()) {
  const double mean = in_ > 0 ? c.trace() / static_cast<double>(in_) : 0.0;
  if (in_ > 0 && !(c.d.minCoeff() > kLeastDiagonal * mean)) {
    *this = dense_whitening(c);
    return;
  }
  sqrt_d_ = c.d.cwiseSqrt();
  if (c.g.cols() == 0) return;
  const Eigen::MatrixXd w = sqrt_d_.cwiseInverse().asDiagonal() * c.g;
  // W = P diag(lambda)^{1/2} Q^T: its left singular pairs, from its k x k
  // Gram (k columns of G).
  const linalg::Subspace s = linalg::left_singular_pairs(w);
  p_ = s.basis;
  pf_ = p_.cast<float>();
  const Eigen::ArrayXd one_plus = 1.0 + s.values.array().square();
  up_ = one_plus.sqrt() - 1.0;
  down_ = one_plus.rsqrt() - 1.0;
}

// The low-rank correction x P diag(s) P^T: in single precision when it
// is large (many rows: a module's stacked A's), where its rounding, ~1e-7
// of x's norm, is far below any stored dtype's.
Eigen::MatrixXd Whitening::correction(const Eigen::MatrixXd& x, const Eigen::VectorXd& s) const {
  if (!single(x.rows())) return ((x * p_) * s.asDiagonal()) * p_.transpose();
  return correction(Eigen::MatrixXf(x.cast<float>()), s).cast<double>();
}

Eigen::MatrixXf Whitening::correction(const Eigen::MatrixXf& xf, const Eigen::VectorXd& s) const {
  const Eigen::MatrixXf y = (xf * pf_) * s.cast<float>().asDiagonal();
  return y * pf_.transpose();
}

Eigen::MatrixXd Whitening::whiten(const Eigen::MatrixXd& r) const {
  if (root_.size() > 0) return r * root_;
  Eigen::MatrixXd x = r * sqrt_d_.asDiagonal();
  if (p_.cols() > 0) x += correction(x, up_);
  return x;
}

Eigen::MatrixXd Whitening::unwhiten(const Eigen::MatrixXd& r) const {
  if (root_.size() > 0) return r * inv_root_;
  Eigen::MatrixXd x = r;
  if (p_.cols() > 0) x += correction(r, down_);
  return x * sqrt_d_.cwiseInverse().asDiagonal();
}

// F = M^{1/2} D^{1/2} (M^{1/2} symmetric), so F^{-1} = D^{-1/2} M^{-1/2};
// the dense root is symmetric.
Eigen::MatrixXd Whitening::solve_whitened(const Eigen::MatrixXd& r) const {
  if (root_.size() > 0) return r * inv_root_;
  Eigen::MatrixXd x = r * sqrt_d_.cwiseInverse().asDiagonal();
  if (p_.cols() > 0) x += correction(x, down_);
  return x;
}

size_t Whitening::size() const {
  return static_cast<size_t>(root_.size() + inv_root_.size() + sqrt_d_.size() + p_.size() + pf_.size() / 2 +
                             up_.size() + down_.size());
}

namespace {

Eigen::MatrixXd stacked(const std::vector<const Eigen::MatrixXd*>& rows, Eigen::Index in) {
  Eigen::Index n = 0;
  for (const auto* r : rows) n += r->rows();
  Eigen::MatrixXd s(n, in);
  n = 0;
  for (const auto* r : rows) {
    if (r->cols() != in) throw std::logic_error("whitened: A's width is not the statistics' width");
    s.middleRows(n, r->rows()) = *r;
    n += r->rows();
  }
  return s;
}

// Each r_i D^{1/2} (double), and all of them stacked in single precision.
Eigen::MatrixXf scaled_each(const std::vector<const Eigen::MatrixXd*>& rows, const Eigen::VectorXd& sqrt_d,
                            std::vector<Eigen::MatrixXd>* x) {
  Eigen::Index n = 0;
  for (const auto* r : rows) {
    if (r->cols() != sqrt_d.size()) throw std::logic_error("whitened: A's width is not the statistics' width");
    n += r->rows();
  }
  Eigen::MatrixXf xf(n, sqrt_d.size());
  n = 0;
  for (const auto* r : rows) {
    x->push_back(*r * sqrt_d.asDiagonal());
    xf.middleRows(n, r->rows()) = x->back().cast<float>();
    n += r->rows();
  }
  return xf;
}

}  // namespace

std::vector<Eigen::MatrixXd> Whitening::whiten_each(const std::vector<const Eigen::MatrixXd*>& rows) const {
  std::vector<Eigen::MatrixXd> out;
  Eigen::Index n = 0;
  for (const auto* r : rows) n += r->rows();
  if (root_.size() > 0 || p_.cols() == 0 || !single(n)) {
    const Eigen::MatrixXd all = whiten(stacked(rows, in_));
    n = 0;
    for (const auto* r : rows) {
      out.push_back(all.middleRows(n, r->rows()));
      n += r->rows();
    }
    return out;
  }
  // As whiten(): X = R D^{1/2}, plus its correction in single precision.
  const Eigen::MatrixXf c = correction(scaled_each(rows, sqrt_d_, &out), up_);
  n = 0;
  for (auto& x : out) {
    x += c.middleRows(n, x.rows()).cast<double>();
    n += x.rows();
  }
  return out;
}

std::vector<Eigen::MatrixXd> Whitening::grams(const std::vector<const Eigen::MatrixXd*>& rows) const {
  std::vector<Eigen::MatrixXd> out;
  // Dense: (r C^{1/2})(r C^{1/2})^T. Factored: with X = r D^{1/2} and
  // Y = X P, r C r^T = X M X^T = X X^T + Y diag((1 + up)^2 - 1) Y^T.
  if (root_.size() > 0) {
    for (const auto* r : rows) {
      const Eigen::MatrixXd x = *r * root_;
      out.push_back(x * x.transpose());
    }
    return out;
  }
  Eigen::Index n = 0;
  for (const auto* r : rows) n += r->rows();
  std::vector<Eigen::MatrixXd> x;
  Eigen::MatrixXd y;
  if (p_.cols() > 0 && single(n)) {
    y = (scaled_each(rows, sqrt_d_, &x) * pf_).cast<double>();
  } else {
    for (const auto* r : rows) x.push_back(*r * sqrt_d_.asDiagonal());
    if (p_.cols() > 0) {
      std::vector<const Eigen::MatrixXd*> scaled;
      for (const Eigen::MatrixXd& xi : x) scaled.push_back(&xi);
      y = stacked(scaled, in_) * p_;
    }
  }
  const Eigen::VectorXd lambda = (1.0 + up_.array()).square() - 1.0;
  Eigen::Index at = 0;
  for (const Eigen::MatrixXd& xi : x) {
    const Eigen::Index k = xi.rows();
    Eigen::MatrixXd g = xi * xi.transpose();
    if (y.size() > 0) g += y.middleRows(at, k) * lambda.asDiagonal() * y.middleRows(at, k).transpose();
    out.push_back(std::move(g));
    at += k;
  }
  return out;
}

namespace {

// p with each A_i replaced by its rows of `all` (the A's stacked, mapped).
ModuleProblem with_stacked_a(ModuleProblem p, const Eigen::MatrixXd& all) {
  Eigen::Index at = 0;
  for (auto& l : p.loras) {
    const Eigen::Index k = l.A.rows();
    l.A = all.middleRows(at, k);
    at += k;
  }
  return p;
}

// C_i: the task's moment, or `identity` for a task without statistics.
const Moment& own_or(const std::vector<Moment>& c, size_t i, const Moment& identity) {
  return i < c.size() && !c[i].empty() ? c[i] : identity;
}

Moment identity_moment(Eigen::Index in) { return Moment{Eigen::VectorXd::Ones(in), Eigen::MatrixXd(in, 0)}; }

}  // namespace

ModuleProblem whitened(ModuleProblem p, const Whitening& w) {
  std::vector<const Eigen::MatrixXd*> rows;
  for (const auto& l : p.loras) rows.push_back(&l.A);
  std::vector<Eigen::MatrixXd> each = w.whiten_each(rows);
  for (size_t i = 0; i < each.size(); ++i) p.loras[i].A = std::move(each[i]);
  return p;
}

ModuleProblem regressed(ModuleProblem p, const ModuleMetric& metric) {
  const Whitening& w = *metric.mean;
  if (!metric.own || metric.own->empty()) return whitened(std::move(p), w);  // A_i C F^{-1} = A_i F^T
  const Moment identity = identity_moment(p.in());
  std::vector<Eigen::MatrixXd> ac(p.tasks());
  std::vector<const Eigen::MatrixXd*> rows;
  for (size_t i = 0; i < p.tasks(); ++i) {
    ac[i] = own_or(*metric.own, i, identity).times(p.loras[i].A);
    rows.push_back(&ac[i]);
  }
  const Eigen::MatrixXd all = w.solve_whitened(stacked(rows, w.in()));  // all tasks in one product
  return with_stacked_a(std::move(p), all);
}

std::vector<double> whitened_norms2(const ModuleProblem& p, const Whitening& w) {
  std::vector<const Eigen::MatrixXd*> rows;
  for (const auto& l : p.loras) rows.push_back(&l.A);
  const std::vector<Eigen::MatrixXd> g = w.grams(rows);
  std::vector<double> n(p.tasks());
  for (size_t i = 0; i < p.tasks(); ++i) {
    const auto& l = p.loras[i];
    n[i] = std::max(0.0, l.scale * l.scale * (l.B.transpose() * l.B).cwiseProduct(g[i]).sum());
  }
  return n;
}

ModuleFit whitened(ModuleFit f, const Whitening& w) {
  for (auto& r : f.bodies) r = w.whiten(r);
  return f;
}

ModuleFit unwhitened(ModuleFit f, const Whitening& w) {
  for (auto& r : f.bodies) r = w.unwhiten(r);
  return f;
}

// With E = dW - s H K R, min over the task's own H (or K) of tr(E C E^T):
// the normal equations give s H K = (dW C R^T)(R C R^T)^+, so H = that / s
// with K = I (the scale goes into the head: s = 1), or K = (s H)^+ that.
void solve_own_metric(const ModuleProblem& p, const std::vector<Moment>& c, DType dtype, ModuleFit* f,
                      const Moment* missing) {
  std::vector<int> head_users(f->heads.size(), 0), core_users(f->cores.size(), 0);
  for (size_t i = 0; i < f->tasks(); ++i) {
    ++head_users[f->head_of[i]];
    if (f->core_of[i] >= 0) ++core_users[f->core_of[i]];
  }
  for (size_t i = 0; i < f->tasks(); ++i) {
    const auto& l = p.loras[i];
    const Moment* ci = i < c.size() && !c[i].empty() ? &c[i] : missing;
    if (!ci || l.rank() == 0 || f->diagonal_cores) continue;
    const bool own_head = f->core_of[i] < 0 && head_users[f->head_of[i]] == 1;
    const bool own_core = f->core_of[i] >= 0 && core_users[f->core_of[i]] == 1;
    if (!own_head && !own_core) continue;
    // A C R^T and R C R^T with one pass over C's low-rank factor.
    const Eigen::MatrixXd& r = f->bodies[f->body_of[i]];
    const Eigen::Index ka = l.A.rows();
    Eigen::MatrixXd x(ka + r.rows(), l.A.cols());
    x << l.A, r;
    const Eigen::MatrixXd xg = x * ci->g;
    const Eigen::MatrixXd rd = r * ci->d.asDiagonal();
    Eigen::MatrixXd ar = l.A * rd.transpose(), rr = r * rd.transpose();
    if (xg.cols() > 0) {
      ar.noalias() += xg.topRows(ka) * xg.bottomRows(r.rows()).transpose();
      rr.noalias() += xg.bottomRows(r.rows()) * xg.bottomRows(r.rows()).transpose();
    }
    const Eigen::MatrixXd target = (l.scale * l.B) * ar * rr.completeOrthogonalDecomposition().pseudoInverse();
    if (own_head) {
      f->heads[f->head_of[i]] = round_to_dtype(target, dtype);
      f->scale[i] = 1.0;
    } else {
      const Eigen::MatrixXd h = f->scale[i] * f->heads[f->head_of[i]];
      f->cores[f->core_of[i]] = round_to_dtype(Eigen::MatrixXd(h.completeOrthogonalDecomposition().pseudoInverse() * target), dtype);
    }
  }
}

namespace {

// One body's part of the objective as a quadratic in R (k x in):
//   f(R) = <R, Op(R)> - 2 <E, R> + const,  Op(R) = sum_j K_j R C_j,
// K_j = w_j L_j^T L_j, E = sum_j w_j L_j^T dW_j C_j, over the body's tasks
// j, with C_j = diag(d_j) + G_j G_j^T. Op in two products with the G_j
// side by side (in single precision when large, as Whitening's), and the
// diagonal parts as sum_j d_j[c] K_j per input c, formed once.
class BodyQuadratic {
 public:
  BodyQuadratic(std::vector<Eigen::MatrixXd> k, const std::vector<const Moment*>& c, Eigen::MatrixXd e)
      : k_(std::move(k)), e_(std::move(e)) {
    const Eigen::Index rank = e_.rows(), in = e_.cols();
    Eigen::MatrixXd flat(rank * rank, static_cast<Eigen::Index>(k_.size())), d(k_.size(), in);
    Eigen::Index columns = 0;
    for (size_t j = 0; j < k_.size(); ++j) {
      flat.col(static_cast<Eigen::Index>(j)) = Eigen::Map<const Eigen::VectorXd>(k_[j].data(), rank * rank);
      d.row(static_cast<Eigen::Index>(j)) = c[j]->d.transpose();
      at_.push_back(columns);
      columns += c[j]->g.cols();
    }
    at_.push_back(columns);
    kd_ = flat * d;
    g_.resize(in, columns);
    for (size_t j = 0; j < k_.size(); ++j) g_.middleCols(at_[j], at_[j + 1] - at_[j]) = c[j]->g;
    if (rank * columns >= Whitening::kSingleFrom) gf_ = g_.cast<float>();
  }

  const Eigen::MatrixXd& e() const { return e_; }
  Eigen::MatrixXd kbar() const {
    Eigen::MatrixXd sum = Eigen::MatrixXd::Zero(e_.rows(), e_.rows());
    for (const auto& kj : k_) sum += kj;
    return sum;
  }

  Eigen::MatrixXd apply(const Eigen::MatrixXd& r) const {
    const Eigen::Index rank = r.rows();
    Eigen::MatrixXd out(rank, r.cols());
    for (Eigen::Index c = 0; c < r.cols(); ++c) {
      out.col(c).noalias() = Eigen::Map<const Eigen::MatrixXd>(kd_.col(c).data(), rank, rank) * r.col(c);
    }
    if (g_.cols() == 0) return out;
    const bool single = gf_.size() > 0;
    Eigen::MatrixXd rg = single ? Eigen::MatrixXd((r.cast<float>() * gf_).cast<double>()) : Eigen::MatrixXd(r * g_);
    for (size_t j = 0; j < k_.size(); ++j) {
      const Eigen::Index w = at_[j + 1] - at_[j];
      if (w > 0) rg.middleCols(at_[j], w) = k_[j] * rg.middleCols(at_[j], w);
    }
    if (single) {
      out += (rg.cast<float>() * gf_.transpose()).cast<double>();
    } else {
      out.noalias() += rg * g_.transpose();
    }
    return out;
  }
  double value(const Eigen::MatrixXd& r) const { return r.cwiseProduct(apply(r) - 2.0 * e_).sum(); }

 private:
  std::vector<Eigen::MatrixXd> k_;
  Eigen::MatrixXd e_;
  Eigen::MatrixXd kd_;  // (k * k) x in: column c is sum_j d_j[c] K_j
  Eigen::MatrixXd g_;   // in x sum_j k_j
  Eigen::MatrixXf gf_;  // g_ in single precision, when large
  std::vector<Eigen::Index> at_;
};

// Minimises the body's quadratic from r by conjugate gradients
// preconditioned with Z -> Kbar^{-1} Z C^{-1} (C the tasks' mean moment,
// Kbar = sum_i K_i), which solves it outright when every C_i is C. Every
// iterate lowers f (CG minimises it over growing Krylov spaces around the
// start); the result, rounded to the stored dtype, is kept only if f went
// down in floating point too (f(R) = -<R, E + residual>). It stops at a residual of 1e-4 of E or
// after 5 iterations: starting from the mean metric's body, the residual
// is a few 1e-3 of E on the llama-1b preset's synthetic statistics and
// falls about tenfold in 4 (the objective's remaining gap goes with its
// square).
void body_step(const BodyQuadratic& q, const Whitening& mean, DType dtype, Eigen::MatrixXd* r) {
  constexpr int kIterations = 5;
  Eigen::MatrixXd kbar = q.kbar();
  kbar.diagonal().array() += 1e-12 * std::max(kbar.trace(), 1e-300);
  const Eigen::LDLT<Eigen::MatrixXd> kinv(kbar);
  auto precondition = [&](const Eigen::MatrixXd& z) { return mean.unwhiten(mean.solve_whitened(kinv.solve(z))); };
  Eigen::MatrixXd x = *r;
  Eigen::MatrixXd res = q.e() - q.apply(x);
  const double start = -x.cwiseProduct(q.e() + res).sum();
  Eigen::MatrixXd z = precondition(res), dir = z;
  double rz = res.cwiseProduct(z).sum();
  const double stop = 1e-8 * q.e().squaredNorm();
  bool moved = false;
  for (int it = 0; it < kIterations && res.squaredNorm() > stop && rz > 0; ++it) {
    const Eigen::MatrixXd ad = q.apply(dir);
    const double curvature = dir.cwiseProduct(ad).sum();
    if (!(curvature > 0)) break;
    const double alpha = rz / curvature;
    x += alpha * dir;
    res -= alpha * ad;
    moved = true;
    z = precondition(res);
    const double next = res.cwiseProduct(z).sum();
    dir = z + (next / rz) * dir;
    rz = next;
  }
  if (!moved) return;
  x = round_to_dtype(x, dtype);  // as stored
  if (q.value(x) < start) *r = std::move(x);
}

}  // namespace

double own_metric_objective(const ModuleProblem& p, const std::vector<Moment>& c, const ModuleFit& f) {
  const Moment identity = identity_moment(p.in());
  double total = 0;
  for (size_t i = 0; i < p.tasks(); ++i) {
    const auto& l = p.loras[i];
    const Moment& ci = own_or(c, i, identity);
    // ||E C^{1/2}||^2 with E = [s B, -L] [A; R]: the Gram of the stacked rows.
    Eigen::MatrixXd left(p.out(), l.rank() + f.right(i).rows());
    left << l.scale * l.B, -f.left(i);
    Eigen::MatrixXd rows(left.cols(), p.in());
    rows << l.A, f.right(i);
    total += p.weights[i] * (left.transpose() * left).cwiseProduct(ci.between(rows, rows)).sum();
  }
  return total;
}

void solve_own_metrics(const ModuleProblem& p, const ModuleMetric& metric, int rounds, DType dtype, ModuleFit* f) {
  if (!metric.own || metric.own->empty()) return;
  const std::vector<Moment>& c = *metric.own;
  solve_own_metric(p, c, dtype, f);
  if (rounds == 0 || f->diagonal_cores) return;
  const Moment identity = identity_moment(p.in());
  for (int round = 0; round < rounds; ++round) {
    for (size_t b = 0; b < f->bodies.size(); ++b) {
      std::vector<Eigen::MatrixXd> k;
      std::vector<const Moment*> cs;
      Eigen::MatrixXd e = Eigen::MatrixXd::Zero(f->bodies[b].rows(), p.in());
      for (size_t i = 0; i < p.tasks(); ++i) {
        const auto& l = p.loras[i];
        // (a task of rank 0 still pays for its fitted part: no term in E)
        if (f->body_of[i] != static_cast<int>(b) || p.weights[i] <= 0) continue;
        const Moment& ci = own_or(c, i, identity);
        const Eigen::MatrixXd li = f->left(i);
        k.push_back(p.weights[i] * li.transpose() * li);
        cs.push_back(&ci);
        if (l.rank() > 0) e.noalias() += (p.weights[i] * li.transpose() * (l.scale * l.B)) * ci.times(l.A);
      }
      if (k.empty()) continue;
      const BodyQuadratic q(std::move(k), cs, std::move(e));
      body_step(q, *metric.mean, dtype, &f->bodies[b]);
    }
    solve_own_metric(p, c, dtype, f, &identity);  // a task without statistics: its head in the identity metric too
  }
}

}  // namespace hydraopt
