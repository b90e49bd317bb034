// Single merged adapter baselines: one head and one body serve every task.
//
// Every method is one row of a table combining orthogonal pieces
// (mergekit's design), not a copy of the others:
//   space      where task updates are merged:
//                factors   A's and B's merged separately (PEFT "linear")
//                factored  sum_i dW_i kept as [s_1 B_1 ..][A_1; ..]
//                dense     the out x in dW_i, built one task at a time
//                aligned   KnOTS coordinates X_i = U^T dW_i (R x in)
//                tsv       per-task singular vectors, whitened
//                regression RegMean: sum_i dW_i C_i (sum_i C_i)^{-1} in
//                          factored form, C_i task i's input second moment
//                          (calibrated merges; the identity without: ta)
//   sparsify   none | magnitude (the int(density * n) largest |x| per
//              task, as PEFT) | dare (keep each entry with probability
//              `density`, rescale survivors by 1/density)
//   consensus  sum (lambda * sum) | ties (sign election, + on a tie, and
//              disjoint mean, as PEFT; then lambda)
//   refactor   truncated SVD to rank k (linalg::factored_svd, or for
//              `dense` linalg::dense_truncated_svd seeded by the module)
//
//   method            space     sparsify   consensus  default lambda
//   linear            factors   none       sum        1/N
//   ta                factored  none       sum        1/N
//   ties              dense     magnitude  ties       1
//   dare-linear       dense     dare       sum        1/N
//   dare-ties         dense     dare       ties       1
//   magnitude-prune   dense     magnitude  sum        1/N
//   knots-ta          aligned   none       sum        1/N
//   knots-ties        aligned   magnitude  ties       1
//   tsv               tsv       none       sum        1
//   regmean           regression none      sum        1/N
//
// Merge weights are uniform (ModuleProblem::weights is not used); a task
// lacking the module (rank 0) has a zero update and still counts in N.
// The LoRA scaling s_i counts once: the dense rows equal PEFT's "*_svd"
// combinations called with weights lambda / s_i (PEFT counts it twice;
// the equivalent call per row is beside kMethods in baselines.cc). Exact
// conventions (tie-breaks, the DARE mask) are documented in baselines.cc
// next to the code that implements them.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <string>
#include <vector>

#include "core/params.h"
#include "methods/fit_error.h"

namespace hydraopt {

struct ModuleMetric;

struct MergeParams {
  /// Fraction of entries kept by magnitude trimming; DARE keep probability.
  double density = 0.2;
  /// TIES sign election: "total" (sign of the sum) or "frequency" (sign
  /// with more entries); + when the sum is 0 or the counts tie (PEFT).
  std::string sign_method = "total";
  /// DARE drop mask seed.
  uint64_t seed = 0;
  /// Final scaling; 0 = the method's default (1/N or 1, table above).
  double lambda = 0;
  /// Output rank k; 0 = the largest input rank of the module.
  int64_t rank = 0;
};

/// Merges one module's task updates into one rank-k adapter. The fit has
/// exactly one head (out x k) and one body (k x in) shared by every task
/// (core_of = -1, scale = 1); when the merged update has rank below k the
/// factors are padded with zero columns/rows so that every module has
/// rank k. `module_index` keys the DARE mask (with params.seed and the task
/// index) so results do not depend on the order modules are processed in.
/// `metric`: the module's calibrated metric (nullptr: data-free), which
/// only `regmean` reads; its rank-k truncation is then the best in the
/// metric of sum_i C_i (whitening.h, regressed), and the fit is stored
/// unwhitened. Throws hydraopt::Error for an unknown method, bad params or
/// no tasks.
ModuleFit merge_single(const std::string& method, const ModuleProblem& p, const MergeParams& params,
                       uint64_t module_index, const ModuleMetric* metric = nullptr);

/// A single-merge method as users see it; its parameters follow from its
/// pieces in the table above.
struct SingleMerge {
  std::string name, summary, reference;
  std::vector<ParamSpec> params;
};

/// The single-merge methods, in table order.
const std::vector<SingleMerge>& single_merges();

/// The typed parameters from a single merge's checked ones.
MergeParams merge_params(const Params& params);

}  // namespace hydraopt
