// One merge or sweep over an adapter set: the options checked, every
// task's update norms and weights, the modules shared out over ranks and
// threads, and the fits a method asks for (MethodContext), measured and,
// for merge, written to the bundle as they finish.
//
// Under MPI (dist::size() > 1, merge only) each rank loads and fits its own
// modules (mine()); evaluated fits are exchanged so every rank plans on the
// whole table, and fitted modules travel to rank 0, which writes the
// bundle. Every step that can fail on one rank and not another ends in a
// dist::check, so all ranks stop together. With one rank the exchanges do
// nothing. Results never depend on the thread or rank count.
#pragma once

#include <chrono>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "hydraopt/merge.h"
#include "io/bundle.h"
#include "io/calibration.h"
#include "methods/whitening.h"
#include "plan/registry.h"

namespace hydraopt::engine {

/// One module's tasks as the fits see them: whitened when calibrated, with
/// what maps a fit back and the problem as read.
struct LoadedModule {
  ModuleProblem p;
  /// Calibrated only: the tasks' mean metric (p is whitened by it) and
  /// each task's own, for solve_own_metric (no entries when every task
  /// has the same).
  ModuleMetric metric;
  std::optional<ModuleProblem> original;  ///< calibrated only: as read

  /// The problem as read (not whitened).
  const ModuleProblem& as_read() const { return original ? *original : p; }
};

/// One task's calibration statistics: its file (validated; read one site
/// at a time as modules load) and the site each module reads.
struct CalibratedTask {
  std::shared_ptr<const io::CalibrationFileReader> file;
  std::map<std::string, std::string> site_of;
};

/// The rank the tasks' mean second moment is cut to when its width is
/// above kExactWidth (compressed(): the rest goes to its diagonal), as each
/// file's sketch is at most 256; up to that width it is kept whole.
inline constexpr Eigen::Index kMeanMomentRank = 256;

class Session final : public MethodContext {
 public:
  /// With `hash_sources`, the sources' SHA-256 too (source_sha256()), for a bundle.
  Session(const AdapterSet& set, const MergeOptions& o, bool hash_sources);

  // MethodContext
  size_t module_count() const override { return set_.modules().size(); }
  const std::string& module_name(size_t m) const override { return set_.modules()[m].name; }
  ModuleShape shape(size_t m) const override;
  size_t task_count() const override { return set_.size(); }
  int64_t original_params() const override { return original_; }
  Share share() const override { return share_; }
  int user_group_count() const override { return user_group_count_; }
  DType dtype() const override { return dtype_; }
  FitOptions fit_defaults() const override;
  Spread streaming_spread() const override { return spread_; }
  const HandPlan* hand_plan() override;
  /// Fits this plan instead of planning (as a --plan file would).
  void set_hand_plan(HandPlan plan) { hand_ = std::move(plan); }
  bool budget_given() const override { return o_.budget || o_.budget_bytes; }
  EvalTable evaluate(const std::function<std::vector<CandidateSpec>(size_t, const ModuleShape&)>& specs,
                     const FitOptions& fo, Store store, Spread spread) override;
  EvalTable predict(const std::function<std::vector<CandidateSpec>(size_t, const ModuleShape&)>& specs,
                    const FitOptions& fo) override;
  EvalTable evaluate_merged(const std::function<ModuleFit(const ModuleProblem&, const ModuleMetric*, size_t)>& merge) override;
  EvalTable evaluate_stored(const std::function<std::vector<StoredFit>(const ModuleProblem&, size_t)>& store,
                            bool final) override;

  /// The budget (stored numbers or bytes, o.unit's) for a fraction: of the
  /// original parameter count, or of the bytes of a bf16 copy.
  int64_t budget_limit(double fraction) const;
  /// The fraction asked for: --budget, --budget-bytes over a bf16 copy's
  /// bytes, or 0.5.
  double requested_fraction() const;
  BudgetUnit unit() const { return unit_; }
  /// The report of `run` at its b-th budget.
  MergeReport report(const std::string& method, const MethodRun& run, size_t b, const Params& params,
                     double seconds) const;

