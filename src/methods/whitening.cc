#include "methods/whitening.h"

#include <Eigen/Eigenvalues>
#include <cmath>
#include <string>

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

}  // namespace hydraopt
