// merge() and sweep(): options -> weights -> candidates -> plan -> fits ->
// report (and bundle). Work is done module by module, in parallel over
// modules; each module's result depends only on its inputs, so the output
// is the same whatever the thread count.
//
// Under MPI (dist::size() > 1, merge() only) each rank loads and fits its
// own modules (Session::mine_); the per-module norms and evaluated
// candidates are exchanged so every rank plans on the whole table, and the
// fitted modules travel to rank 0, which writes the bundle. Every step that
// can fail on one rank and not another ends in a dist::check, so all ranks
// stop together. With one rank the exchanges do nothing.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "hydraopt/error.h"
#include "hydraopt/merge.h"
#include "dist/dist.h"
#include "io/bundle.h"
#include "methods/baselines.h"
#include "methods/structures.h"
#include "plan/candidates.h"
#include "plan/planner.h"
#include "util/blas_threads.h"
#include "util/parallel.h"
#include "util/wire.h"

namespace hydraopt {

namespace fs = std::filesystem;
using nlohmann::json;
using nlohmann::ordered_json;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double parse_number(const std::string& name, const std::string& v) {
  try {
    size_t pos = 0;
    double d = std::stod(v, &pos);
    if (pos == v.size() && std::isfinite(d)) return d;
  } catch (...) {
  }
  throw Error("parameter " + name + "=" + v + " is not a number");
}

std::string known_methods() {
  std::string s;
  for (auto& m : methods()) s += (s.empty() ? "" : ", ") + m.name;
  return s;
}

json read_json_file(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path, "", std::string("cannot open ") + what);
  try {
    return json::parse(in);
  } catch (const std::exception& e) {
    throw Error(path, "", std::string(what) + " is not valid JSON: " + e.what());
  }
}

// Where for_modules puts its threads: on several modules at once, or on
// the loops inside one module at a time (util::parallel_for), which keeps
// one module's factors in memory instead of one per thread. The planner,
// with dozens of candidates per module, spreads across; the streamed hydra
// point across while memory allows (Session::spread_); other work with one
// structure per module inside. (The sources' scan spreads across tasks.)
enum class Spread { kAcross, kInside };
// A plan entry's "rank" / "groups": an integer in 0..hi, or `fallback` when
// absent. (json's value<int>() would convert 1e300 with undefined
// behaviour, and wrap large integers.)
int64_t plan_int(const json& e, const char* key, int64_t fallback, int64_t hi, const std::string& file) {
  auto it = e.find(key);
  if (it == e.end()) return fallback;
  const bool ok = it->is_number_unsigned() ? it->get<uint64_t>() <= static_cast<uint64_t>(hi)
                                           : it->is_number_integer() && it->get<int64_t>() >= 0 && it->get<int64_t>() <= hi;
  if (!ok) throw Error(file, "", std::string("plan entry ") + key + " must be an integer in 0.." + std::to_string(hi));
  return it->is_number_unsigned() ? static_cast<int64_t>(it->get<uint64_t>()) : it->get<int64_t>();
}

// Runs body(m) for the modules `mods` (ascending: this rank's) on `threads`
// threads, BLAS single-threaded; then, across ranks, rethrows the failure
// of the lowest module index (dist::check). Also used for tasks.
template <typename Body>
void for_modules(const std::vector<size_t>& mods, int threads, const std::function<void(size_t, size_t)>& progress,
                 Body&& body, Spread spread = Spread::kAcross) {
  util::single_threaded_blas();
  const size_t count = mods.size();
  std::vector<std::exception_ptr> errors(count);
  std::mutex mu;
  size_t done = 0;
  const util::InnerThreads inner(spread == Spread::kInside ? threads : 1);
#pragma omp parallel for num_threads(spread == Spread::kInside ? 1 : threads) schedule(dynamic)
  for (size_t k = 0; k < count; ++k) {
    try {
      body(mods[k]);
    } catch (...) {
      errors[k] = std::current_exception();
    }
    if (progress) {
      std::lock_guard<std::mutex> lock(mu);
      progress(++done, count);
    }
  }
  for (size_t k = 0; k < count; ++k) {
    if (errors[k]) return dist::check(errors[k], static_cast<long>(mods[k]));
  }
  dist::check(nullptr);
}

// The indices i < count with i % dist::size() == dist::rank().
std::vector<size_t> my_share(size_t count) {
  std::vector<size_t> out;
  for (size_t i = static_cast<size_t>(dist::rank()); i < count; i += static_cast<size_t>(dist::size())) out.push_back(i);
  return out;
}

// Single-adapter merge parameters from validated name -> value strings.
MergeParams merge_params(const std::map<std::string, std::string>& params) {
  MergeParams mp;
  auto get = [&](const char* k) -> const std::string* {
    auto it = params.find(k);
    return it == params.end() ? nullptr : &it->second;
  };
  if (auto* v = get("density")) mp.density = parse_number("density", *v);
  if (auto* v = get("sign_method")) mp.sign_method = *v;
  if (auto* v = get("seed")) mp.seed = static_cast<uint64_t>(parse_number("seed", *v));
  if (auto* v = get("lambda"); v && *v != "1/N") mp.lambda = parse_number("lambda", *v);
  if (auto* v = get("rank")) mp.rank = static_cast<int64_t>(parse_number("rank", *v));
  return mp;
}