  /// Fitted modules go to `writer` as soon as they are finished.
  void write_to(io::BundleWriter* writer) { writer_ = writer; }
  /// Fixes the bundle's layout when every module's structure is known and
  /// none is written yet, so modules go straight to their places.
  void expect_layout(const std::vector<CandidateSpec>& specs, io::BundleWriter* writer) const;
  /// Module m's factors, with the task weights, as the fits see them.
  LoadedModule load(size_t m) const;
  /// The fit of l.p as the bundle stores it (unwhitened when calibrated).
  ModuleFit stored(const LoadedModule& l, ModuleFit fit, const Precision& precision) const;
  bool calibrated() const { return !calib_.empty(); }
  /// Each task's calibration file's SHA-256 ("" without one), when calibrated.
  const std::vector<std::string>& calibration_sha256() const { return calib_sha_; }
  /// specs(m, shape(m)) for every module (errors in them stop every rank).
  std::vector<std::vector<CandidateSpec>> spec_lists(
      const std::function<std::vector<CandidateSpec>(size_t, const ModuleShape&)>& specs) const;

  int threads() const { return threads_; }
  const std::vector<size_t>& mine() const { return mine_; }
  const std::vector<int>& owner() const { return owner_; }
  const std::vector<std::string>& source_sha256() const { return sha_; }

 private:
  /// evaluate_stored with the loaded module.
  EvalTable evaluate_loaded(const std::function<std::vector<StoredFit>(const LoadedModule&, size_t)>& store, bool final);
  Evaluated record(size_t m, ModuleFit stored, std::vector<double> task_err2, std::vector<double> task_frob2,
                   const CandidateSpec& cs, bool store, int max_iters) const;
  /// The exact structure measured (rounded to the stored dtype), as
  /// record() of its fit would give it, without holding the fit.
  Evaluated measure_exact(size_t m, const LoadedModule& l, const CandidateSpec& cs, const FitOptions& fo) const;
  /// A stored fit's errors per task: in the fit's metric, and (calibrated)
  /// in the Frobenius metric.
  std::pair<std::vector<double>, std::vector<double>> errors(size_t m, const LoadedModule& l,
                                                             const ModuleFit& stored) const;
  void load_calibration();
  void metrics(size_t m, LoadedModule* l, bool own = true) const;
  /// Which statistics module m reads: its width and each task's site (q/k/v
  /// share one), and with `site` each task's site name (nullptr: none).
  std::string site_key(size_t m, std::vector<const std::string*>* site = nullptr) const;
  void calibrated_norms();
  void partition_modules();
  void choose_spread();
  void load_groups();
  void scan_sources(bool hash);
  void compute_weights();

  const AdapterSet& set_;
  const MergeOptions& o_;
  int threads_ = 1;
  Spread spread_ = Spread::kInside;
  DType dtype_ = DType::F32;
  Share share_ = Share::kAuto;
  int64_t original_ = 0, original_bytes_ = 0;
  BudgetUnit unit_ = BudgetUnit::kParams;
  std::vector<int> user_groups_;
  int user_group_count_ = 0;
  std::optional<HandPlan> hand_;
  std::vector<std::vector<double>> norms2_;  // [module][task]
  std::vector<int> owner_;                   // [module] the rank that fits it
  std::vector<size_t> mine_;                 // this rank's modules, ascending
  std::vector<double> total_norm2_;
  std::vector<std::vector<double>> weights_;  // [module][task]
  std::vector<std::string> sha_;  // [task] the sources' SHA-256, when asked
  std::vector<std::optional<CalibratedTask>> calib_;  // [task] when calibrated
  std::vector<std::string> calib_sha_;                      // [task]
  std::vector<std::vector<double>> frob_norms2_;            // [module][task] calibrated: Frobenius
  std::vector<double> frob_total_;
  std::vector<std::string> warnings_;
  // A module's mean metric, by the sites its tasks' statistics give it
  // (q/k/v share one), computed once while they fit in the cache (metrics()).
  mutable std::mutex whitening_mutex_;
  mutable std::map<std::string, std::shared_future<std::shared_ptr<const Whitening>>> whitening_cache_;
  mutable size_t whitening_cache_bytes_ = 0;
  mutable std::vector<std::pair<std::string, size_t>> whitening_order_;  // computed ones, oldest first, with their bytes
  // The tasks' own moments of the last sites loaded (metrics()).
  mutable std::vector<std::pair<std::string, std::shared_ptr<const std::vector<Moment>>>> recent_own_;
  io::BundleWriter* writer_ = nullptr;
};

}  // namespace hydraopt::engine
