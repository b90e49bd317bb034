// The per-task structure methods: hydraopt (the planner), the hydra point,
// the naive hydra and the joint-diagonalisation forms. Each is a registry
// entry (plan/registry.h): a descriptor and the run that says which
// structure every module gets at every budget.
#include <algorithm>
#include <optional>
#include <set>

#include "hydraopt/error.h"
#include "plan/planner.h"
#include "core/quant.h"
#include "plan/registry.h"

namespace hydraopt {

namespace {

ParamSpec max_iters_param() {
  return integer_param("max_iters", "30", "alternating least squares iterations at most");
}
ParamSpec tol_param() {
  return real_param("tol", "1e-4", "stop ALS when the objective improves by less, relatively", 0,
                    std::numeric_limits<double>::infinity());
}

FitOptions als_options(const MethodContext& ctx, const Params& params) {
  FitOptions fo = ctx.fit_defaults();
  fo.max_iters = static_cast<int>(params.integer("max_iters"));
  fo.tol = params.real("tol");
  return fo;
}

// Structures known in advance, one per module: the shared-body subspace is
// computed only as wide as that structure needs (the planner's default,
// 4r, serves all its candidates with one solve).
FitOptions for_known_structures(FitOptions fo) {
  fo.body_width = 1;
  return fo;
}

// Runs that keep only the budgets `feasible` accepts (or rethrow its error).
void keep_feasible(Budgets* b, const std::function<void(int64_t)>& feasible) {
  Budgets kept{{}, {}, b->skip_infeasible, b->unit};
  for (size_t i = 0; i < b->limits.size(); ++i) {
    try {
      feasible(b->limits[i]);
    } catch (const Error&) {
      if (!b->skip_infeasible) throw;
      continue;
    }
    kept.fractions.push_back(b->fractions[i]);
    kept.limits.push_back(b->limits[i]);
  }
  *b = std::move(kept);
}

// ------------------------------------------------------------ hydra points

MethodRun run_hydra(MethodContext& ctx, const Params&, Budgets b) {
  const FitOptions fo = for_known_structures(ctx.fit_defaults());
  auto table = ctx.evaluate(
      [](size_t, const ModuleShape& shape) {
        return std::vector<CandidateSpec>{{{Family::kSharedA, std::max<int64_t>(1, shape.max_rank()), 0}, "shared-A", {}}};
      },
      fo, Store::kFinal, ctx.streaming_spread());
  return same_at_every_budget(std::move(table), b, fo);
}

MethodRun run_hydra_avg(MethodContext& ctx, const Params&, Budgets b) {
  const FitOptions fo = for_known_structures(ctx.fit_defaults());
  auto table = ctx.evaluate(
      [&](size_t m, const ModuleShape& shape) {
        StructureSpec sp{Family::kAvgA, 0, 0};
        if (!spec_valid(sp, shape)) throw Error(ctx.module_name(m) + ": hydra-avg needs every task at one rank here");
        return std::vector<CandidateSpec>{{sp, "avg-A", {}}};
      },
      fo, Store::kFinal, Spread::kInside);
  return same_at_every_budget(std::move(table), b, fo);
}

// -------------------------------------------------- joint diagonalisation

// What budget fractions are of: the original parameter count, or a bf16
// copy's bytes.
double whole(const MethodContext& ctx, BudgetUnit unit) {
  return static_cast<double>(ctx.original_params()) * (unit == BudgetUnit::kBytes ? 2.0 : 1.0);
}

// The uniform rank k that fills `budget` with family f (modules that cannot
// take k keep their largest valid rank).
// Storage of `s` on module m in the budget's unit, every role in the float dtype.
int64_t float_storage(const MethodContext& ctx, const StructureSpec& s, size_t m, BudgetUnit unit) {
  return unit == BudgetUnit::kBytes ? spec_bytes(s, ctx.shape(m), {}, ctx.dtype()) : spec_params(s, ctx.shape(m));
}

int64_t uniform_rank(const MethodContext& ctx, Family f, int64_t budget, BudgetUnit unit) {
  int64_t best = 0;
  for (int64_t k = 1;; ++k) {
    int64_t total = 0;
    bool any = false;
    for (size_t m = 0; m < ctx.module_count(); ++m) {
      const ModuleShape shape = ctx.shape(m);
      StructureSpec sp{f, k, 0};
      if (!spec_valid(sp, shape)) {
        for (sp.rank = k - 1; sp.rank >= 1 && !spec_valid(sp, shape); --sp.rank) {
        }
        if (sp.rank < 1) sp.rank = 1;
      } else {
        any = true;
      }
      total += float_storage(ctx, sp, m, unit);
    }
    if (total > budget) break;
    best = k;
    if (!any) break;  // every module already at its largest rank
  }
  if (best == 0) {
    int64_t total = 0;
    for (size_t m = 0; m < ctx.module_count(); ++m) total += float_storage(ctx, {f, 1, 0}, m, unit);
    throw Error(std::string("the budget is below the smallest ") + family_name(f) + " storage: fraction " +
                std::to_string(static_cast<double>(total) / whole(ctx, unit)));
  }
  return best;
}

StructureSpec clip_rank(StructureSpec sp, const ModuleShape& shape) {
  while (sp.rank > 1 && !spec_valid(sp, shape)) --sp.rank;
  return sp;
}

MethodRun run_jd(Family f, MethodContext& ctx, const Params& params, Budgets b) {
  keep_feasible(&b, [&](int64_t lim) { uniform_rank(ctx, f, lim, b.unit); });
  std::vector<int64_t> ranks;
  for (int64_t lim : b.limits) ranks.push_back(uniform_rank(ctx, f, lim, b.unit));
  const std::set<int64_t> distinct(ranks.begin(), ranks.end());
  MethodRun run;
  run.fit = als_options(ctx, params);
  run.budgets = b.fractions;
  run.table = ctx.evaluate(
      [&](size_t, const ModuleShape& shape) {
        std::vector<CandidateSpec> v;
        for (int64_t k : distinct) v.push_back({clip_rank({f, k, 0}, shape), std::to_string(k), {}});
        return v;
      },
      run.fit, Store::kFinal, Spread::kInside);
  for (int64_t k : ranks) {
    const auto idx = static_cast<size_t>(std::distance(distinct.begin(), distinct.find(k)));
    run.choice.emplace_back(run.table.size(), idx);
  }
  return run;
}

// ------------------------------------------------- quantization baseline

ParamSpec quant_format_param() {
  std::vector<std::string> words{"auto"};
  for (const QuantFormat& f : all_quant_formats()) words.push_back(f.name());
  return choice_param("quant_format", "auto",
                      "the quantization baseline's format; auto: at each byte budget the format of least error that fits",
                      words);
}

// Every adapter kept, its A and B each stored in one integer format,
// rounded to nearest on its own (no refit): what a plain per-adapter
// quantizer stores. Every format stores every number, so a budget in
// stored numbers is met only at 1; with byte budgets "auto" takes, per
// budget, the format of least measured error that fits (one format for
// the whole set, as such a quantizer is run).
MethodRun run_quant(MethodContext& ctx, const Params& params, Budgets b) {
  const std::string chosen = params.text("quant_format");
  const std::vector<QuantFormat> formats =
      chosen == "auto" ? all_quant_formats() : std::vector<QuantFormat>{parse_quant_format(chosen, "--quant-format")};
  auto stored = [](const std::vector<QuantFormat>& list) {
    return [list](const ModuleProblem& p, size_t) {
      ModuleFitter fitter(p, {});
      const StructureSpec exact{Family::kExact, 0, 0};
      const ModuleFit fit = fitter.fit(exact);
      std::vector<StoredFit> out;
      for (const QuantFormat& f : list) {
        ModuleFit q = fit;
        for (auto& h : q.heads) h = round_to_format(h, f);
        for (auto& a : q.bodies) a = round_to_format(a, f);
        out.push_back({{exact, f.name(), Precision{f, f, std::nullopt}}, std::move(q)});
      }
      return out;
    };
  };
  MethodRun run;
  run.fit = ctx.fit_defaults();
  run.table = ctx.evaluate_stored(stored(formats), formats.size() == 1 && b.limits.size() == 1);
  // Totals per format (the same index in every module).
  std::vector<int64_t> storage(formats.size(), 0);
  std::vector<double> error(formats.size(), 0.0);
  for (const auto& module : run.table) {
    for (size_t j = 0; j < formats.size(); ++j) {
      storage[j] += module[j].storage(b.unit);
      error[j] += module[j].error;
    }
  }
  std::vector<size_t> best;
  Budgets kept{{}, {}, b.skip_infeasible, b.unit};
  for (size_t i = 0; i < b.limits.size(); ++i) {
    std::optional<size_t> pick;
    for (size_t j = 0; j < formats.size(); ++j) {
      if (storage[j] <= b.limits[i] && (!pick || error[j] < error[*pick])) pick = j;
    }
    if (!pick) {
      if (b.skip_infeasible) continue;
      const size_t least = static_cast<size_t>(std::min_element(storage.begin(), storage.end()) - storage.begin());
      const char* unit = b.unit == BudgetUnit::kBytes ? "bytes" : "stored numbers (it keeps every number: give a byte budget)";
      throw Error("quant: the budget of " + std::to_string(b.limits[i]) + " " + unit + " is below its least storage, " +
                  std::to_string(storage[least]) + " (" + formats[least].name() + ")");
    }
    kept.fractions.push_back(b.fractions[i]);
    kept.limits.push_back(b.limits[i]);
    best.push_back(*pick);
  }
  run.budgets = kept.fractions;
  for (size_t j : best) run.choice.emplace_back(run.table.size(), j);
  // One budget: store the chosen format (the others were only measured).
  if (formats.size() > 1 && best.size() == 1) {
    run.table = ctx.evaluate_stored(stored({formats[best[0]]}), true);
    run.choice.assign(1, std::vector<size_t>(run.table.size(), 0));
  }
  return run;
}

// ---------------------------------------------------------------- planner

std::vector<std::vector<Candidate>> to_candidates(const EvalTable& ev, BudgetUnit unit) {
  std::vector<std::vector<Candidate>> t(ev.size());
  for (size_t m = 0; m < ev.size(); ++m) {
    for (auto& e : ev[m]) t[m].push_back({e.spec, e.key, e.storage(unit), e.error});
  }
  return t;
}

void check_floor(const MethodContext& ctx, const std::vector<std::vector<Candidate>>& table, int64_t budget,
                 BudgetUnit unit) {
  const int64_t floor = plan_min_storage(table);
  if (floor > budget) {
    const double all = whole(ctx, unit);
    const char* of = unit == BudgetUnit::kBytes ? " of a bf16 copy's bytes" : " of the parameters";
    throw Error("budget fraction " + std::to_string(static_cast<double>(budget) / all) + of +
                " is below the smallest achievable storage, fraction " + std::to_string(static_cast<double>(floor) / all));
  }
}

// The structures of a --plan file (and their roles' integer formats),
// fitted as given.
MethodRun run_hand_plan(MethodContext& ctx, const HandPlan& hand, const FitOptions& fo, const Budgets& b) {
  std::vector<CandidateSpec> specs;
  for (size_t m = 0; m < ctx.module_count(); ++m) {
    auto it = hand.specs.find(ctx.module_name(m));
    if (it == hand.specs.end()) throw Error(hand.file, ctx.module_name(m), "module has no entry in the plan");
    const auto& [spec, precision] = it->second;
    if (!spec_valid(spec, ctx.shape(m))) {
      throw Error(hand.file, ctx.module_name(m), "structure " + spec.label() + " does not fit this module");
    }
    const auto shapes = spec_matrices(spec, ctx.shape(m));
    for (const Role r : {Role::kHeads, Role::kBodies, Role::kCores}) {
      if (precision.of(r) && std::none_of(shapes.begin(), shapes.end(), [r](const StoredShape& x) { return x.role == r; })) {
        throw Error(hand.file, ctx.module_name(m),
                    std::string("precision of ") + role_name(r) + ", which structure " + spec.label() + " does not store");
      }
    }
    specs.push_back({spec, "plan", precision});
  }
  const FitOptions known = for_known_structures(fo);
  auto table = ctx.evaluate([&](size_t m, const ModuleShape&) { return std::vector<CandidateSpec>{specs[m]}; }, known,
                            Store::kFinal, Spread::kInside);
  int64_t total = 0;
  for (auto& e : table) total += e[0].storage(b.unit);
  const char* units = b.unit == BudgetUnit::kBytes ? " bytes" : " numbers";
  for (int64_t limit : b.limits) {
    if (ctx.budget_given() && total > limit) {
      throw Error(hand.file, "", "the plan stores " + std::to_string(total) + units + ", over the budget of " +
                                     std::to_string(limit));
    }
  }
  return same_at_every_budget(std::move(table), b, known);
}

// Plans on predicted errors, writes measured ones.
//  1. Every candidate's error is predicted (Predictor::predict: the
//     closed-form starts' errors after rounding) from two Grams of the
//     module's stacked factors, an eigenproblem of their size per side and
//     small products: no fit.
//  2. The plans are made on the predictions. The chosen candidates that ALS
//     refines (grouped heads and cores, jd) are fitted with ALS and
//     measured, and the plans redone, at most kRounds times. With one
//     budget each such fit goes into the bundle at once (a later round's
//     choice replaces it), so the chosen ones are not fitted twice.
//  3. The chosen candidates not yet measured, or measured but not stored,
//     are fitted and measured (with one budget, straight into the bundle):
//     the report gives what is stored.
MethodRun run_planner(MethodContext& ctx, const Params& params, Budgets b) {
  const FitOptions fo = als_options(ctx, params);
  if (const HandPlan* hand = ctx.hand_plan()) return run_hand_plan(ctx, *hand, fo, b);
  constexpr int kRounds = 3;
  MethodRun run;
  // With a budget in bytes every structure comes in every precision.
  run.table = ctx.predict(
      [&](size_t, const ModuleShape& shape) {
        auto specs = candidate_specs(shape, ctx.share(), ctx.user_group_count());
        return b.unit == BudgetUnit::kBytes ? with_precisions(specs) : specs;
      },
      fo);
  EvalTable& ev = run.table;
  keep_feasible(&b, [&](int64_t lim) { check_floor(ctx, to_candidates(ev, b.unit), lim, b.unit); });
  // The chosen structures are fitted with their shared subspaces solved
  // only as wide as each needs (the predictions solved the widest, 4r).
  run.fit = for_known_structures(fo);
  const bool one_budget = b.limits.size() == 1;
  std::vector<std::optional<size_t>> stored(ev.size());  // with one budget: the candidate in the bundle
  auto measure = [&](const std::vector<std::vector<size_t>>& todo, Store store) {
    auto measured = ctx.evaluate(
        [&](size_t m, const ModuleShape&) {
          std::vector<CandidateSpec> v;
          for (size_t c : todo[m]) v.push_back({ev[m][c].spec, ev[m][c].key, ev[m][c].precision});
          return v;
        },
        run.fit, one_budget ? store : Store::kNo, Spread::kAcross);
    for (size_t m = 0; m < ev.size(); ++m) {
      for (size_t j = 0; j < todo[m].size(); ++j) ev[m][todo[m][j]] = std::move(measured[m][j]);
      if (one_budget && todo[m].size() == 1) stored[m] = todo[m][0];
    }
  };
  std::vector<PlanResult> plans;
  for (int round = 0;; ++round) {
    plans = plan_budgets(to_candidates(ev, b.unit), b.limits);
    if (round == kRounds) break;
    std::vector<std::vector<size_t>> todo(ev.size());
    bool any = false;
    for (size_t m = 0; m < ev.size(); ++m) {
      for (size_t c = 0; c < ev[m].size(); ++c) {
        const Evaluated& e = ev[m][c];
        if (e.measured || !spec_refinable(e.spec, ctx.task_count())) continue;
        if (std::any_of(plans.begin(), plans.end(), [&](const PlanResult& p) { return p.choice[m] == c; })) {
          todo[m].push_back(c);
          any = true;
        }
      }
    }
    if (!any) break;
    measure(todo, Store::kReplace);
  }
  std::vector<std::vector<size_t>> todo(ev.size());
  for (size_t m = 0; m < ev.size(); ++m) {
    for (const PlanResult& plan : plans) {
      const size_t c = plan.choice[m];
      const bool needed = !ev[m][c].measured || (one_budget && stored[m] != c);
      if (needed && std::find(todo[m].begin(), todo[m].end(), c) == todo[m].end()) todo[m].push_back(c);
    }
  }
  measure(todo, Store::kFinal);
  run.budgets = b.fractions;
  for (const PlanResult& plan : plans) run.choice.push_back(plan.choice);
  return run;
}

}  // namespace

std::vector<Method> structure_methods() {
  using namespace std::placeholders;
  auto method = [](const char* name, MethodKind kind, bool uses_budget, const char* summary, const char* reference,
                   std::vector<ParamSpec> params, decltype(Method::run) run) {
    return Method{{name, kind, false, uses_budget, summary, reference, {}}, std::move(params), std::move(run)};
  };
  return {
      method("hydraopt", MethodKind::kPlanner, true,
             "plans a structure per module (shared A/B bodies or heads, cores, clusters, exact) "
             "to minimise the task-weighted error within the budget",
             "this project (docs/methods.md)", {max_iters_param(), tol_param()}, run_planner),
      method("quant", MethodKind::kStructure, true,
             "the quantization baseline: every adapter kept, its A and B in group-wise integers "
             "(round to nearest, f16 scales; the format of least error that fits a byte budget)",
             "round-to-nearest group-wise quantization, as in llama.cpp's Q8_0/Q4_0 blocks", {quant_format_param()},
             run_quant),
      method("hydra", MethodKind::kStructure, false,
             "the hydra point: one optimal shared A of rank r per module, a head per task (closed form)",
             "this project (docs/methods.md); the fixed structure hydraopt's planner starts from", {}, run_hydra),
      method("hydra-avg", MethodKind::kStructure, false, "naive hydra: the mean of the A's shared, each task's B kept",
             "HydraLoRA-style sharing (Tian et al., 2024), without optimisation", {}, run_hydra_avg),
      method("jd-full", MethodKind::kStructure, true,
             "shared U, V with a full k x k core per task (Tucker/HOOI); k fills the budget",
             "De Lathauwer et al., 2000 (HOOI)", {max_iters_param(), tol_param()},
             std::bind(run_jd, Family::kJdFull, _1, _2, _3)),
      method("jd-diag", MethodKind::kStructure, true,
             "shared U, V with a diagonal core per task (ALS); k fills the budget",
             "joint diagonalisation / INDSCAL (Carroll & Chang, 1970)", {max_iters_param(), tol_param()},
             std::bind(run_jd, Family::kJdDiag, _1, _2, _3)),
  };
}

}  // namespace hydraopt