// One evaluated structure on one module.
struct Evaluated {
  StructureSpec spec;
  std::string key;
  int64_t params = 0;
  double error = 0;               // weighted, after rounding
  std::vector<double> task_err2;  // per task, after rounding
  int max_iters = 0;              // ALS iterations allowed in the fit
};

class Session {
 public:
  // With `hash_sources`, the sources' SHA-256 too (sha_), for a bundle.
  Session(const AdapterSet& set, const MergeOptions& o, bool hash_sources)
      : set_(set), o_(o), t0_(std::chrono::steady_clock::now()) {
    // By default the node's cores, shared among the ranks on it.
    threads_ = o.threads > 0 ? o.threads
                             : std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / dist::local_size());
    dtype_ = o.dtype.value_or(set.dtype());
    if (o.share == "A") share_ = Share::kA;
    else if (o.share == "B") share_ = Share::kB;
    else if (o.share == "auto") share_ = Share::kAuto;
    else throw Error("--share must be A, B or auto, not '" + o.share + "'");
    if (o.budget && o.budget_bytes) throw Error("give --budget or --budget-bytes, not both");
    if (o.budget && !(*o.budget > 0 && *o.budget <= 1)) {
      throw Error("--budget must be a fraction in (0, 1], got " + std::to_string(*o.budget));
    }
    if (o.budget_bytes && *o.budget_bytes <= 0) throw Error("--budget-bytes must be positive");
    original_ = set.original_params();
    partition_modules();
    choose_spread();
    dist::checked([&] { load_groups(); });
    scan_sources(hash_sources);
    dist::checked([&] { compute_weights(); });
  }

  const MethodInfo& method(const std::string& name, std::map<std::string, std::string>* params) const {
    const MethodInfo* m = find_method(name);
    if (!m) throw Error("unknown method '" + name + "' (known: " + known_methods() + ")");
    for (auto& p : m->params) (*params)[p.name] = p.default_value;
    for (auto& [k, v] : o_.params) {
      auto it = std::find_if(m->params.begin(), m->params.end(), [&](const MethodParam& p) { return p.name == k; });
      if (it == m->params.end()) {
        std::string names;
        for (auto& p : m->params) names += (names.empty() ? "" : ", ") + p.name;
        throw Error("method " + name + " has no parameter '" + k + "'" +
                    (names.empty() ? " (it takes none)" : " (it takes: " + names + ")"));
      }
      (*params)[k] = v;
    }
    for (auto& [k, v] : *params) {
      if (k == "sign_method") {
        if (v != "total" && v != "frequency") throw Error("sign_method must be total or frequency, not '" + v + "'");
      } else if (!(k == "lambda" && v == "1/N")) {
        double d = parse_number(k, v);
        if (k == "density" && !(d > 0 && d <= 1)) throw Error("density must be in (0, 1]");
        if ((k == "max_iters" || k == "rank" || k == "seed") && (d < 0 || d != std::floor(d))) {
          throw Error(k + " must be a non-negative integer");
        }
        if (k == "tol" && d < 0) throw Error("tol must be non-negative");
      }
    }
    return *m;
  }

  // Stored-number budget for a requested fraction (or the byte budget).
  int64_t budget_params(double fraction) const {
    return static_cast<int64_t>(std::floor(fraction * static_cast<double>(original_) + 1e-9));
  }
  double requested_fraction() const {
    if (o_.budget_bytes) return static_cast<double>(*o_.budget_bytes / dtype_size(dtype_)) / original_;
    return o_.budget.value_or(0.5);
  }

  // Candidates (hydraopt) or fixed specs, evaluated on every module (a
  // module given no specs is skipped), threads spread by `spread`. With
  // `final`, a module's only spec is its result: it goes to the bundle
  // writer, if any, at once.
  std::vector<std::vector<Evaluated>> evaluate_all(const std::function<std::vector<CandidateSpec>(size_t, const ModuleShape&)>& specs,
                                                   const FitOptions& fo, bool final, Spread spread) {
    const size_t nm = set_.modules().size();
    std::vector<std::vector<Evaluated>> out(nm);
    // Every module's specs, on every rank: with one per module the bundle's
    // layout is known before any is fitted.
    std::vector<std::vector<CandidateSpec>> lists(nm);
    dist::checked([&] {
      for (size_t m = 0; m < nm; ++m) lists[m] = specs(m, shape(m));
    });
    if (final && std::all_of(lists.begin(), lists.end(), [](const auto& l) { return l.size() == 1; })) {
      std::vector<StructureSpec> only;
      for (const auto& l : lists) only.push_back(l[0].spec);
      expect_layout(only);
    }
    for_modules(mine_, threads_, o_.progress, [&](size_t m) {
      const auto& mod = set_.modules()[m];
      const auto& list = lists[m];
      if (list.empty()) return;
      if (final && list.size() == 1 && per_task_heads(list[0].spec, set_.size())) {
        std::vector<double> err2;
        ModuleFit stored = fit_shared_heads({mod.in, mod.out, mod.ranks}, weights_, [&](size_t i) { return set_.load_transposed(m, i); },
                                            list[0].spec, fo, dtype_, norms2_[m], &err2);
        out[m].push_back(record(m, std::move(stored), std::move(err2), list[0], true, fo.max_iters));
        return;
      }
      ModuleProblem p = problem(m);
      ModuleFitter fitter(p, fo);
      for (auto& cs : list) {
        out[m].push_back(evaluate(p, m, fitter.fit(cs.spec), cs, final && list.size() == 1, fo.max_iters));
      }
    }, spread);
    share(out);
    return out;
  }

  // Completes ev (filled on this rank's modules) with the other ranks'
  // modules, bit for bit.
  void share(std::vector<std::vector<Evaluated>>& ev) const {
    if (dist::size() == 1) return;
    std::string mine;
    util::WireWriter put(mine);
    for (size_t m : mine_) {
      put.put<uint64_t>(m);
      put.put<uint64_t>(ev[m].size());
      for (const Evaluated& e : ev[m]) {
        put.put<int32_t>(static_cast<int32_t>(e.spec.family));
        put.put<int64_t>(e.spec.rank);
        put.put<int32_t>(e.spec.groups);
        put.put(e.key);
        put.put<int64_t>(e.params);
        put.put<double>(e.error);
        put.put(e.task_err2);
        put.put<int32_t>(e.max_iters);
      }
    }
    const auto all = dist::allgather(mine);
    for (size_t r = 0; r < all.size(); ++r) {
      if (static_cast<int>(r) == dist::rank()) continue;
      util::WireReader get(all[r]);
      while (!get.done()) {
        auto& list = ev.at(get.get<uint64_t>());
        for (uint64_t n = get.get<uint64_t>(); n > 0; --n) {
          Evaluated e;
          e.spec.family = static_cast<Family>(get.get<int32_t>());
          e.spec.rank = get.get<int64_t>();
          e.spec.groups = get.get<int32_t>();
          e.key = get.get_string();
          e.params = get.get<int64_t>();
          e.error = get.get<double>();
          e.task_err2 = get.get_vector<double>();
          e.max_iters = get.get<int32_t>();
          list.push_back(std::move(e));
        }
      }
    }
  }

  Evaluated evaluate(const ModuleProblem& p, size_t m, ModuleFit fit, const CandidateSpec& cs, bool store,
                     int max_iters) const {
    ModuleFit stored = std::move(fit).rounded(dtype_);
    std::vector<double> err2 = fit_errors2(p, stored, &norms2_[m]);
    return record(m, std::move(stored), std::move(err2), cs, store, max_iters);
  }

  // A rounded fit and its per-task errors; with `store`, the fit goes to
  // the bundle writer.
  Evaluated record(size_t m, ModuleFit stored, std::vector<double> task_err2, const CandidateSpec& cs, bool store,
                   int max_iters) const {
    Evaluated e{cs.spec, cs.key, stored.params(), 0, std::move(task_err2), max_iters};
    for (size_t i = 0; i < e.task_err2.size(); ++i) e.error += weights_[i] * e.task_err2[i];
    if (store && writer_) {  // the module's result: store it now, keep nothing
      const auto& mod = set_.modules()[m];
      writer_->write_module(m, {mod.name, mod.in, mod.out, cs.spec, std::move(stored), {}});  // sha256: set by the writer
    }
    return e;
  }

  // Every module's structure known before any is written: the bundle's
  // layout is fixed, and fitted modules go straight to their places
  // (BundleWriter::expect). Not with a groups file, whose group count the
  // fits follow over the spec's. expect() creates the output file, so
  // every rank checks.
  void expect_layout(const std::vector<StructureSpec>& specs) const {
    dist::checked([&] {
      if (!writer_ || !o_.groups_file.empty()) return;
      for (size_t m = 0; m < specs.size(); ++m) {
        if (writer_->has_module(m)) return;
      }
      std::vector<int64_t> params;
      for (size_t m = 0; m < specs.size(); ++m) params.push_back(spec_params(specs[m], shape(m)));
      writer_->expect(params);
    });
  }

  ModuleShape shape(size_t m) const {
    const auto& mod = set_.modules()[m];
    return {mod.in, mod.out, mod.ranks};
  }

  ModuleProblem problem(size_t m) const {
    ModuleProblem p;
    p.loras = set_.load(m);
    p.weights = weights_;
    return p;
  }

  FitOptions fit_options(const std::map<std::string, std::string>& params) const {
    FitOptions fo;
    if (params.count("max_iters")) fo.max_iters = static_cast<int>(parse_number("max_iters", params.at("max_iters")));
    if (params.count("tol")) fo.tol = parse_number("tol", params.at("tol"));
    fo.user_groups = user_groups_;
    return fo;
  }

  MergeReport report(const std::string& method, double budget, const std::vector<const Evaluated*>& chosen,
                     const std::map<std::string, std::string>& params, double seconds) const {
    MergeReport r;
    r.method = method;
    r.budget = budget;
    r.original_params = original_;
    r.params_used = params;
    std::vector<double> err(set_.size(), 0.0);
    ordered_json plan = ordered_json::array();
    for (size_t m = 0; m < chosen.size(); ++m) {
      r.params += chosen[m]->params;
      for (size_t i = 0; i < err.size(); ++i) err[i] += chosen[m]->task_err2[i];
      const auto& mod = set_.modules()[m];
      plan.push_back(ordered_json::parse(io::plan_entry_json(mod.name, mod.in, mod.out, chosen[m]->spec, chosen[m]->params)));
    }
    r.plan_json = plan.dump();
    r.bytes = r.params * static_cast<int64_t>(dtype_size(dtype_));
    r.fraction = static_cast<double>(r.params) / static_cast<double>(original_);
    double sum = 0;
    for (size_t i = 0; i < err.size(); ++i) {
      const double rel = relative_error(err[i], total_norm2_[i]);
      r.tasks.push_back({set_.task(i).name(), rel});
      sum += rel;
    }
    r.mean_rel_error = sum / static_cast<double>(err.size());
    r.seconds = seconds;
    return r;
  }

  const AdapterSet& set_;
  const MergeOptions& o_;
  std::chrono::steady_clock::time_point t0_;
  int threads_ = 1;
  Spread spread_ = Spread::kInside;  // for the streamed hydra point: see choose_spread
  DType dtype_ = DType::F32;
  Share share_ = Share::kAuto;
  int64_t original_ = 0;
  std::vector<int> user_groups_;
  int user_group_count_ = 0;
  std::vector<std::vector<double>> norms2_;  // [module][task]
  std::vector<int> owner_;                   // [module] the rank that fits it
  std::vector<size_t> mine_;                 // this rank's modules, ascending
  std::vector<double> total_norm2_, weights_;
  std::vector<std::string> sha_;             // [task] the sources' SHA-256, when asked
  /// merge() with a bundle: single-candidate modules are written here as
  /// soon as they are fitted.
  io::BundleWriter* writer_ = nullptr;

 private:
  void load_groups() {
    if (o_.groups_file.empty()) return;
    json j = read_json_file(o_.groups_file, "groups file");
    if (!j.is_array()) throw Error(o_.groups_file, "", "groups file must be a list of lists of task names");
    std::map<std::string, int> label;
    int g = 0;
    for (auto& group : j) {
      if (!group.is_array() || group.empty()) throw Error(o_.groups_file, "", "each group must be a non-empty list");
      for (auto& name : group) {
        if (!name.is_string()) throw Error(o_.groups_file, "", "task names must be strings");
        if (!label.emplace(name.get<std::string>(), g).second) {
          throw Error(o_.groups_file, "", "task '" + name.get<std::string>() + "' is in two groups");
        }
      }
      ++g;
    }
    for (auto& t : set_.tasks()) {
      auto it = label.find(t.name());
      if (it == label.end()) throw Error(o_.groups_file, "", "task '" + t.name() + "' is in no group");
      user_groups_.push_back(it->second);
    }
    if (label.size() != set_.size()) throw Error(o_.groups_file, "", "groups name tasks that are not being merged");
    user_group_count_ = g;
  }

  // For the streamed hydra point (fit_shared_heads), which holds at most a
  // module's factors in double, or its single-precision stack and heads:
  // threads across modules are faster (no synchronisation inside a module,
  // no serial steps) but hold that per thread. Across, then, while `threads` modules' factors in double
  // take at most o_.across_bytes; past that (many tasks, wide modules)
  // inside one module at a time, so memory stays that of one module.
  void choose_spread() {
    double largest = 0;
    for (const auto& m : set_.modules()) largest = std::max(largest, 8.0 * factor_count(m));
    spread_ = threads_ * largest <= o_.across_bytes ? Spread::kAcross : Spread::kInside;
  }

  // Numbers in a module's factors over all tasks: sum_i r_i (in + out).
  static double factor_count(const AdapterSet::Module& m) {
    return static_cast<double>(m.in + m.out) * static_cast<double>(ModuleShape{m.in, m.out, m.ranks}.rank_sum());
  }

  // Modules over ranks, balanced by the size of their factors.
  void partition_modules() {
    std::vector<double> cost;
    for (const auto& m : set_.modules()) cost.push_back(factor_count(m));
    owner_ = dist::partition(cost, dist::size());
    for (size_t m = 0; m < owner_.size(); ++m) {
      if (owner_[m] == dist::rank()) mine_.push_back(m);
    }
  }

  // Every task's update norms on every module and, with `hash`, its
  // source's checksum: one pass over each file in byte order (each tensor
  // converted while its bytes are in cache from hashing), threads across
  // tasks, tasks shared out over the ranks.
  void scan_sources(bool hash) {
    const size_t nm = set_.modules().size(), n = set_.size();
    norms2_.assign(nm, std::vector<double>(n, 0.0));
    sha_.assign(n, "");
    const std::vector<size_t> my_tasks = my_share(n);
    for_modules(my_tasks, threads_, nullptr, [&](size_t i) {
      const std::vector<double> col = set_.scan(i, hash ? &sha_[i] : nullptr);
      for (size_t m = 0; m < nm; ++m) norms2_[m][i] = col[m];
    });
    if (dist::size() > 1) {  // each entry is non-zero on one rank only: the sums are exact
      std::vector<double> all(nm * n, 0.0);
      for (size_t m = 0; m < nm; ++m) std::copy(norms2_[m].begin(), norms2_[m].end(), all.begin() + static_cast<ptrdiff_t>(m * n));
      dist::allreduce_sum(all);
      for (size_t m = 0; m < nm; ++m) norms2_[m].assign(all.begin() + static_cast<ptrdiff_t>(m * n), all.begin() + static_cast<ptrdiff_t>((m + 1) * n));
      if (hash) {
        std::string mine;
        util::WireWriter put(mine);
        for (size_t i : my_tasks) put.put(sha_[i]);
        const auto all_sha = dist::allgather(mine);
        for (size_t r = 0; r < all_sha.size(); ++r) {
          util::WireReader get(all_sha[r]);
          for (size_t i = r; i < n; i += all_sha.size()) sha_[i] = get.get_string();
        }
      }
    }
    total_norm2_.assign(n, 0.0);
    for (size_t m = 0; m < nm; ++m) {
      for (size_t i = 0; i < n; ++i) total_norm2_[i] += norms2_[m][i];
    }
  }

  void compute_weights() {
    const size_t n = set_.size();
    weights_.assign(n, 0.0);
    if (o_.weights == "balanced") {
      for (size_t i = 0; i < n; ++i) weights_[i] = total_norm2_[i] > 0 ? 1.0 / total_norm2_[i] : 0.0;
    } else if (o_.weights == "uniform") {
      double mean = 0;
      for (double x : total_norm2_) mean += x / static_cast<double>(n);
      for (size_t i = 0; i < n; ++i) weights_[i] = mean > 0 ? 1.0 / mean : 1.0;
    } else {
      json j = read_json_file(o_.weights, "weights file (or use balanced / uniform)");
      if (!j.is_object()) throw Error(o_.weights, "", "weights file must be an object {\"task\": weight}");
      for (size_t i = 0; i < n; ++i) {
        auto it = j.find(set_.task(i).name());
        if (it == j.end() || !it->is_number() || it->get<double>() < 0 || !std::isfinite(it->get<double>())) {
          throw Error(o_.weights, "", "needs a non-negative weight for task '" + set_.task(i).name() + "'");
        }
        // Relative to the task's size, so a weight of 1 means "as balanced".
        weights_[i] = total_norm2_[i] > 0 ? it->get<double>() / total_norm2_[i] : 0.0;
      }
      if (j.size() != n) throw Error(o_.weights, "", "weights file names tasks that are not being merged");
    }
  }
};

