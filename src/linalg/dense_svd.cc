#include "linalg/dense_svd.h"

#include <Eigen/QR>
#include <Eigen/SVD>
#include <algorithm>

#include "util/random.h"

namespace hydraopt::linalg {

using Eigen::Index;
using Eigen::MatrixXd;

namespace {

MatrixXd orthonormal_columns(const MatrixXd& y) {
  Eigen::HouseholderQR<MatrixXd> qr(y);
  return qr.householderQ() * MatrixXd::Identity(y.rows(), std::min(y.rows(), y.cols()));
}

}  // namespace

void dense_truncated_svd(const MatrixXd& m, Index k, uint64_t seed, MatrixXd* u, MatrixXd* vt,
                         Index exact_limit) {
  const Index small = std::min(m.rows(), m.cols());
  k = std::clamp<Index>(k, 0, small);
  if (k == 0) {
    *u = MatrixXd::Zero(m.rows(), 0);
    *vt = MatrixXd::Zero(0, m.cols());
    return;
  }
  constexpr Index kOversample = 10;
  constexpr int kPowerIters = 4;
  if (small <= exact_limit || k + kOversample >= small) {
    Eigen::BDCSVD<MatrixXd> svd(m, Eigen::ComputeThinU | Eigen::ComputeThinV);
    *u = svd.matrixU().leftCols(k) * svd.singularValues().head(k).asDiagonal();
    *vt = svd.matrixV().leftCols(k).transpose();
    return;
  }
  // A QR after every product so that small singular values are not swamped.
  util::SplitMix64 rng(util::splitmix_finalize(seed));
  const MatrixXd start =
      rng.normal<util::BoxMullerLog::kLogOfComplement>(m.cols(), k + kOversample, 1.0);
  MatrixXd q = orthonormal_columns(m * start);
  for (int it = 0; it < kPowerIters; ++it) {
    const MatrixXd z = orthonormal_columns(m.transpose() * q);
    q = orthonormal_columns(m * z);
  }
  const MatrixXd b = q.transpose() * m;  // (k + 10) x cols
  Eigen::BDCSVD<MatrixXd> svd(b, Eigen::ComputeThinU | Eigen::ComputeThinV);
  *u = q * (svd.matrixU().leftCols(k) * svd.singularValues().head(k).asDiagonal());
  *vt = svd.matrixV().leftCols(k).transpose();
}

}  // namespace hydraopt::linalg
