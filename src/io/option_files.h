// The JSON files a merge may be given beside the adapters. Each reader
// checks every value it takes and names the file in its errors.
//
//   --plan FILE      a list of modules [{"name", "family", "rank", "groups"}, ...],
//                    or a report's {"plan": [...]} or a bundle header's
//                    {"modules": [...]}; rank and groups are integers >= 0
//   --groups FILE    [["task", ...], ...]: every task in exactly one group
//   --weights FILE   {"task": weight, ...}: a finite weight >= 0 per task
#pragma once

#include <map>
#include <string>
#include <vector>

#include "core/structure.h"

namespace hydraopt::io {

/// Structure per module name.
std::map<std::string, StructureSpec> read_plan_file(const std::string& path);
/// The same from a plan's JSON text; `label` names it in errors.
std::map<std::string, StructureSpec> parse_plan(const std::string& text, const std::string& label);

/// Group label (0..groups-1, in the file's order) per task of `tasks`.
std::vector<int> read_groups_file(const std::string& path, const std::vector<std::string>& tasks, int* groups);

/// The weight per task of `tasks`, as written.
std::vector<double> read_weights_file(const std::string& path, const std::vector<std::string>& tasks);

}  // namespace hydraopt::io
