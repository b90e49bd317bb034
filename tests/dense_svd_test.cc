// linalg's dense truncated SVD: the randomized path against the exact one.
#include <gtest/gtest.h>

#include <Eigen/SVD>
#include <cmath>

#include "linalg/dense_svd.h"
#include "test_util.h"

namespace hydraopt {
namespace {

using Eigen::Index;
using Eigen::MatrixXd;

MatrixXd truncate(const MatrixXd& m, Index k) {
  Eigen::JacobiSVD<MatrixXd> svd(m, Eigen::ComputeThinU | Eigen::ComputeThinV);
  k = std::min<Index>(k, svd.singularValues().size());
  return svd.matrixU().leftCols(k) * svd.singularValues().head(k).asDiagonal() *
         svd.matrixV().leftCols(k).transpose();
}

double rel_err(const MatrixXd& got, const MatrixXd& want) {
  return (got - want).norm() / std::max(want.norm(), 1e-300);
}

TEST(DenseSvd, RandomizedMatchesExact) {
  // Low rank: the range finder's 13 samples capture it exactly.
  const MatrixXd low = test::random_matrix(60, 5, 1) * test::random_matrix(5, 50, 2);
  // Decaying spectrum: sigma_j = 2^-j.
  Eigen::JacobiSVD<MatrixXd> q1(test::random_matrix(60, 50, 3), Eigen::ComputeThinU);
  Eigen::JacobiSVD<MatrixXd> q2(test::random_matrix(50, 50, 4), Eigen::ComputeThinU);
  Eigen::VectorXd s(50);
  for (Index j = 0; j < 50; ++j) s(j) = std::pow(2.0, -double(j));
  const MatrixXd decay = q1.matrixU() * s.asDiagonal() * q2.matrixU().transpose();
  for (const MatrixXd* m : {&low, &decay}) {
    for (Index k : {3, 4}) {
      MatrixXd u, vt;
      linalg::dense_truncated_svd(*m, k, 42, &u, &vt, /*exact_limit=*/0);
      ASSERT_EQ(u.cols(), k);
      EXPECT_LE(rel_err(u * vt, truncate(*m, k)), 1e-8);
      EXPECT_LE((vt * vt.transpose() - MatrixXd::Identity(k, k)).norm(), 1e-12);
      MatrixXd ue, vte;
      linalg::dense_truncated_svd(*m, k, 42, &ue, &vte);
      EXPECT_LE(rel_err(ue * vte, truncate(*m, k)), 1e-10);
    }
  }
}

TEST(DenseSvd, SeedPicksTheStart) {
  // Same seed, same bits; another seed, another start (the result moves at
  // rounding level only, the spectrum being captured either way).
  const MatrixXd m = test::random_matrix(40, 8, 5) * test::random_matrix(8, 45, 6);
  MatrixXd u1, vt1, u2, vt2, u3, vt3;
  linalg::dense_truncated_svd(m, 6, 1, &u1, &vt1, 0);
  linalg::dense_truncated_svd(m, 6, 1, &u2, &vt2, 0);
  linalg::dense_truncated_svd(m, 6, 2, &u3, &vt3, 0);
  EXPECT_EQ(u1, u2);
  EXPECT_EQ(vt1, vt2);
  EXPECT_NE(u1 * vt1, u3 * vt3);
  EXPECT_LE(rel_err(u3 * vt3, u1 * vt1), 1e-10);
}

TEST(DenseSvd, RankClippedAndZero) {
  const MatrixXd m = test::random_matrix(7, 5, 9);
  MatrixXd u, vt;
  linalg::dense_truncated_svd(m, 9, 0, &u, &vt);
  EXPECT_EQ(u.cols(), 5);
  EXPECT_LE(rel_err(u * vt, m), 1e-12);
  linalg::dense_truncated_svd(m, 0, 0, &u, &vt);
  EXPECT_EQ(u.rows(), 7);
  EXPECT_EQ(u.cols(), 0);
  EXPECT_EQ(vt.rows(), 0);
  EXPECT_EQ(vt.cols(), 5);
}

}  // namespace
}  // namespace hydraopt
