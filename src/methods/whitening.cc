#include "methods/whitening.h"

#include <Eigen/Eigenvalues>
#include <Eigen/QR>
#include <cmath>
#include <string>

#include "core/rounding.h"
#include "hydraopt/error.h"

namespace hydraopt {

Whitening::Whitening(const Eigen::MatrixXd& c) {
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

Eigen::MatrixXd shrink(const Eigen::MatrixXd& c, double alpha) {
  const double scale = c.rows() > 0 ? c.trace() / static_cast<double>(c.rows()) : 0.0;
  Eigen::MatrixXd out = (1.0 - alpha) * c;
  out.diagonal().array() += alpha * scale;
  return out;
}

ModuleProblem whitened(ModuleProblem p, const Whitening& w) {
  for (auto& l : p.loras) {
    if (l.A.cols() != w.in()) throw std::logic_error("whitened: A's width is not the statistics' width");
    l.A = w.whiten(l.A);
  }
  return p;
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
void solve_own_metric(const ModuleProblem& p, const std::vector<Eigen::MatrixXd>& c, DType dtype, ModuleFit* f) {
  std::vector<int> head_users(f->heads.size(), 0), core_users(f->cores.size(), 0);
  for (size_t i = 0; i < f->tasks(); ++i) {
    ++head_users[f->head_of[i]];
    if (f->core_of[i] >= 0) ++core_users[f->core_of[i]];
  }
  for (size_t i = 0; i < f->tasks(); ++i) {
    const auto& l = p.loras[i];
    if (c[i].size() == 0 || l.rank() == 0 || f->diagonal_cores) continue;
    const bool own_head = f->core_of[i] < 0 && head_users[f->head_of[i]] == 1;
    const bool own_core = f->core_of[i] >= 0 && core_users[f->core_of[i]] == 1;
    if (!own_head && !own_core) continue;
    const Eigen::MatrixXd& r = f->bodies[f->body_of[i]];
    const Eigen::MatrixXd rc = r * c[i];  // k x in
    const Eigen::MatrixXd target = (l.scale * l.B) * (l.A * rc.transpose()) *
                                   Eigen::MatrixXd(rc * r.transpose()).completeOrthogonalDecomposition().pseudoInverse();
    if (own_head) {
      f->heads[f->head_of[i]] = round_to_dtype(target, dtype);
      f->scale[i] = 1.0;
    } else {
      const Eigen::MatrixXd h = f->scale[i] * f->heads[f->head_of[i]];
      f->cores[f->core_of[i]] = round_to_dtype(Eigen::MatrixXd(h.completeOrthogonalDecomposition().pseudoInverse() * target), dtype);
    }
  }
}

}  // namespace hydraopt
