// Which structures the planner tries on a module.
#pragma once

#include <string>
#include <vector>

#include "core/storage.h"
#include "methods/structures.h"

namespace hydraopt {

enum class Share { kA, kB, kAuto };

struct CandidateSpec {
  StructureSpec spec;
  std::string key;  ///< equal across modules for "the same structure" (rank as a multiple of r)
  Precision precision;  ///< how the roles are stored (default: the float dtype)
};

/// Candidates for a module of this shape. Ranks are multiples of the
/// module's largest input rank r; group counts run 2, 3, 4, 6, 8, 12, ...
/// below the task count (or just the user's grouping when given).
std::vector<CandidateSpec> candidate_specs(const ModuleShape& m, Share share, int user_groups);

/// The precisions tried with each structure when the budget is in bytes:
/// bodies and heads each in the float dtype or any integer format
/// (all_quant_formats), independently; cores, which are per task, take
/// the format of the per-task side (the heads', or the bodies' where the
/// B side is shared).
std::vector<Precision> candidate_precisions(const StructureSpec& s);

/// `specs` crossed with candidate_precisions, keys extended by the precision's.
std::vector<CandidateSpec> with_precisions(const std::vector<CandidateSpec>& specs);

}  // namespace hydraopt
