// Linear algebra on updates kept in factored form.
//
// A task's update on one module is dW = L R with L (m x p) and R (p x n),
// p (the LoRA rank) much smaller than m, n. Nothing here forms an m x n
// matrix: norms, inner products, subspaces and SVDs go through p-sized
// Grams and QR factors.
#pragma once

#include <Eigen/Core>
#include <vector>

namespace hydraopt::linalg {

/// ||X Y||_F^2 = trace((X^T X)(Y Y^T)) for X (m x p), Y (p x n); >= 0.
double product_norm2(const Eigen::MatrixXd& x, const Eigen::MatrixXd& y);

/// <X1 Y1, X2 Y2>_F = trace((X1^T X2)(Y2 Y1^T)).
double product_inner(const Eigen::MatrixXd& x1, const Eigen::MatrixXd& y1, const Eigen::MatrixXd& x2,
                     const Eigen::MatrixXd& y2);

/// Upper-triangular S (p x p) with S^T S = L^T L, so ||L R x|| = ||S R x||
/// for every R, x: the left factor reduced to its rank-sized core.
Eigen::MatrixXd left_core(const Eigen::MatrixXd& l);

struct Subspace {
  Eigen::MatrixXd basis;   ///< n x k, orthonormal columns
  Eigen::VectorXd values;  ///< k singular values, descending
};

/// Top-k right singular subspace of a stacked matrix T (P x n): the
/// k-dimensional V maximising ||T V||_F. Uses the smaller of the two Grams.
/// k is clipped to min(P, n).
Subspace top_right_subspace(const Eigen::MatrixXd& t, Eigen::Index k);

/// Truncated SVD of the product L R (m x p)(p x n), rank k: returns U (m x k)
/// with singular values folded in, and Vt (k x n) with orthonormal rows, so
/// that U Vt is the best rank-k approximation of L R.
void factored_svd(const Eigen::MatrixXd& l, const Eigen::MatrixXd& r, Eigen::Index k, Eigen::MatrixXd* u,
                  Eigen::MatrixXd* vt);

/// Moore-Penrose pseudo-inverse of a symmetric positive semi-definite
/// matrix (eigenvalues below 1e-12 of the largest are treated as zero).
Eigen::MatrixXd psd_pinv(const Eigen::MatrixXd& g);

}  // namespace hydraopt::linalg
