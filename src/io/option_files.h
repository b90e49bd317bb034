// The JSON files a merge may be given beside the adapters. Each reader
// checks every value it takes and names the file in its errors.
//
//   --plan FILE      a list of modules [{"name", "family", "rank", "groups",
//                    ["precision": {"head", "body", "core"}]}, ...], or a
//                    report's {"plan": [...]} or a bundle header's
//                    {"modules": [...]}; rank and groups are integers >= 0,
//                    a precision's roles integer formats (int4-g32-sym, ...;
//                    a role not named is stored as a float)
//   --groups FILE    [["task", ...], ...]: every task in exactly one group
//   --weights FILE   {"task": weight, ...}: a finite weight >= 0 per task
#pragma once

#include <map>
#include <string>
#include <vector>

#include "core/storage.h"
#include "core/structure.h"

namespace hydraopt::io {

/// Entry per module name.
std::map<std::string, PlanEntry> read_plan_file(const std::string& path);
/// The same from a plan's JSON text; `label` names it in errors.
std::map<std::string, PlanEntry> parse_plan(const std::string& text, const std::string& label);

/// Group label (0..groups-1, in the file's order) per task of `tasks`.
std::vector<int> read_groups_file(const std::string& path, const std::vector<std::string>& tasks, int* groups);

/// The weight per task of `tasks`, as written.
std::vector<double> read_weights_file(const std::string& path, const std::vector<std::string>& tasks);

}  // namespace hydraopt::io
