// Bundles that grow and shrink: adapters added to a bundle, tasks removed
// from it, without the adapters it was merged from (issue 20). The work is
// in src/engine/edit.cc; the per-module steps in src/methods/edit.h.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "hydraopt/adapter.h"

namespace hydraopt {

struct EditOptions {
  /// "none": nothing stored changes; each new task gets its own factors
  /// against the stored shared ones, appended. "all": every module
  /// re-planned and re-fitted (the bundle's method and parameters), the
  /// stored tasks' reconstructions as their targets and new adapters as
  /// they are. "touched": only the modules the new adapters have, the others
  /// as with "none" (add only). Unset: "all" when a budget is given, else
  /// "none".
  std::optional<std::string> refit;
  /// Storage for a refit, in merge's units: a fraction of the original LoRA
  /// parameter count with float factors (as `merge --budget F`), or bytes of
  /// tensor data, where the planner may store integers (which add and remove
  /// do not edit yet). Default, in parameters: add, the bundle's recorded
  /// budget; remove, the bundle's storage before the removal (the freed
  /// space is spent on the remaining tasks).
  std::optional<double> budget;
  std::optional<int64_t> budget_bytes;
  /// Worker threads for a refit; 0 = all cores.
  int threads = 0;
};

struct EditedTask {
  std::string name;
  /// "added", "kept" (stored factors unchanged), "refit" (fitted again).
  std::string status;
  /// Relative error against the task's adapter: computed for added tasks,
  /// recalled from the bundle's history for a task an earlier add recorded,
  /// unknown (nullopt) otherwise; a refit target that was a reconstruction
  /// has an error against that reconstruction.
  std::optional<double> rel_error;
  /// Its refit target was its reconstruction from the bundle.
  bool reconstructed = false;
};

struct EditReport {
  std::string op;     ///< "add" or "remove"
  std::string refit;  ///< "none", "touched" or "all"
  int64_t params = 0, original_params = 0, bytes = 0;
  double fraction = 0;              ///< params / original_params
  std::vector<EditedTask> tasks;    ///< the new bundle's tasks, in order
  std::vector<std::string> removed; ///< remove: the tasks removed
  /// One line each: an added task that fits the stored factors badly.
  std::vector<std::string> warnings;
  double seconds = 0;
};

/// Adds `adapters` to the bundle at `bundle` and writes the result to `out`
/// (atomically; it may be `bundle` itself). Throws hydraopt::Error, with
/// nothing written, on a task name already in the bundle, another base
/// model, a module the bundle lacks or of another shape, or a bundle this
/// version cannot read.
EditReport add_adapters(const std::filesystem::path& bundle, const AdapterSet& adapters, const EditOptions& options,
                        const std::filesystem::path& out);

/// Removes `tasks` (names) from the bundle at `bundle`, writing `out`. With
/// refit "none" the remaining tasks' stored factors stay byte for byte, and
/// what only the removed tasks used is dropped.
EditReport remove_tasks(const std::filesystem::path& bundle, const std::vector<std::string>& tasks,
                        const EditOptions& options, const std::filesystem::path& out);

/// The report as JSON: {"op", "refit", "storage": {"params",
/// "original_params", "fraction", "bytes"}, "tasks": [{"name", "status",
/// "rel_error" (null if unknown), "reconstructed"}], "removed", "warnings",
/// "seconds"}.
std::string edit_report_json(const EditReport& r);
/// Writes edit_report_json(r) to `path` atomically.
void write_edit_report(const std::filesystem::path& path, const EditReport& r);

}  // namespace hydraopt
