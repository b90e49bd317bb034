// Deterministic grouping of tasks (for heads or bodies shared by a group).
#pragma once

#include <Eigen/Core>
#include <vector>

namespace hydraopt {

/// Agglomerative clustering with Ward's criterion on weighted points given
/// by their pairwise squared distances `d2` (N x N) and weights `w`: merging
/// groups a and b costs Wa Wb / (Wa + Wb) ||mu_a - mu_b||^2, the exact rise
/// of sum_i w_i ||x_i - mu_group(i)||^2. Ties break on the lowest indices,
/// so the result is a pure function of the inputs.
class Dendrogram {
 public:
  Dendrogram(const Eigen::MatrixXd& d2, const std::vector<double>& w);
  /// Labels 0..groups-1 per point, numbered by first appearance.
  std::vector<int> cut(int groups) const;

 private:
  int n_ = 0;
  std::vector<std::pair<int, int>> merges_;  ///< (kept, absorbed) cluster ids, in order
};

/// Labels renumbered 0.. by first appearance.
std::vector<int> canonical_labels(const std::vector<int>& labels);

}  // namespace hydraopt
