// How well a fit reproduces each task's update: squared Frobenius errors
// computed in factored form (Grams of the stored factors, never a dense
// out x in matrix).
#pragma once

#include <Eigen/Core>
#include <vector>

#include "core/fit.h"

namespace hydraopt {

/// ||dW_i||_F^2 per task.
std::vector<double> update_norms2(const ModuleProblem& p);
/// ||dW_i - dW_hat_i||_F^2 per task; `norms` (update_norms2(p)) saves
/// recomputing them.
std::vector<double> fit_errors2(const ModuleProblem& p, const ModuleFit& f,
                                const std::vector<double>* norms = nullptr);
/// ||dW_i - dW_hat_i||_F^2 for task i alone, given ||dW_i||^2 and the
/// Grams H^T H of its head and R R^T of its body (which fit_errors2
/// computes once per shared head and body).
double fit_error2(const ModuleProblem& p, const ModuleFit& f, size_t i, double norm2, const Eigen::MatrixXd& hh,
                  const Eigen::MatrixXd& rr);
/// The same for task i's factors given transposed (as read from the file).
double fit_error2(const ModuleLoraT& l, const ModuleFit& f, size_t i, double norm2, const Eigen::MatrixXd& hh,
                  const Eigen::MatrixXd& rr);
/// A task's relative error sqrt(err2 / norm2) from its squared error and
/// squared update norm over all modules (1 for an error on no update).
double relative_error(double err2, double norm2);
/// sum_i w_i ||dW_i - dW_hat_i||_F^2
double weighted_error(const ModuleProblem& p, const ModuleFit& f);

}  // namespace hydraopt