// The uniform rank k that fills `budget` for a fixed-structure family.
int64_t uniform_rank(const Session& s, Family f, int64_t budget) {
  const auto& mods = s.set_.modules();
  int64_t best = 0;
  for (int64_t k = 1;; ++k) {
    int64_t total = 0;
    bool any = false;
    for (const auto& m : mods) {
      ModuleShape shape{m.in, m.out, m.ranks};
      StructureSpec sp{f, k, 0};
      if (!spec_valid(sp, shape)) {
        for (sp.rank = k - 1; sp.rank >= 1 && !spec_valid(sp, shape); --sp.rank) {
        }
        if (sp.rank < 1) sp.rank = 1;
      } else {
        any = true;
      }
      total += spec_params(sp, shape);
    }
    if (total > budget) break;
    best = k;
    if (!any) break;  // every module already at its largest rank
  }
  if (best == 0) {
    int64_t total = 0;
    for (const auto& m : mods) total += spec_params({f, 1, 0}, {m.in, m.out, m.ranks});
    throw Error(std::string("the budget is below the smallest ") + family_name(f) + " storage: fraction " +
                std::to_string(static_cast<double>(total) / s.original_));
  }
  return best;
}

StructureSpec clip_rank(StructureSpec sp, const ModuleShape& shape) {
  while (sp.rank > 1 && !spec_valid(sp, shape)) --sp.rank;
  return sp;
}

