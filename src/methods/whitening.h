// Calibrated fits (issue 19; docs/methods.md, "Calibration"): a module's
// error measured on the inputs it sees. With C the second moment of those
// inputs (E[x x^T]), the output error of dW - dW_hat over them is
//     ||(dW - dW_hat) C^{1/2}||_F^2,
// the Frobenius error of the whitened update (dW - dW_hat) C^{1/2}. With
// one C for every task of a module, every structure's fit in that metric is
// its data-free fit of the whitened problem (each A_i -> A_i C^{1/2}), its
// bodies (the input-side factors, R in dW_hat = s H C_i R) mapped back by
// C^{-1/2}: the heads and cores act on the output side and do not change.
#pragma once

#include <Eigen/Core>

#include <memory>
#include <vector>

#include "core/fit.h"
#include "hydraopt/dtype.h"

namespace hydraopt {

/// A second moment C = diag(d) + G G^T (in x in), kept factored: wide
/// modules never form an in x in matrix (llama-7b's down_proj: 11008^2
/// doubles would be 1 GB).
struct Moment {
  Eigen::VectorXd d;  ///< in, >= 0
  Eigen::MatrixXd g;  ///< in x k

  Eigen::Index in() const { return d.size(); }
  bool empty() const { return d.size() == 0; }
  double trace() const { return d.sum() + g.squaredNorm(); }
  /// X C Y^T for X (a x in), Y (b x in).
  Eigen::MatrixXd between(const Eigen::MatrixXd& x, const Eigen::MatrixXd& y) const;
  /// X C for X (a x in).
  Eigen::MatrixXd times(const Eigen::MatrixXd& x) const;
  /// C as an in x in matrix (tests, and small in only).
  Eigen::MatrixXd dense() const;
};

/// (1 - alpha) C + alpha (tr C / in) I: shrinkage towards the scaled
/// identity, which keeps every input direction in the metric.
Moment shrink(Moment c, double alpha);
Eigen::MatrixXd shrink(const Eigen::MatrixXd& c, double alpha);

/// Widths up to which compressed() is exact.
inline constexpr Eigen::Index kExactWidth = 1024;

/// C with G G^T cut to its top `max_rank` eigenpairs, what is cut moved to
/// the diagonal (so the diagonal and the trace stay exact): exact when G
/// has at most max_rank columns or in <= max(max_rank, kExactWidth) (G G^T's
/// eigenpairs); wider, a randomized approximation of the top part
/// (whitening.cc), with every cut still kept on the diagonal.
Moment compressed(Moment c, Eigen::Index max_rank);

/// A whitening of a symmetric positive definite C: a factor F (in x in)
/// with F^T F = C, so that ||E C^{1/2}||_F = ||E F^T||_F for every E: the
/// calibrated error of E is the Frobenius error of E F^T. Two forms:
/// - factored, C = D + G G^T with D = diag(d) > 0: with W = D^{-1/2} G =
///   P diag(lambda)^{1/2} (P orthonormal, in x k), I + W W^T = M and
///   F^T = D^{1/2} M^{1/2}, M^{1/2} = I + P diag(sqrt(1 + lambda) - 1) P^T,
///   so whitening a k' x in matrix costs O(k' in k), never in x in;
/// - dense (C given as a matrix, or a factored C whose diagonal is not
///   well above 0, and in <= 4096): the symmetric root C^{1/2}.
/// With C = I both are the identity.
class Whitening {
 public:
  /// C as given; its eigenvalues must be positive (regularise first).
  explicit Whitening(const Eigen::MatrixXd& c);
  explicit Whitening(const Moment& c);

  int64_t in() const { return in_; }
  /// r F^T for the rows of r (k x in).
  Eigen::MatrixXd whiten(const Eigen::MatrixXd& r) const;
  /// r F^{-T}
  Eigen::MatrixXd unwhiten(const Eigen::MatrixXd& r) const;
  /// r F^{-1} = r C^{-1} F^T: the rows of r through C^{-1}, whitened.
  Eigen::MatrixXd solve_whitened(const Eigen::MatrixXd& r) const;
  /// r_i F^T for each r_i (k_i x in): whiten() of them stacked, without
  /// the stacked copies (the low-rank products in one pass).
  std::vector<Eigen::MatrixXd> whiten_each(const std::vector<const Eigen::MatrixXd*>& rows) const;
  /// r_i C r_i^T for each r_i (k_i x in), in one pass over C's factors.
  std::vector<Eigen::MatrixXd> grams(const std::vector<const Eigen::MatrixXd*>& rows) const;
  /// Doubles held (memory).
  size_t size() const;

