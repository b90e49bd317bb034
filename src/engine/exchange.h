// Evaluated fits across MPI ranks: each rank evaluates its own modules;
// every rank then needs the whole table to plan on.
#pragma once

#include <vector>

#include "plan/registry.h"

namespace hydraopt::engine {

/// Completes `table` (filled on `mine`, this rank's modules) with the other
/// ranks' modules, bit for bit. Nothing to do on one rank.
void share_table(EvalTable& table, const std::vector<size_t>& mine);

}  // namespace hydraopt::engine