void check_floor(const Session& s, const std::vector<std::vector<Candidate>>& table, int64_t budget) {
  const int64_t floor = plan_min_params(table);
  if (floor > budget) {
    throw Error("budget fraction " + std::to_string(static_cast<double>(budget) / s.original_) +
                " is below the smallest achievable storage, fraction " +
                std::to_string(static_cast<double>(floor) / s.original_));
  }
}

std::vector<std::vector<Candidate>> to_table(const std::vector<std::vector<Evaluated>>& ev) {
  std::vector<std::vector<Candidate>> t(ev.size());
  for (size_t m = 0; m < ev.size(); ++m) {
    for (auto& e : ev[m]) t[m].push_back({e.spec, e.key, e.params, e.error});
  }
  return t;
}

// Fixed specs per module from a --plan file (a report's "plan" or a
// bundle's "modules" list).
std::vector<StructureSpec> specs_from_plan_file(const Session& s) {
  json j = read_json_file(s.o_.plan_file, "plan file");
  const json* list = &j;
  if (j.is_object()) {
    if (j.contains("plan")) list = &j["plan"];
    else if (j.contains("modules")) list = &j["modules"];
  }
  if (!list->is_array()) throw Error(s.o_.plan_file, "", "plan file must hold a list of modules (or a report's \"plan\")");
  std::map<std::string, StructureSpec> by_name;
  try {
    for (auto& e : *list) {
      auto fam = family_from_name(e.at("family").get<std::string>());
      if (!fam) throw Error(s.o_.plan_file, "", "unknown structure family " + e.at("family").dump());
      if (!e.is_object()) throw Error(s.o_.plan_file, "", "plan entries must be objects");
      by_name[e.at("name").get<std::string>()] = {*fam, plan_int(e, "rank", 0, int64_t{1} << 40, s.o_.plan_file),
                                                  static_cast<int>(plan_int(e, "groups", 0, 1 << 24, s.o_.plan_file))};
    }
  } catch (const json::exception& ex) {
    throw Error(s.o_.plan_file, "", std::string("malformed plan entry: ") + ex.what());
  }
  std::vector<StructureSpec> out;
  for (auto& m : s.set_.modules()) {
    auto it = by_name.find(m.name);
    if (it == by_name.end()) throw Error(s.o_.plan_file, m.name, "module has no entry in the plan");
    if (!spec_valid(it->second, {m.in, m.out, m.ranks})) {
      throw Error(s.o_.plan_file, m.name, "structure " + it->second.label() + " does not fit this module");
    }
    out.push_back(it->second);
  }
  return out;
}

