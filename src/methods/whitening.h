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

#include <vector>

#include "core/fit.h"
#include "hydraopt/dtype.h"

namespace hydraopt {

/// C^{1/2} and C^{-1/2} of a symmetric positive definite C (in x in).
class Whitening {
 public:
  /// C as given; its eigenvalues must be positive (regularise first).
  explicit Whitening(const Eigen::MatrixXd& c);

  int64_t in() const { return root_.rows(); }
  /// r C^{1/2} for the rows of r (k x in).
  Eigen::MatrixXd whiten(const Eigen::MatrixXd& r) const { return r * root_; }
  /// r C^{-1/2}
  Eigen::MatrixXd unwhiten(const Eigen::MatrixXd& r) const { return r * inv_root_; }

 private:
  Eigen::MatrixXd root_, inv_root_;  // symmetric
};

/// (1 - alpha) C + alpha (tr C / in) I: shrinkage towards the scaled
/// identity, which keeps every input direction in the metric.
Eigen::MatrixXd shrink(const Eigen::MatrixXd& c, double alpha);

/// The problem with every A_i whitened (A_i C^{1/2}).
ModuleProblem whitened(ModuleProblem p, const Whitening& w);
/// The fit with every body whitened (R C^{1/2}): its errors on the
/// whitened problem are the calibrated errors.
ModuleFit whitened(ModuleFit f, const Whitening& w);
/// The fit of a whitened problem with its bodies mapped back (R C^{-1/2}):
/// what is stored.
ModuleFit unwhitened(ModuleFit f, const Whitening& w);

/// One exact block step towards each task's own metric: for every task i
/// with a second moment c[i] (in x in; empty: none) whose head, or core,
/// is its own, that head (or core) is re-solved given the stored body to
/// minimise ||(dW_i - dW_hat_i) c_i^{1/2}||^2, and rounded to `dtype`
/// (so never raising that error beyond the rounding). `p`: the problem as
/// read (not whitened); `f`: a stored fit of it.
void solve_own_metric(const ModuleProblem& p, const std::vector<Eigen::MatrixXd>& c, DType dtype, ModuleFit* f);

}  // namespace hydraopt
