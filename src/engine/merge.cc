// merge() and sweep(): options -> session (norms, weights) -> the method's
// run (plan/registry.h) -> report and, for merge, the bundle.
#include <algorithm>
#include <chrono>
#include <map>
#include <optional>

#include "dist/dist.h"
#include "engine/schedule.h"
#include "engine/session.h"
#include "io/atomic_file.h"
#include "io/option_files.h"
#include "hydraopt/error.h"
#include "hydraopt/merge.h"
#include "methods/precision.h"
#include "util/clock.h"

namespace hydraopt {

namespace fs = std::filesystem;

namespace {

using util::seconds_since;

// Runs `method` at the given budgets; a report per budget it answers.
std::pair<MethodRun, std::vector<MergeReport>> run_method(engine::Session& s, const Method& method,
                                                          const MergeOptions& o, std::vector<double> fractions,
                                                          bool skip_infeasible) {
  const auto t0 = std::chrono::steady_clock::now();
  const Params params = Params::resolve(method.info.name, method.params, o.params);
  if (!o.plan_file.empty() && method.info.kind != MethodKind::kPlanner) {
    throw Error(o.plan_file, "", "--plan gives the planner's structures: it goes with --method hydraopt, not " +
                                     method.info.name);
  }
  Budgets b{std::move(fractions), {}, skip_infeasible, s.unit()};
  for (double f : b.fractions) b.limits.push_back(s.budget_limit(f));
  MethodRun run = method.run(s, params, std::move(b));
  std::vector<MergeReport> reports;
  const double seconds = seconds_since(t0);
  for (size_t i = 0; i < run.budgets.size(); ++i) {
    reports.push_back(s.report(method.info.name, run, i, params, seconds));
    // A method whose storage does not follow the budget is reported at its
    // own storage fraction.
    if (!method.info.uses_budget) reports.back().budget = reports.back().fraction;
  }
  return {std::move(run), std::move(reports)};
}

io::Bundle bundle_header(const AdapterSet& set, const engine::Session& s, const MergeOptions& o,
                         const MergeReport& report, double budget) {
  io::Bundle b;
  b.method = o.method;
  b.base_model = set.base_model();
  b.params = report.params_used;
  b.budget = budget;
  b.dtype = s.dtype();
  b.fan_in_fan_out = set.task(0).fan_in_fan_out();
  b.original_params = s.original_params();
  b.params_stored = report.params;
  for (size_t i = 0; i < set.size(); ++i) {
    const Adapter& t = set.task(i);
    b.tasks.push_back({t.name(), t.dir().string(), s.source_sha256()[i], t.rank(), t.alpha(), t.use_rslora(),
                       t.target_modules()});
  }
  if (s.calibrated()) {
    io::BundleCalibration c{o.shrinkage, {}, o.calibration_plan, o.calibration_rounds};
    for (size_t i = 0; i < set.size(); ++i) c.statistics[set.task(i).name()] = s.calibration_sha256()[i];
    b.calibration = std::move(c);
  }
  return b;
}

// Merges at each budget into the bundle beside it (none where empty): one
// run of the method for all, then per module one fitter for every budget's
// structure. Fits chosen among several candidates (the planner's) that were
// measured but not kept are fitted again with the options they were
// measured with, so each bundle is the fit its report measured. With one
// budget, the fits the run finished went into the bundle already.
std::vector<MergeReport> merge_at(const AdapterSet& set, const MergeOptions& options, std::vector<double> budgets,
                                  const std::vector<fs::path>& bundles, const HandPlan* fixed = nullptr) {
  const auto t0 = std::chrono::steady_clock::now();
  const Method& method = method_named(options.method);
  if (!options.calibration.empty() && options.calibration_plan != "calibrated") {
    if (options.calibration_plan != "frobenius") {
      throw Error("--calibration-plan must be calibrated or frobenius, not '" + options.calibration_plan + "'");
    }
    if (method.info.kind == MethodKind::kPlanner && options.plan_file.empty() && !fixed) {
      // Planned without the statistics, each budget's plan (structures and
      // precisions) then fitted with them.
      MergeOptions free = options;
      free.calibration.clear();
      free.progress = nullptr;
      const std::vector<MergeReport> planned = merge_at(set, free, budgets, std::vector<fs::path>(bundles.size()));
      std::vector<MergeReport> out;
      for (size_t b = 0; b < planned.size(); ++b) {
        const HandPlan plan{"the data-free plan", io::parse_plan(planned[b].plan_json, "the data-free plan")};
        MergeOptions at = options;
        std::vector<double> one;
        if (!budgets.empty()) {
          at.budget = budgets[b];
          one = {budgets[b]};
        }
        out.push_back(merge_at(set, at, one, {bundles[b]}, &plan)[0]);
      }
      for (auto& r : out) r.seconds = seconds_since(t0);
      return out;
    }
  }
  const bool root = dist::rank() == 0;  // writes the bundles
  const bool any = std::any_of(bundles.begin(), bundles.end(), [](const fs::path& p) { return !p.empty(); });
  dist::checked([&] {
    if (!root) return;
    for (const auto& b : bundles) {
      if (!b.empty()) io::check_destination(b);
    }
  });
  engine::Session s(set, options, any);
  if (fixed) s.set_hand_plan(*fixed);
  if (budgets.empty()) budgets = {s.requested_fraction()};  // merge(): --budget, --budget-bytes or the default
  // Rank 0 writes the bundles; the others spool their modules for it.
  std::vector<std::optional<io::BundleWriter>> writers(bundles.size());
  dist::checked([&] {
    for (size_t b = 0; b < bundles.size(); ++b) {
      if (bundles[b].empty()) continue;
      if (root) writers[b].emplace(bundles[b], s.dtype(), set.modules().size());
      else writers[b].emplace(s.dtype(), set.modules().size());
    }
  });
  s.write_to(budgets.size() == 1 && writers[0] ? &*writers[0] : nullptr);
  auto [run, reports] = run_method(s, method, options, budgets, false);
  if (any) {
    for (size_t b = 0; b < budgets.size(); ++b) {
      if (!writers[b] || method.info.kind == MethodKind::kSingleAdapter) continue;
      std::vector<CandidateSpec> specs;
      for (size_t m = 0; m < run.table.size(); ++m) {
        const Evaluated& e = run.table[m][run.choice[b][m]];
        specs.push_back({e.spec, e.key, e.precision});
      }
      s.expect_layout(specs, &*writers[b]);  // unless the run wrote modules already
    }
    engine::for_each_item(s.mine(), s.threads(), options.progress, [&](size_t m) {
      const auto& mod = set.modules()[m];
      std::optional<engine::LoadedModule> l;
      std::map<int, ModuleFitter> fitters;  // by ALS iterations allowed
      for (size_t b = 0; b < budgets.size(); ++b) {
        if (!writers[b] || writers[b]->has_module(m)) continue;
        if (method.info.kind == MethodKind::kSingleAdapter) throw Error("internal: a merged module was not written");
        const Evaluated& e = run.table[m][run.choice[b][m]];
        if (!l) l = s.load(m);
        FitOptions as_evaluated = run.fit;
        as_evaluated.max_iters = e.max_iters;
        ModuleFitter& fitter = fitters.try_emplace(e.max_iters, l->p, as_evaluated).first->second;
        ModuleFit fit = s.stored(*l, fitter.fit(e.spec), e.precision);
        writers[b]->write_module(m, {mod.name, mod.in, mod.out, e.spec, std::move(fit), {}, e.precision});  // sha256: by the writer
      }
    }, Spread::kInside);
    for (size_t b = 0; b < budgets.size(); ++b) {
      if (!writers[b]) continue;
      // The other ranks' modules come to rank 0, one at a time.
      dist::stream_to_root(
          s.owner(), [&](size_t m) { return writers[b]->encoded_module(m); },
          [&](size_t m, std::string& message) { writers[b]->write_encoded(m, message); });
      dist::checked([&] {
        if (root) writers[b]->finish(bundle_header(set, s, options, reports[b], budgets[b]));
      });
    }
  }
  for (auto& r : reports) r.seconds = seconds_since(t0);
  return reports;
}

}  // namespace

MergeReport merge(const AdapterSet& set, const MergeOptions& options, const fs::path& bundle) {
  return merge_at(set, options, {}, {bundle})[0];
}

std::vector<MergeReport> merge(const AdapterSet& set, const MergeOptions& options, const std::vector<double>& budgets,
                               const std::vector<fs::path>& bundles) {
  if (budgets.empty()) throw Error("no budgets to merge at");
  if (budgets.size() != bundles.size()) throw Error("one bundle path per budget");
  if (options.budget || options.budget_bytes) throw Error("give the budgets as a list, not as --budget or --budget-bytes");
  for (double b : budgets) {
    if (!(b > 0 && b <= 1)) throw Error("budgets must be fractions in (0, 1], got " + std::to_string(b));
  }
  if (method_named(options.method).info.kind == MethodKind::kPlanner) return merge_at(set, options, budgets, bundles);
  std::vector<MergeReport> out;  // nothing to share: one merge per budget
  for (size_t i = 0; i < budgets.size(); ++i) {
    MergeOptions o = options;
    o.budget = budgets[i];
    out.push_back(merge(set, o, bundles[i]));
  }
  return out;
}

std::vector<MergeReport> sweep(const AdapterSet& set, const std::vector<std::string>& method_names,
                               const std::vector<double>& budgets, const MergeOptions& options) {
  if (dist::size() > 1) throw Error("sweep runs in one process: start it without mpirun (or with -np 1)");
  if (method_names.empty()) throw Error("no methods to sweep");
  if (budgets.empty()) throw Error("no budgets to sweep");
  if (!options.calibration.empty() && options.calibration_plan != "calibrated") {
    throw Error("sweep plans in the calibrated metric only: --calibration-plan " + options.calibration_plan +
                " is merge's (and demo's)");
  }
  for (auto& name : method_names) method_named(name);
  for (double b : budgets) {
    if (!(b > 0 && b <= 1)) throw Error("budgets must be fractions in (0, 1], got " + std::to_string(b));
  }
  engine::Session s(set, options, false);
  std::vector<MergeReport> out;
  for (auto& name : method_names) {
    const Method& method = method_named(name);
    // A method whose storage does not follow the budget gives one point.
    auto [run, reports] = run_method(s, method, options, method.info.uses_budget ? budgets : std::vector<double>{1.0}, true);
    for (auto& r : reports) out.push_back(std::move(r));
  }
  return out;
}

}  // namespace hydraopt