// Options for fitting structures known in advance, one per module: the
// shared-body subspace is computed only as wide as that structure needs
// (the planner's default, 4r, serves all its candidates with one solve).
FitOptions for_known_structures(FitOptions fo) {
  fo.body_width = 1;
  return fo;
}

struct MethodRun {
  std::vector<MergeReport> reports;
  std::vector<std::vector<StructureSpec>> specs;  // per budget, per module (per-task methods)
  std::vector<std::vector<int>> max_iters;        // per budget, per module: how it was fitted
};

// Evaluates one method at several budgets. With skip_infeasible, budgets
// below the method's smallest storage are left out instead of failing.
MethodRun run_method(Session& s, const std::string& name, std::vector<double> budgets, bool skip_infeasible) {
  auto t0 = std::chrono::steady_clock::now();
  std::map<std::string, std::string> params;
  const MethodInfo& info = s.method(name, &params);
  const FitOptions fo = s.fit_options(params);
  const auto& mods = s.set_.modules();
  MethodRun run;
  std::vector<int64_t> limits;
  for (double b : budgets) limits.push_back(s.budget_params(b));
  // Keeps the budgets for which `feasible` holds (or throws its error).
  auto keep_feasible = [&](const std::function<void(int64_t)>& feasible) {
    std::vector<double> b2;
    std::vector<int64_t> l2;
    for (size_t b = 0; b < budgets.size(); ++b) {
      try {
        feasible(limits[b]);
      } catch (const Error&) {
        if (!skip_infeasible) throw;
        continue;
      }
      b2.push_back(budgets[b]);
      l2.push_back(limits[b]);
    }
    budgets = b2;
    limits = l2;
  };

  auto finish = [&](size_t b, const std::vector<const Evaluated*>& chosen, double shared_seconds) {
    run.reports.push_back(s.report(name, budgets[b], chosen, params, shared_seconds));
    std::vector<StructureSpec> sp;
    std::vector<int> iters;
    for (auto* e : chosen) {
      sp.push_back(e->spec);
      iters.push_back(e->max_iters);
    }
    run.specs.push_back(sp);
    run.max_iters.push_back(iters);
  };

  if (info.single_adapter) {
    const MergeParams mp = merge_params(params);
    std::vector<std::vector<Evaluated>> ev(mods.size());
    for_modules(s.mine_, s.threads_, s.o_.progress, [&](size_t m) {
      ModuleProblem p = s.problem(m);
      ModuleFit f = merge_single(name, p, mp, m);
      StructureSpec spec{Family::kMerged, f.bodies[0].rows(), 0};
      ev[m].push_back(s.evaluate(p, m, f, {spec, "merged"}, true, 0));
    });
    s.share(ev);
    std::vector<const Evaluated*> chosen;
    for (auto& e : ev) chosen.push_back(&e[0]);
    for (size_t b = 0; b < budgets.size(); ++b) finish(b, chosen, seconds_since(t0));
    return run;
  }

  if (name == "hydra" || name == "hydra-avg") {
    auto ev = s.evaluate_all(
        [&](size_t m, const ModuleShape& shape) {
          if (name == "hydra") {
            return std::vector<CandidateSpec>{{{Family::kSharedA, std::max<int64_t>(1, shape.max_rank()), 0}, "shared-A"}};
          }
          StructureSpec sp{Family::kAvgA, 0, 0};
          if (!spec_valid(sp, shape)) throw Error(mods[m].name + ": hydra-avg needs every task at one rank here");
          return std::vector<CandidateSpec>{{sp, "avg-A"}};
        },
        for_known_structures(fo), true, name == "hydra" ? s.spread_ : Spread::kInside);
    std::vector<const Evaluated*> chosen;
    for (auto& e : ev) chosen.push_back(&e[0]);
    for (size_t b = 0; b < budgets.size(); ++b) finish(b, chosen, seconds_since(t0));
    return run;
  }

  if (name == "jd-full" || name == "jd-diag") {
    const Family f = name == "jd-full" ? Family::kJdFull : Family::kJdDiag;
    keep_feasible([&](int64_t lim) { uniform_rank(s, f, lim); });
    std::vector<int64_t> ranks;
    for (int64_t lim : limits) ranks.push_back(uniform_rank(s, f, lim));
    std::set<int64_t> distinct(ranks.begin(), ranks.end());
    auto ev = s.evaluate_all(
        [&](size_t, const ModuleShape& shape) {
          std::vector<CandidateSpec> v;
          for (int64_t k : distinct) v.push_back({clip_rank({f, k, 0}, shape), std::to_string(k)});
          return v;
        },
        fo, true, Spread::kInside);
    for (size_t b = 0; b < budgets.size(); ++b) {
      std::vector<const Evaluated*> chosen;
      const size_t idx = static_cast<size_t>(std::distance(distinct.begin(), distinct.find(ranks[b])));
      for (auto& e : ev) chosen.push_back(&e[idx]);
      finish(b, chosen, seconds_since(t0));
    }
    return run;
  }

  // hydraopt: a hand-written plan, or candidates + planner.
  if (!s.o_.plan_file.empty()) {
    std::vector<StructureSpec> specs;
    dist::checked([&] { specs = specs_from_plan_file(s); });
    auto ev = s.evaluate_all([&](size_t m, const ModuleShape&) { return std::vector<CandidateSpec>{{specs[m], "plan"}}; },
                             for_known_structures(fo), true, Spread::kInside);
    std::vector<const Evaluated*> chosen;
    int64_t total = 0;
    for (auto& e : ev) {
      chosen.push_back(&e[0]);
      total += e[0].params;
    }
    for (size_t b = 0; b < budgets.size(); ++b) {
      if ((s.o_.budget || s.o_.budget_bytes) && total > limits[b]) {
        throw Error(s.o_.plan_file, "", "the plan stores " + std::to_string(total) + " numbers, over the budget of " +
                                            std::to_string(limits[b]));
      }
      finish(b, chosen, seconds_since(t0));
    }
    return run;
  }
  // Every candidate is first fitted from its closed-form start only, so
  // structures that ALS refines enter the plan with an upper bound on their
  // error. Then, in rounds, the chosen structures that ALS can improve are
  // refined and the plan is redone, until no chosen structure is left
  // unrefined (at most kRounds rounds).
  constexpr int kRounds = 3;
  FitOptions starts = fo;
  starts.max_iters = 0;
  auto ev = s.evaluate_all(
      [&](size_t, const ModuleShape& shape) { return candidate_specs(shape, s.share_, s.user_group_count_); }, starts,
      false, Spread::kAcross);
  auto table = to_table(ev);
  keep_feasible([&](int64_t lim) { check_floor(s, table, lim); });
  auto plans = plan_budgets(table, limits);
  for (int round = 0; round < kRounds && fo.max_iters > 0; ++round) {
    std::vector<std::vector<size_t>> refine(ev.size());
    bool any = false;
    for (size_t m = 0; m < ev.size(); ++m) {
      for (size_t c = 0; c < ev[m].size(); ++c) {
        const Evaluated& e = ev[m][c];
        if (e.max_iters == fo.max_iters || !spec_refinable(e.spec, s.set_.size())) continue;
        if (std::any_of(plans.begin(), plans.end(), [&](const PlanResult& plan) { return plan.choice[m] == c; })) {
          refine[m].push_back(c);
          any = true;
        }
      }
    }
    if (!any) break;
    auto refined = s.evaluate_all(
        [&](size_t m, const ModuleShape&) {
          std::vector<CandidateSpec> v;
          for (size_t c : refine[m]) v.push_back({ev[m][c].spec, ev[m][c].key});
          return v;
        },
        fo, false, Spread::kAcross);
    for (size_t m = 0; m < ev.size(); ++m) {
      for (size_t j = 0; j < refine[m].size(); ++j) ev[m][refine[m][j]] = std::move(refined[m][j]);
    }
    table = to_table(ev);
    plans = plan_budgets(table, limits);
  }
  for (size_t b = 0; b < budgets.size(); ++b) {
    std::vector<const Evaluated*> chosen;
    for (size_t m = 0; m < ev.size(); ++m) chosen.push_back(&ev[m][plans[b].choice[m]]);
    finish(b, chosen, seconds_since(t0));
  }
  return run;
}

}  // namespace

