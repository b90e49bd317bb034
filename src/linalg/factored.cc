#include "linalg/factored.h"

#include <Eigen/Eigenvalues>
#include <Eigen/QR>
#include <Eigen/SVD>
#include <algorithm>

namespace hydraopt::linalg {

using Eigen::Index;
using Eigen::MatrixXd;

namespace {

MatrixXd gram(const MatrixXd& x) {  // X^T X
  MatrixXd g = MatrixXd::Zero(x.cols(), x.cols());
  g.selfadjointView<Eigen::Lower>().rankUpdate(x.transpose());
  return g.selfadjointView<Eigen::Lower>();
}

MatrixXd gram_rows(const MatrixXd& y) {  // Y Y^T
  MatrixXd g = MatrixXd::Zero(y.rows(), y.rows());
  g.selfadjointView<Eigen::Lower>().rankUpdate(y);
  return g.selfadjointView<Eigen::Lower>();
}

}  // namespace

double product_norm2(const MatrixXd& x, const MatrixXd& y) {
  if (x.cols() == 0) return 0;
  return std::max(0.0, (gram(x).cwiseProduct(gram_rows(y))).sum());
}

double product_inner(const MatrixXd& x1, const MatrixXd& y1, const MatrixXd& x2, const MatrixXd& y2) {
  if (x1.cols() == 0 || x2.cols() == 0) return 0;
  // trace((X1^T X2)(Y2 Y1^T)) = sum((X1^T X2) .* (Y1 Y2^T))
  return ((x1.transpose() * x2).cwiseProduct(y1 * y2.transpose())).sum();
}

MatrixXd left_core(const MatrixXd& l) {
  const Index p = l.cols();
  if (l.rows() >= p) {
    Eigen::HouseholderQR<MatrixXd> qr(l);
    return qr.matrixQR().topRows(p).triangularView<Eigen::Upper>();
  }
  // Fewer rows than columns: L itself is already small.
  return l;
}

Subspace top_right_subspace(const MatrixXd& t, Index k) {
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
  MatrixXd v = t.transpose() * y;
  // Re-orthonormalise: columns with tiny singular values are unreliable.
  Eigen::HouseholderQR<MatrixXd> qr(v);
  MatrixXd q = qr.householderQ() * MatrixXd::Identity(n, k);
  // Keep the QR's sign choice aligned with v so the basis is deterministic.
  for (Index j = 0; j < k; ++j) {
    if (q.col(j).dot(v.col(j)) < 0) q.col(j) = -q.col(j);
  }
  s.basis = q;
  return s;
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

MatrixXd psd_pinv(const MatrixXd& g) {
  if (g.size() == 0) return g;
  Eigen::SelfAdjointEigenSolver<MatrixXd> eig(g);
  const auto& ev = eig.eigenvalues();
  const double cut = 1e-12 * std::max(ev.cwiseAbs().maxCoeff(), 1e-300);
  Eigen::VectorXd inv = ev.unaryExpr([cut](double x) { return x > cut ? 1.0 / x : 0.0; });
  return eig.eigenvectors() * inv.asDiagonal() * eig.eigenvectors().transpose();
}

}  // namespace hydraopt::linalg
