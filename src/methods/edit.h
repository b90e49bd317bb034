// A stored module fit with tasks added or removed, nothing else in it
// changing (`hydraopt add --refit none` and `hydraopt remove`; the
// bundle-level steps are engine/edit.cc).
//
// A new task gets the closed-form optimum of its own factors given the
// stored shared ones, per structure (seen with the shared side as bodies;
// the B-sharing families through the transposed problem):
//   exact                          its own A and B, as read
//   a head per task (shared-A, multi-A, avg-A)  a new head solved on each
//                                  stored body (solve_heads), the best kept
//   shared-A+core, a head per task its own s B as head and a new core
//                                  solved on it and the body (solve_cores)
//   a core per task on shared heads (jd-full, jd-diag, shared-A+core with
//                                  head groups)  a new core solved on each
//                                  stored (head, body) pair, the best kept
//   nothing per task (merged, shared-A with head groups)  the stored
//                                  (head, body) pair that fits it best,
//                                  with its least-squares scale
// Each new matrix is solved against the stored (rounded) ones, then
// rounded itself, heads before cores, as store_in_precision does.
#pragma once

#include <vector>

#include "core/fit.h"
#include "core/structure.h"

namespace hydraopt {

struct AddedTask {
  double err2 = 0;   ///< ||dW - dW_hat||_F^2 of the new task on this module (NaN if stored values are not finite)
  double norm2 = 0;  ///< ||dW||_F^2
};

/// Appends task `task` to `fit` (as stored, in `dtype`) of structure
/// `spec`: its new matrices go after the stored ones, whose indices and
/// values stay as they are. `spec` is updated where its group count no
/// longer describes the layout (a head per task: groups 0).
AddedTask add_task(ModuleFit* fit, StructureSpec* spec, const ModuleLora& task, DType dtype);

/// Which stored matrices add_task reads for a fit of structure `spec`: a
/// flag per head and per body (cores are never read). The others may be
/// left empty (a bundle read without its values, io::bundle_parse).
struct StoredReads {
  std::vector<bool> heads, bodies;
};
StoredReads add_task_reads(const ModuleFit& fit, const StructureSpec& spec);

/// The stored matrices remove_tasks kept: their indices before, in order.
struct KeptMatrices {
  std::vector<int> heads, cores, bodies;
};

/// Removes the tasks with drop[i] from `fit`: their entries of the index
/// lists and scales, and every stored matrix that only they used; a matrix
/// that a kept task uses, or that no task used (a spare group slot), stays.
/// The kept matrices keep their order.
KeptMatrices remove_tasks(ModuleFit* fit, const std::vector<bool>& drop);

}  // namespace hydraopt
