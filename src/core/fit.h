// How one module's per-task updates are stored, and how well.
//
// Task i's reconstructed update on a module is
//     dW_hat_i = scale_i * H[head_of[i]] * C_i * R[body_of[i]]
// with heads H (out x k), bodies R (k' x in) and an optional per-task core
// C_i = cores[core_of[i]] (k x k', or diagonal when diagonal_cores: stored
// as a k-vector) or the identity when core_of[i] < 0. Heads and bodies may
// be shared by several tasks: that sharing is where the storage goes.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <string>
#include <vector>

#include "hydraopt/adapter.h"

namespace hydraopt {

struct ModuleFit {
  std::vector<Eigen::MatrixXd> heads, cores, bodies;
  std::vector<int> head_of, core_of, body_of;
  std::vector<double> scale;
  bool diagonal_cores = false;

  size_t tasks() const { return head_of.size(); }
  /// Stored numbers: sum of the sizes of heads, cores and bodies.
  int64_t params() const;
  /// scale_i * H * C_i (out x k'): the left factor of task i's update.
  Eigen::MatrixXd left(size_t task) const { return scale[task] * head_core(task); }
  /// H * C_i without the scale.
  Eigen::MatrixXd head_core(size_t task) const;
  const Eigen::MatrixXd& right(size_t task) const { return bodies[body_of[task]]; }
  /// The same fit for the transposed problem (dW^T): heads and bodies swap.
  ModuleFit transposed() const;
  /// Every stored matrix rounded to `dtype` (what a bundle holds).
  ModuleFit rounded(DType dtype) const&;
  ModuleFit rounded(DType dtype) &&;  ///< reuses this fit's storage
};

/// One module's inputs: every task's factors and the task weights w_i.
struct ModuleProblem {
  std::vector<ModuleLora> loras;
  std::vector<double> weights;  ///< w_i >= 0, same for every module

  size_t tasks() const { return loras.size(); }
  int64_t in() const { return loras.empty() ? 0 : loras[0].A.cols(); }
  int64_t out() const { return loras.empty() ? 0 : loras[0].B.rows(); }
  int64_t max_rank() const;
  /// s_i B_i: the left factor of dW_i.
  Eigen::MatrixXd left(size_t i) const { return loras[i].scale * loras[i].B; }
  /// The problem for dW_i^T (A and B swap roles).
  ModuleProblem transposed() const;
};

}  // namespace hydraopt
