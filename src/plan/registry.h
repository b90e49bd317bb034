// The method registry: every merge method is one entry, a descriptor (name,
// kind, summary, reference, typed parameters) and the function that runs
// it. `merge`, `sweep`, the CLI's flags, `hydraopt methods` and Python's
// methods() all read this table; nothing else looks at a method's name.
//
// A method runs against a MethodContext, which the engine implements
// (engine/session.h): the modules' shapes and the fits it evaluates. A run
// says which structure (or merged adapter) each module gets at each budget;
// the engine writes the report and the bundle from that.
//
// Where the entries live:
//   plan/structure_methods.cc   hydraopt (the planner), hydra, hydra-avg,
//                               jd-full, jd-diag: per-task structures
//   methods/baselines.cc        the single-adapter merges (one composable
//                               engine, one row per name), registered here
// docs/architecture.md shows how to add one.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/params.h"
#include "hydraopt/merge.h"
#include "methods/fit_error.h"
#include "methods/structures.h"
#include "methods/whitening.h"
#include "plan/candidates.h"

namespace hydraopt {

/// One structure on one module: fitted and measured after rounding to the
/// bundle dtype, or only predicted (Predictor::predict).
struct Evaluated {
  StructureSpec spec;
  std::string key;                ///< the candidate's key (equal across modules)
  int64_t params = 0;             ///< stored numbers
  double error = 0;               ///< sum_i w_i ||dW_i - dW_hat_i||^2
  std::vector<double> task_err2;  ///< ||dW_i - dW_hat_i||^2 per task (measured only), in the fit's metric
  std::vector<double> task_frob2;  ///< calibrated fits: the same in the Frobenius metric
  int max_iters = 0;              ///< ALS iterations the fit was allowed
  bool measured = true;           ///< false: error is a prediction
  Precision precision;            ///< how the roles are stored
  int64_t bytes = 0;              ///< stored bytes (spec_bytes)

  /// Storage in the budget's unit.
  int64_t storage(BudgetUnit unit) const { return unit == BudgetUnit::kBytes ? bytes : params; }
};

/// [module][candidate]
using EvalTable = std::vector<std::vector<Evaluated>>;

/// A fit as it is stored, with what it is.
struct StoredFit {
  CandidateSpec candidate;
  ModuleFit fit;
};

/// Where the engine puts its threads for a batch of fits: on several
/// modules at once, or on the loops inside one module at a time (which
/// holds one module's factors in memory instead of one per thread).
enum class Spread { kAcross, kInside };

/// What evaluate() does with the fit of a module given exactly one spec.
enum class Store {
  kNo,       ///< measures it only
  kReplace,  ///< stores it in the bundle; a later call may replace it
  kFinal,    ///< stores it in the bundle for good
};

/// A plan given by hand (--plan): a structure per module name.
struct HandPlan {
  std::string file;
  std::map<std::string, PlanEntry> specs;
};

/// What a method may ask of the engine that runs it.
class MethodContext {
 public:
  virtual ~MethodContext() = default;

  virtual size_t module_count() const = 0;
  virtual const std::string& module_name(size_t m) const = 0;
  virtual ModuleShape shape(size_t m) const = 0;
  virtual size_t task_count() const = 0;
  virtual int64_t original_params() const = 0;
  /// Which factor may be shared (--share).
  virtual Share share() const = 0;
  /// Groups in the user's groups file (0: none given).
  virtual int user_group_count() const = 0;
  /// The stored float dtype (roles not stored as integers).
  virtual DType dtype() const = 0;
  /// Fit options every fit starts from (the user's grouping in them).
  virtual FitOptions fit_defaults() const = 0;
  /// How to spread the streamed hydra point (memory allowing: across).
  virtual Spread streaming_spread() const = 0;
  /// The --plan file's structures, or nullptr.
  virtual const HandPlan* hand_plan() = 0;
  /// Whether the user gave a budget (else the default fraction is used).
  virtual bool budget_given() const = 0;

  /// Fits and measures specs(m, shape(m)) on every module (a module with
  /// no specs gets none). A module given exactly one spec has its fit
  /// stored in the bundle at once as `store` says (replacing what an
  /// earlier call stored there).
  virtual EvalTable evaluate(const std::function<std::vector<CandidateSpec>(size_t, const ModuleShape&)>& specs,
                             const FitOptions& fo, Store store, Spread spread) = 0;
  /// Predicts the error of specs(m, shape(m)) on every module after
  /// rounding (Predictor::predict; the exact structure, which costs no
  /// fit, is measured): two Grams per module serve all.
  virtual EvalTable predict(const std::function<std::vector<CandidateSpec>(size_t, const ModuleShape&)>& specs,
                            const FitOptions& fo) = 0;
  /// One merged adapter per module from merge(problem as read, its
  /// calibrated metric or nullptr, module index), finished (into the
  /// bundle at once).
  virtual EvalTable evaluate_merged(
      const std::function<ModuleFit(const ModuleProblem&, const ModuleMetric*, size_t)>& merge) = 0;
  /// Fits made outside the fitters, store(problem, module index) each
  /// already as stored (rounded or quantized: nothing is done to them),
  /// measured; with `final`, a module given exactly one is finished.
  virtual EvalTable evaluate_stored(const std::function<std::vector<StoredFit>(const ModuleProblem&, size_t)>& store,
                                    bool final) = 0;
};

/// The budgets a run is asked for: fractions (of the original parameter
/// count, or of a bf16 copy's bytes) and the same as stored numbers or bytes.
struct Budgets {
  std::vector<double> fractions;
  std::vector<int64_t> limits;
  /// Leave out budgets below the method's least storage (sweep) instead
  /// of failing (merge).
  bool skip_infeasible = false;
  BudgetUnit unit = BudgetUnit::kParams;
};

struct MethodRun {
  EvalTable table;
  std::vector<double> budgets;              ///< the budgets answered (see Budgets::skip_infeasible)
  std::vector<std::vector<size_t>> choice;  ///< [budget][module]: index into table[module]
  FitOptions fit;                           ///< the options the table's fits used (max_iters per entry)
};

struct Method {
  MethodInfo info;
  std::vector<ParamSpec> params;
  std::function<MethodRun(MethodContext&, const Params&, Budgets)> run;
};

/// Every method, in display order (filled once, on first use).
const std::vector<Method>& registry();
/// The method called `name`; an Error listing the known ones if none is.
const Method& method_named(const std::string& name);

/// The per-task structure methods (plan/structure_methods.cc).
std::vector<Method> structure_methods();

/// A run that gives the same choice at every budget.
MethodRun same_at_every_budget(EvalTable table, const Budgets& b, const FitOptions& fo);

}  // namespace hydraopt
