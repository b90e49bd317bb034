// Merging a set of adapters into a bundle under a storage budget.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "hydraopt/adapter.h"

namespace hydraopt {

/// What a budget counts. kParams: stored numbers, every factor in the float
/// dtype (the published unit); fractions are of the inputs' parameter
/// count. kBytes: bytes of tensor data, and each factor role may be stored
/// as group-wise integers (the planner chooses); fractions are of the bytes
/// of a bf16 copy of the inputs (2 bytes per input parameter).
enum class BudgetUnit { kParams, kBytes };

struct MergeOptions {
  /// A name from methods(): "hydraopt" (the planner, default), a fixed
  /// per-task structure, or a single-adapter merge.
  std::string method = "hydraopt";
  /// A fraction 0 < F <= 1 in `unit`: of the original LoRA parameter count,
  /// or of the bytes of a bf16 copy of the inputs.
  std::optional<double> budget;
  /// Alternative to `budget`: stored bytes of tensor data (unit kBytes).
  std::optional<int64_t> budget_bytes;
  /// The unit of `budget` and of the budget lists of merge() and sweep().
  BudgetUnit unit = BudgetUnit::kParams;
  /// Which factor may be shared: "A", "B" or "auto" (both, and both at once).
  std::string share = "auto";
  /// Task weights: "balanced" (w_i = 1/||dW_i||^2 over all modules),
  /// "module" (each module of each task balanced on its own, w_mi =
  /// 1/(M ||dW_mi||^2) over the M modules: the objective is every task's
  /// relative error on every module, so no module's update counts less for
  /// being small), "uniform", or a JSON file {"task": weight, ...}.
  std::string weights = "balanced";
  /// Optional JSON file [["task", ...], ...] grouping tasks for shared heads/bodies.
  std::string groups_file;
  /// Optional plan (a report's or bundle's "plan") to use instead of planning.
  std::string plan_file;
  /// Worker threads; 0 = all cores. Results do not depend on it.
  int threads = 0;
  /// Memory for the hydra point, which holds at most a module's factors in
  /// double (or its single-precision stack and heads): threads work on
  /// several modules at once (faster) while that many modules' factors, in
  /// double, fit in it; otherwise they share one module at a time. Results
  /// do not depend on it.
  double across_bytes = 256.0 * (1 << 20);
  /// Stored dtype; default the inputs' widest.
  std::optional<DType> dtype;
  /// Method parameters by name (see methods()); unknown names are errors.
  std::map<std::string, std::string> params;
  /// Calibration (issue 19): a directory of statistics files, one per task
  /// (<task>.safetensors, from `hydraopt calibrate`; docs/formats.md). Every
  /// fit then minimises each module's error on the inputs the tasks feed
  /// it, ||(dW - dW_hat) C^{1/2}||^2 with C the tasks' mean second moment
  /// there, instead of the Frobenius error; task weights in that metric.
  std::string calibration;
  /// Shrinkage of C towards (tr C / in) I, in [0, 1]: how much every input
  /// direction keeps counting (1: the data-free fit). The default keeps the
  /// calibrated plans' Frobenius error within 1.25x the data-free plans' on
  /// two of the three shipped sets (docs/methods.md, "Calibration").
  double shrinkage = 0.3;
  /// With calibration, the metric the planner chooses the structures in:
  /// "calibrated" (every candidate measured in the calibrated metric) or
  /// "frobenius" (the data-free plan, its structures and integer formats
  /// then fitted calibrated).
  std::string calibration_plan = "calibrated";
  /// With calibration: after the fit in the tasks' mean metric, each
  /// task's own head or core is solved in its own metric, then this many
  /// rounds of re-solving the shared bodies and the heads again in the
  /// tasks' own metrics (alternating block steps; none raises that
  /// objective beyond rounding). Ignored without calibration.
  int calibration_rounds = 0;
  /// Called after each module of each pass: (done, total).
  std::function<void(size_t, size_t)> progress;
};

struct TaskError {
  std::string name;
  double rel_error = 0;  ///< sqrt(sum_m ||dW - dW_hat||^2 / sum_m ||dW||^2), in the fit's metric
  /// Calibrated merges: the same in the Frobenius metric.
  std::optional<double> frobenius_rel_error;
};

struct MergeReport {
  std::string method;
  BudgetUnit unit = BudgetUnit::kParams;
  double budget = 0;  ///< the requested fraction, in `unit`
  int64_t params = 0, original_params = 0;
  int64_t bytes = 0;           ///< stored bytes of tensor data
  int64_t original_bytes = 0;  ///< the input adapters' LoRA tensor bytes, as given
  double fraction = 0;         ///< params / original_params
  double byte_fraction = 0;    ///< bytes / original_bytes (relative to the inputs as given)
  double bf16_fraction = 0;    ///< bytes / (2 original_params): relative to a bf16 copy of the inputs
  double mean_rel_error = 0;
  /// Calibrated merges: the mean of the tasks' Frobenius relative errors.
  std::optional<double> mean_frobenius_rel_error;
  std::vector<TaskError> tasks;
  /// What the user should know (e.g. a task without calibration statistics).
  std::vector<std::string> warnings;
  double seconds = 0;
  std::string plan_json;  ///< the per-module plan, as JSON
  std::map<std::string, std::string> params_used;
};

/// Merges `set` and, if `bundle` is non-empty, writes the bundle there
/// (atomically). Throws hydraopt::Error on bad options or inputs.
MergeReport merge(const AdapterSet& set, const MergeOptions& options, const std::filesystem::path& bundle);

/// Merges at several budgets (fractions), writing bundles[i] for budgets[i]
/// (none where the path is empty): the planner predicts its candidates once
/// for all of them and fits each module once for every bundle. The
/// options' own budget must be unset. One report per budget.
std::vector<MergeReport> merge(const AdapterSet& set, const MergeOptions& options, const std::vector<double>& budgets,
                               const std::vector<std::filesystem::path>& bundles);

/// Evaluates every (method, budget) pair without writing bundles. Fits are
/// shared across budgets where the method allows it. Errors never rise
/// with the budget within one method.
std::vector<MergeReport> sweep(const AdapterSet& set, const std::vector<std::string>& methods,
                               const std::vector<double>& budgets, const MergeOptions& options);

/// The report as DESIGN §4 JSON (plus "plan" and "parameters").
std::string report_json(const MergeReport& r, bool with_plan = true);
/// Writes report_json(r) to `path` atomically.
void write_report(const std::filesystem::path& path, const MergeReport& r);
/// Writes `dir`/sweep.json (a list of reports), sweep.md (a table) and
/// sweep.svg (storage fraction vs mean error, one line per method), each
/// atomically; returns the Markdown table.
std::string write_sweep(const std::filesystem::path& dir, const std::vector<MergeReport>& reports,
                        const std::string& title);

struct MethodParam {
  std::string name, default_value, help;
  std::string type;   ///< "integer", "real" or "choice"
  std::string range;  ///< the allowed values, e.g. "(0, 1]", "total | frequency"
};

enum class MethodKind {
  kPlanner,        ///< chooses a structure per module within the budget
  kStructure,      ///< one fixed per-task structure on every module
  kSingleAdapter,  ///< one merged adapter serves every task
};

struct MethodInfo {
  std::string name;
  MethodKind kind = MethodKind::kStructure;
  bool single_adapter = false;  ///< one merged adapter serves every task
  bool uses_budget = true;      ///< storage follows the budget (else: the method's own)
  std::string summary;
  std::string reference;
  std::vector<MethodParam> params;
};

/// The method registry, in display order.
const std::vector<MethodInfo>& methods();
/// nullptr if unknown.
const MethodInfo* find_method(const std::string& name);

}  // namespace hydraopt
