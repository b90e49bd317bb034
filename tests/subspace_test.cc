#include <gtest/gtest.h>

#include <Eigen/SVD>

#include "linalg/subspace.h"
#include "test_util.h"

namespace hydraopt {
namespace {

TEST(Subspace, BasisIsOrthonormalAndSpansTheColumns) {
  Eigen::MatrixXd m = test::random_matrix(20, 4, 3);
  Eigen::MatrixXd q = linalg::column_basis(m);
  ASSERT_EQ(q.cols(), 4);
  EXPECT_LE((q.transpose() * q - Eigen::MatrixXd::Identity(4, 4)).norm(), 1e-12);
  EXPECT_LE((q * (q.transpose() * m) - m).norm(), 1e-12 * m.norm());
}

TEST(Subspace, BasisDropsRankDeficiency) {
  Eigen::MatrixXd m = test::random_matrix(20, 2, 3) * test::random_matrix(2, 5, 4);
  EXPECT_EQ(linalg::column_basis(m).cols(), 2);
  EXPECT_EQ(linalg::column_basis(Eigen::MatrixXd::Zero(20, 3)).cols(), 0);
}

TEST(Subspace, SimilarityKnownCases) {
  Eigen::MatrixXd i = Eigen::MatrixXd::Identity(10, 10);
  EXPECT_DOUBLE_EQ(linalg::subspace_similarity(i.leftCols(3), i.leftCols(3)), 1.0);
  EXPECT_DOUBLE_EQ(linalg::subspace_similarity(i.leftCols(3), i.middleCols(3, 3)), 0.0);
  // Contained subspace: similarity 1 whatever the rotation.
  Eigen::MatrixXd q = linalg::column_basis(test::random_matrix(10, 4, 1));
  Eigen::MatrixXd sub = linalg::column_basis(q * test::random_matrix(4, 2, 2));
  EXPECT_NEAR(linalg::subspace_similarity(q, sub), 1.0, 1e-12);
  // Equals the mean squared cosine of the principal angles (SVD reference).
  Eigen::MatrixXd a = linalg::column_basis(test::random_matrix(10, 3, 5));
  Eigen::MatrixXd b = linalg::column_basis(test::random_matrix(10, 3, 6));
  Eigen::JacobiSVD<Eigen::MatrixXd> svd(a.transpose() * b);
  EXPECT_NEAR(linalg::subspace_similarity(a, b), svd.singularValues().squaredNorm() / 3, 1e-12);
}

TEST(Subspace, MeanPairwiseMatchesPairLoop) {
  std::vector<Eigen::MatrixXd> qs;
  for (int i = 0; i < 4; ++i) qs.push_back(linalg::column_basis(test::random_matrix(12, 2 + i % 2, 10 + i)));
  qs.push_back(Eigen::MatrixXd(12, 0));  // a task without the module is ignored
  double sum = 0;
  int n = 0;
  for (int i = 0; i < 4; ++i) {
    for (int j = i + 1; j < 4; ++j, ++n) sum += linalg::subspace_similarity(qs[i], qs[j]);
  }
  EXPECT_NEAR(linalg::mean_pairwise_similarity(qs), sum / n, 1e-12);
  EXPECT_TRUE(std::isnan(linalg::mean_pairwise_similarity({qs[0]})));
}

}  // namespace
}  // namespace hydraopt
