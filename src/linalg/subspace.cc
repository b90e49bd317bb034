#include "linalg/subspace.h"

#include <Eigen/QR>
#include <Eigen/SVD>
#include <algorithm>
#include <limits>

namespace hydraopt::linalg {

Eigen::MatrixXd column_basis(const Eigen::MatrixXd& m) {
  const Eigen::Index n = m.rows(), r = std::min(m.rows(), m.cols());
  if (r == 0) return Eigen::MatrixXd(n, 0);
  // QR first so the SVD is only r x r.
  Eigen::HouseholderQR<Eigen::MatrixXd> qr(m);
  Eigen::MatrixXd q = qr.householderQ() * Eigen::MatrixXd::Identity(n, r);
  Eigen::MatrixXd rr = qr.matrixQR().topRows(r).triangularView<Eigen::Upper>();
  Eigen::JacobiSVD<Eigen::MatrixXd> svd(rr, Eigen::ComputeFullU);
  const auto& s = svd.singularValues();
  Eigen::Index k = 0;
  while (k < s.size() && s[k] > 1e-10 * s[0] && s[k] > 0) ++k;
  return q * svd.matrixU().leftCols(k);
}

double subspace_similarity(const Eigen::MatrixXd& qa, const Eigen::MatrixXd& qb) {
  const Eigen::Index k = std::min(qa.cols(), qb.cols());
  if (k == 0) return std::numeric_limits<double>::quiet_NaN();
  return (qa.transpose() * qb).squaredNorm() / static_cast<double>(k);
}

double mean_pairwise_similarity(const std::vector<Eigen::MatrixXd>& bases) {
  // One GEMM over the stacked bases instead of N^2 small ones.
  std::vector<Eigen::Index> start;
  Eigen::Index total = 0, n = 0;
  for (auto& b : bases) {
    start.push_back(total);
    total += b.cols();
    if (b.cols() > 0) n = b.rows();
  }
  if (total == 0) return std::numeric_limits<double>::quiet_NaN();
  Eigen::MatrixXd stack(n, total);
  for (size_t i = 0; i < bases.size(); ++i) {
    if (bases[i].cols() > 0) stack.middleCols(start[i], bases[i].cols()) = bases[i];
  }
  Eigen::MatrixXd g(total, total);
  g.setZero();
  g.selfadjointView<Eigen::Lower>().rankUpdate(stack.transpose());
  double sum = 0;
  int pairs = 0;
  for (size_t i = 0; i < bases.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      const Eigen::Index ki = bases[i].cols(), kj = bases[j].cols();
      if (ki == 0 || kj == 0) continue;
      sum += g.block(start[i], start[j], ki, kj).squaredNorm() / static_cast<double>(std::min(ki, kj));
      ++pairs;
    }
  }
  return pairs ? sum / pairs : std::numeric_limits<double>::quiet_NaN();
}

}  // namespace hydraopt::linalg
