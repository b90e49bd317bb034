#include "plan/registry.h"

#include <mutex>

#include "hydraopt/error.h"
#include "methods/baselines.h"

namespace hydraopt {

namespace {

std::vector<MethodParam> public_params(const std::vector<ParamSpec>& specs) {
  std::vector<MethodParam> out;
  for (auto& p : specs) {
    const char* type = p.type == ParamSpec::Type::kInteger ? "integer" : p.type == ParamSpec::Type::kReal ? "real" : "choice";
    out.push_back({p.name, p.default_value, p.help, type, p.range()});
  }
  return out;
}

// Every single-adapter merge is the same run: one merged adapter per
// module, the same at every budget.
Method single_merge_method(const SingleMerge& sm) {
  Method m;
  m.info = {sm.name, MethodKind::kSingleAdapter, true, false, sm.summary, sm.reference, {}};
  m.params = sm.params;
  m.run = [name = sm.name](MethodContext& ctx, const Params& params, Budgets b) {
    const MergeParams mp = merge_params(params);
    EvalTable t = ctx.evaluate_merged([&](const ModuleProblem& p, const ModuleMetric* metric, size_t module) {
      return merge_single(name, p, mp, module, metric);
    });
    return same_at_every_budget(std::move(t), b, ctx.fit_defaults());
  };
  return m;
}

std::vector<Method> build() {
  std::vector<Method> table = structure_methods();
  for (const SingleMerge& sm : single_merges()) table.push_back(single_merge_method(sm));
  for (Method& m : table) m.info.params = public_params(m.params);
  return table;
}

std::string known_methods() {
  std::string s;
  for (auto& m : registry()) s += (s.empty() ? "" : ", ") + m.info.name;
  return s;
}

}  // namespace

const std::vector<Method>& registry() {
  static std::once_flag once;
  static std::vector<Method> table;
  std::call_once(once, [] { table = build(); });
  return table;
}

const Method& method_named(const std::string& name) {
  for (const auto& m : registry()) {
    if (m.info.name == name) return m;
  }
  throw Error("unknown method '" + name + "' (known: " + known_methods() + ")");
}

MethodRun same_at_every_budget(EvalTable table, const Budgets& b, const FitOptions& fo) {
  MethodRun run;
  run.table = std::move(table);
  run.budgets = b.fractions;
  run.choice.assign(b.fractions.size(), std::vector<size_t>(run.table.size(), 0));
  run.fit = fo;
  return run;
}

// The public views (hydraopt/merge.h).

const std::vector<MethodInfo>& methods() {
  static const std::vector<MethodInfo> infos = [] {
    std::vector<MethodInfo> v;
    for (auto& m : registry()) v.push_back(m.info);
    return v;
  }();
  return infos;
}

const MethodInfo* find_method(const std::string& name) {
  for (const auto& m : methods()) {
    if (m.name == name) return &m;
  }
  return nullptr;
}

}  // namespace hydraopt