  /// Rows x rank from which the low-rank products run in single precision.
  static constexpr Eigen::Index kSingleFrom = 64 * 256;

 private:
  /// Whether x P for `rows` rows runs in single precision.
  bool single(Eigen::Index rows) const { return rows * p_.cols() >= kSingleFrom; }
  Eigen::MatrixXd correction(const Eigen::MatrixXd& x, const Eigen::VectorXd& s) const;
  /// Its single-precision form, for a single-precision x.
  Eigen::MatrixXf correction(const Eigen::MatrixXf& xf, const Eigen::VectorXd& s) const;

  int64_t in_ = 0;
  Eigen::MatrixXd root_, inv_root_;  // dense form: symmetric
  Eigen::VectorXd sqrt_d_;           // factored form
  Eigen::MatrixXd p_;
  Eigen::MatrixXf pf_;  // p_ in single precision
  Eigen::VectorXd up_, down_;  // sqrt(1 + lambda) - 1, 1 / sqrt(1 + lambda) - 1
};

/// A module's calibrated metric: the tasks' mean second moment C (its
/// whitening) and each task's own moment C_i (`own` empty: every C_i is
/// C; an empty C_i: the identity, a task without statistics).
struct ModuleMetric {
  std::shared_ptr<const Whitening> mean;
  std::shared_ptr<const std::vector<Moment>> own;
};

/// RegMean's problem (Jin et al., 2023, arXiv:2212.09849): every A_i
/// replaced by A_i C_i F^{-1}. The merge minimising
/// sum_i ||(dW_i - M) C_i^{1/2}||^2 is M* = (sum_i dW_i C_i)(sum_i C_i)^{-1};
/// with sum_i C_i = N C (exact where the mean is not cut, compressed()),
/// M* F^T = (1/N) sum_i s_i B_i (A_i C_i F^{-1}): task arithmetic of this
/// problem, whose rank-k truncation, unwhitened, is the best rank-k M in
/// that objective (it equals ||(M - M*) F^T||^2 up to a constant).
ModuleProblem regressed(ModuleProblem p, const ModuleMetric& metric);

/// The problem with every A_i whitened (A_i F^T; all tasks in one product).
ModuleProblem whitened(ModuleProblem p, const Whitening& w);
/// ||dW_i F^T||^2 = s_i^2 tr(B_i^T B_i A_i C A_i^T) per task: the whitened
/// problem's update_norms2 without whitening it.
std::vector<double> whitened_norms2(const ModuleProblem& p, const Whitening& w);
/// The fit with every body whitened (R C^{1/2}): its errors on the
/// whitened problem are the calibrated errors.
ModuleFit whitened(ModuleFit f, const Whitening& w);
/// The fit of a whitened problem with its bodies mapped back (R C^{-1/2}):
/// what is stored.
ModuleFit unwhitened(ModuleFit f, const Whitening& w);

/// One exact block step towards each task's own metric: for every task i
/// with a second moment c[i] (empty, or beyond c's end: none) whose head, or core,
/// is its own, that head (or core) is re-solved given the stored body to
/// minimise ||(dW_i - dW_hat_i) c_i^{1/2}||^2, and rounded to `dtype`
/// (so never raising that error beyond the rounding). `p`: the problem as
/// read (not whitened); `f`: a stored fit of it.
/// `missing`: the metric of a task without a moment (nullptr: its head is kept).
void solve_own_metric(const ModuleProblem& p, const std::vector<Moment>& c, DType dtype, ModuleFit* f,
                      const Moment* missing = nullptr);

/// Alternating block steps of the per-task objective
///     sum_i w_i ||(dW_i - L_i R_b(i)) C_i^{1/2}||^2
/// (L_i = s_i H_i K_i each task's left factor, R_b a body, C_i the task's
/// own moment in metric.own, the identity where it has none; w_i =
/// p.weights): solve_own_metric (exact), then `rounds` times every body
/// given the left factors (at most 5 preconditioned conjugate-gradient
/// iterations from the current body, the result rounded to `dtype` and
/// kept only if the objective went down) and solve_own_metric again. Only
/// the heads' rounding can raise the objective. Nothing to do when
/// metric.own is empty (every task's metric is the mean one, in which the
/// fit was made), and no rounds for diagonal cores (jd-diag).
void solve_own_metrics(const ModuleProblem& p, const ModuleMetric& metric, int rounds, DType dtype, ModuleFit* f);

/// The per-task objective above of a fit (tests).
double own_metric_objective(const ModuleProblem& p, const std::vector<Moment>& c, const ModuleFit& f);

}  // namespace hydraopt
