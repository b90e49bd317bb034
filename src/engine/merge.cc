// merge() and sweep(): options -> session (norms, weights) -> the method's
// run (plan/registry.h) -> report and, for merge, the bundle.
#include <unistd.h>

#include <chrono>
#include <optional>

#include "dist/dist.h"
#include "engine/schedule.h"
#include "engine/session.h"
#include "hydraopt/error.h"
#include "hydraopt/merge.h"

namespace hydraopt {

namespace fs = std::filesystem;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

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
  Budgets b{std::move(fractions), {}, skip_infeasible};
  for (double f : b.fractions) b.limits.push_back(s.budget_params(f));
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
  return b;
}

}  // namespace

MergeReport merge(const AdapterSet& set, const MergeOptions& options, const fs::path& bundle) {
  const auto t0 = std::chrono::steady_clock::now();
  const Method& method = method_named(options.method);
  const bool root = dist::rank() == 0;  // writes the bundle
  dist::checked([&] {
    if (bundle.empty() || !root) return;
    // Fail on an unwritable destination before the work, not after.
    fs::path dir = fs::absolute(bundle).parent_path();
    if (!fs::is_directory(dir)) throw Error(bundle.string(), "", "output directory does not exist");
    if (::access(dir.c_str(), W_OK) != 0) throw Error(bundle.string(), "", "output directory is not writable");
  });
  engine::Session s(set, options, !bundle.empty());
  // Rank 0 writes the bundle; the others spool their modules for it.
  std::optional<io::BundleWriter> writer;
  dist::checked([&] {
    if (bundle.empty()) return;
    if (root) writer.emplace(bundle, s.dtype(), set.modules().size());
    else writer.emplace(s.dtype(), set.modules().size());
  });
  s.write_to(writer ? &*writer : nullptr);
  const double budget = s.requested_fraction();
  auto [run, reports] = run_method(s, method, options, {budget}, false);
  MergeReport report = reports[0];
  if (writer) {
    // Fits chosen among several candidates (the planner's) were measured,
    // not kept: fitted again with the options they were measured with, so
    // the bundle is the fit the report measured.
    std::vector<StructureSpec> specs;
    for (size_t m = 0; m < run.table.size(); ++m) specs.push_back(run.table[m][run.choice[0][m]].spec);
    if (method.info.kind != MethodKind::kSingleAdapter) s.expect_layout(specs);  // none written yet
    engine::for_each_item(s.mine(), s.threads(), options.progress, [&](size_t m) {
      if (writer->has_module(m)) return;
      if (method.info.kind == MethodKind::kSingleAdapter) throw Error("internal: a merged module was not written");
      const Evaluated& e = run.table[m][run.choice[0][m]];
      const auto& mod = set.modules()[m];
      const ModuleProblem p = s.problem(m);
      FitOptions as_evaluated = run.fit;
      as_evaluated.max_iters = e.max_iters;
      ModuleFitter fitter(p, as_evaluated);
      ModuleFit fit = fitter.fit(e.spec).rounded(s.dtype());
      writer->write_module(m, {mod.name, mod.in, mod.out, e.spec, std::move(fit), {}});  // sha256: set by the writer
    }, Spread::kInside);
    // The other ranks' modules come to rank 0, one at a time.
    dist::stream_to_root(
        s.owner(), [&](size_t m) { return writer->encoded_module(m); },
        [&](size_t m, std::string& message) { writer->write_encoded(m, message); });
    dist::checked([&] {
      if (root) writer->finish(bundle_header(set, s, options, report, budget));
    });
  }
  report.seconds = seconds_since(t0);
  return report;
}

std::vector<MergeReport> sweep(const AdapterSet& set, const std::vector<std::string>& method_names,
                               const std::vector<double>& budgets, const MergeOptions& options) {
  if (dist::size() > 1) throw Error("sweep runs in one process: start it without mpirun (or with -np 1)");
  if (method_names.empty()) throw Error("no methods to sweep");
  if (budgets.empty()) throw Error("no budgets to sweep");
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
