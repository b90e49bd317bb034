// Subspaces spanned by LoRA factors, and how much two of them overlap.
#pragma once

#include <Eigen/Core>
#include <vector>

namespace hydraopt::linalg {

/// Orthonormal basis (n x k) of the column space of `m` (n x r), k <= r the
/// numerical rank (singular values above 1e-10 of the largest).
Eigen::MatrixXd column_basis(const Eigen::MatrixXd& m);

/// ||Qa^T Qb||_F^2 / min(ka, kb): 1 when one subspace contains the other,
/// 0 when orthogonal, about max(ka,kb)/n for random subspaces of R^n.
double subspace_similarity(const Eigen::MatrixXd& qa, const Eigen::MatrixXd& qb);

/// Mean subspace_similarity over all pairs of non-empty bases; NaN if fewer
/// than two are non-empty.
double mean_pairwise_similarity(const std::vector<Eigen::MatrixXd>& bases);

}  // namespace hydraopt::linalg