MergeReport merge(const AdapterSet& set, const MergeOptions& options, const fs::path& bundle) {
  auto t0 = std::chrono::steady_clock::now();
  if (!find_method(options.method)) throw Error("unknown method '" + options.method + "' (known: " + known_methods() + ")");
  const bool root = dist::rank() == 0;  // writes the bundle
  dist::checked([&] {
    if (bundle.empty() || !root) return;
    // Fail on an unwritable destination before the work, not after.
    fs::path dir = fs::absolute(bundle).parent_path();
    if (!fs::is_directory(dir)) throw Error(bundle.string(), "", "output directory does not exist");
    if (::access(dir.c_str(), W_OK) != 0) throw Error(bundle.string(), "", "output directory is not writable");
  });
  Session s(set, options, !bundle.empty());
  // Rank 0 writes the bundle; the others spool their modules for it.
  std::optional<io::BundleWriter> writer;
  dist::checked([&] {
    if (bundle.empty()) return;
    if (root) writer.emplace(bundle, s.dtype_, set.modules().size());
    else writer.emplace(s.dtype_, set.modules().size());
  });
  s.writer_ = writer ? &*writer : nullptr;
  const double budget = s.requested_fraction();
  MethodRun run = run_method(s, options.method, {budget}, false);
  MergeReport report = run.reports[0];
  if (!find_method(options.method)->uses_budget) report.budget = report.fraction;
  if (writer) {
    std::map<std::string, std::string> params;
    s.method(options.method, &params);
    const auto& info = *find_method(options.method);
    const MergeParams mp = merge_params(params);
    // Modules with several candidates (the planner's) are fitted again with
    // the evaluation's options, so the bundle is the fit the report measured.
    const FitOptions fo = s.fit_options(params);
    if (!info.single_adapter) s.expect_layout(run.specs[0]);  // the planner's: none written yet
    for_modules(s.mine_, s.threads_, options.progress, [&](size_t m) {
      if (writer->has_module(m)) return;
      const auto& mod = set.modules()[m];
      ModuleProblem p = s.problem(m);
      ModuleFit fit;
      if (info.single_adapter) {
        fit = merge_single(options.method, p, mp, m).rounded(s.dtype_);
      } else {
        FitOptions as_evaluated = fo;
        as_evaluated.max_iters = run.max_iters[0][m];
        ModuleFitter fitter(p, as_evaluated);
        fit = fitter.fit(run.specs[0][m]).rounded(s.dtype_);
      }
      writer->write_module(m, {mod.name, mod.in, mod.out, run.specs[0][m], std::move(fit), {}});  // sha256: set by the writer
    }, Spread::kInside);
    // The other ranks' modules come to rank 0, one at a time.
    dist::stream_to_root(
        s.owner_, [&](size_t m) { return writer->encoded_module(m); },
        [&](size_t m, std::string& message) { writer->write_encoded(m, message); });
    dist::checked([&] {
      if (!root) return;
      io::Bundle b;
      b.method = options.method;
      b.base_model = set.base_model();
      b.params = params;
      b.budget = budget;
      b.dtype = s.dtype_;
      b.fan_in_fan_out = set.task(0).fan_in_fan_out();
      b.original_params = s.original_;
      b.params_stored = report.params;
      for (size_t i = 0; i < set.size(); ++i) {
        const Adapter& t = set.task(i);
        b.tasks.push_back({t.name(), t.dir().string(), s.sha_[i], t.rank(), t.alpha(), t.use_rslora(), t.target_modules()});
      }
      writer->finish(b);
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
  for (auto& name : method_names) {
    if (!find_method(name)) throw Error("unknown method '" + name + "' (known: " + known_methods() + ")");
  }
  for (double b : budgets) {
    if (!(b > 0 && b <= 1)) throw Error("budgets must be fractions in (0, 1], got " + std::to_string(b));
  }
  Session s(set, options, false);
  std::vector<MergeReport> out;
  for (auto& name : method_names) {
    const MethodInfo& info = *find_method(name);
    // A method whose storage does not follow the budget gives one point,
    // reported at its own storage fraction.
    MethodRun run = run_method(s, name, info.uses_budget ? budgets : std::vector<double>{1.0}, true);
    if (!info.uses_budget) {
      for (auto& r : run.reports) r.budget = r.fraction;
    }
    for (auto& r : run.reports) out.push_back(std::move(r));
  }
  return out;
}

std::string report_json(const MergeReport& r, bool with_plan) {
  ordered_json j = {{"method", r.method},
                    {"budget", r.budget},
                    {"storage",
                     {{"params", r.params}, {"original_params", r.original_params}, {"fraction", r.fraction}, {"bytes", r.bytes}}},
                    {"mean_rel_error", r.mean_rel_error}};
  j["tasks"] = ordered_json::array();
  for (auto& t : r.tasks) j["tasks"].push_back({{"name", t.name}, {"rel_error", t.rel_error}});
  j["seconds"] = r.seconds;
  j["parameters"] = r.params_used;
  if (with_plan) j["plan"] = ordered_json::parse(r.plan_json);
  return j.dump(2) + "\n";
}

}  // namespace hydraopt
