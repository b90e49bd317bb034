// What a set of adapters holds, and how much structure its tasks share.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "hydraopt/adapter.h"

namespace hydraopt {

struct TaskSummary {
  std::string name;
  int64_t rank = 0;  ///< config r
  double alpha = 0;  ///< config lora_alpha
  DType dtype = DType::F32;
  int64_t modules = 0;
  int64_t params = 0;  ///< sum over modules of r * (in + out)
};

struct ModuleSummary {
  std::string name;
  int64_t in = 0, out = 0;
  int64_t min_rank = 0, max_rank = 0;  ///< over the tasks that have the module
  int tasks = 0;                       ///< how many tasks have it
  /// Mean over task pairs of ||Qi^T Qj||_F^2 / min(ri, rj) for the row
  /// spaces of A (similarity_a) and column spaces of B (similarity_b); NaN
  /// with fewer than two tasks.
  double similarity_a = 0, similarity_b = 0;
};

struct Inspection {
  std::vector<TaskSummary> tasks;
  std::vector<ModuleSummary> modules;
};

Inspection inspect(const AdapterSet& set);

/// DESIGN §4, plus dtype, each module's task count and rank range:
///   {"tasks":[{name,rank,alpha,dtype,params,modules}],
///    "modules":[{name,in,out,tasks,min_rank,max_rank,similarity_A,similarity_B}]}
/// (similarities null with fewer than two tasks).
std::string inspection_json(const Inspection& x);
/// Aligned human-readable tables.
std::string inspection_table(const Inspection& x);

}  // namespace hydraopt
