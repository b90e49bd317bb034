// Which structures the planner tries on a module.
#pragma once

#include <string>
#include <vector>

#include "methods/structures.h"

namespace hydraopt {

enum class Share { kA, kB, kAuto };

struct CandidateSpec {
  StructureSpec spec;
  std::string key;  ///< equal across modules for "the same structure" (rank as a multiple of r)
};

/// Candidates for a module of this shape. Ranks are multiples of the
/// module's largest input rank r; group counts run 2, 3, 4, 6, 8, 12, ...
/// below the task count (or just the user's grouping when given).
std::vector<CandidateSpec> candidate_specs(const ModuleShape& m, Share share, int user_groups);

}  // namespace hydraopt
