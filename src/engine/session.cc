#include "engine/session.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/rounding.h"
#include "dist/dist.h"
#include "engine/exchange.h"
#include "engine/schedule.h"
#include "hydraopt/error.h"
#include "io/option_files.h"
#include "methods/fit_error.h"
#include "methods/predict.h"
#include "methods/precision.h"
#include "util/parallel.h"
#include "util/sha256.h"
#include "util/wire.h"

namespace hydraopt::engine {

using nlohmann::ordered_json;

namespace {

// Numbers in a module's factors over all tasks: sum_i r_i (in + out).
double factor_count(const AdapterSet::Module& m) {
  return static_cast<double>(m.in + m.out) * static_cast<double>(ModuleShape{m.in, m.out, m.ranks}.rank_sum());
}

}  // namespace

Session::Session(const AdapterSet& set, const MergeOptions& o, bool hash_sources) : set_(set), o_(o) {
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
  unit_ = o.budget_bytes ? BudgetUnit::kBytes : o.unit;
  for (const Adapter& t : set.tasks()) {
    for (const AdapterModule& m : t.modules()) {
      original_bytes_ += m.rank * (m.in + m.out) * static_cast<int64_t>(dtype_size(m.dtype));
    }
  }
  partition_modules();
  choose_spread();
  dist::checked([&] { load_groups(); });
  scan_sources(hash_sources);
  dist::checked([&] { load_calibration(); });
  if (calibrated()) calibrated_norms();
  if (!calibrated() && o_.calibration_rounds > 0) {
    warnings_.push_back("--calibration-rounds " + std::to_string(o_.calibration_rounds) +
                        " has no effect without --calibration");
  }
  dist::checked([&] { compute_weights(); });
}

ModuleShape Session::shape(size_t m) const {
  const auto& mod = set_.modules()[m];
  return {mod.in, mod.out, mod.ranks};
}

FitOptions Session::fit_defaults() const {
  FitOptions fo;
  fo.user_groups = user_groups_;
  return fo;
}

const HandPlan* Session::hand_plan() {
  if (hand_) return &*hand_;  // set_hand_plan's, or the file's read before
  if (o_.plan_file.empty()) return nullptr;
  dist::checked([&] { hand_ = HandPlan{o_.plan_file, io::read_plan_file(o_.plan_file)}; });
  return &*hand_;
}

int64_t Session::budget_limit(double fraction) const {
  const double whole = static_cast<double>(original_) * (unit_ == BudgetUnit::kBytes ? 2.0 : 1.0);
  if (o_.budget_bytes && fraction == requested_fraction()) return *o_.budget_bytes;  // exactly as given
  return static_cast<int64_t>(std::floor(fraction * whole + 1e-9));
}

double Session::requested_fraction() const {
  if (o_.budget_bytes) return static_cast<double>(*o_.budget_bytes) / (2.0 * static_cast<double>(original_));
  return o_.budget.value_or(0.5);
}

EvalTable Session::evaluate(const std::function<std::vector<CandidateSpec>(size_t, const ModuleShape&)>& specs,
                            const FitOptions& fo, Store store, Spread spread) {
  EvalTable out(set_.modules().size());
  // Every module's specs, on every rank: with one per module, for good, the
  // bundle's layout is known before any is fitted.
  const auto lists = spec_lists(specs);
  const bool final = store != Store::kNo;
  if (store == Store::kFinal && std::all_of(lists.begin(), lists.end(), [](const auto& l) { return l.size() == 1; })) {
    std::vector<CandidateSpec> only;
    for (const auto& l : lists) only.push_back(l[0]);
    expect_layout(only, writer_);
  }
  for_each_item(mine_, threads_, o_.progress, [&](size_t m) {
    const auto& list = lists[m];
    if (list.empty()) return;
    if (final && list.size() == 1 && per_task_heads(list[0].spec, set_.size()) && list[0].precision.all_float() &&
        !calibrated()) {
      // The streamed hydra point: each task read when needed, dropped after.
      std::vector<double> err2;
      ModuleFit stored = fit_shared_heads(shape(m), weights_[m], [&](size_t i) { return set_.load_transposed(m, i); },
                                          list[0].spec, fo, dtype_, norms2_[m], &err2);
      out[m].push_back(record(m, std::move(stored), std::move(err2), {}, list[0], true, fo.max_iters));
      return;
    }
    const LoadedModule l = load(m);
    ModuleFitter fitter(l.p, fo);
    for (auto& cs : list) {
      ModuleFit fit = this->stored(l, fitter.fit(cs.spec), cs.precision);
      auto [err2, frob2] = errors(m, l, fit);
      out[m].push_back(
          record(m, std::move(fit), std::move(err2), std::move(frob2), cs, final && list.size() == 1, fo.max_iters));
    }
  }, spread);
  share_table(out, mine_);
  return out;
}

std::vector<std::vector<CandidateSpec>> Session::spec_lists(
    const std::function<std::vector<CandidateSpec>(size_t, const ModuleShape&)>& specs) const {
  std::vector<std::vector<CandidateSpec>> lists(set_.modules().size());
  dist::checked([&] {
    for (size_t m = 0; m < lists.size(); ++m) lists[m] = specs(m, shape(m));
  });
  return lists;
}

EvalTable Session::predict(const std::function<std::vector<CandidateSpec>(size_t, const ModuleShape&)>& specs,
                           const FitOptions& fo) {
  EvalTable out(set_.modules().size());
  auto lists = spec_lists(specs);  // each module's list is released when done
  FitOptions estimate = fo;
  estimate.estimate = true;
  for_each_item(mine_, threads_, o_.progress, [&](size_t m) {
    if (lists[m].empty()) return;
    std::optional<LoadedModule> l = load(m);
    Predictor predictor(l->p, estimate);
    // The factors are let go after the last candidate that is measured.
    auto measured = [](const CandidateSpec& c) { return c.spec.family == Family::kExact && c.precision.all_float(); };
    const auto last = std::find_if(lists[m].rbegin(), lists[m].rend(), measured);
    const size_t keep = static_cast<size_t>(lists[m].rend() - last);  // candidates up to it
    if (keep == 0) l.reset();
    out[m].reserve(lists[m].size());
    for (size_t c = 0; c < lists[m].size(); ++c) {
      CandidateSpec& cs = lists[m][c];
      if (measured(cs)) {  // nothing to fit: measured
        out[m].push_back(measure_exact(m, *l, cs, fo));
        if (c + 1 == keep) l.reset();
        continue;
      }
      const Prediction pr = predictor.predict(cs.spec, cs.precision, dtype_);
      Evaluated e{cs.spec, std::move(cs.key), spec_params(cs.spec, shape(m)), pr.error, {}, {}, 0, false, cs.precision,
                  spec_bytes(cs.spec, shape(m), cs.precision, dtype_)};
      out[m].push_back(std::move(e));
    }
    std::vector<CandidateSpec>().swap(lists[m]);
  }, Spread::kAcross);
  share_table(out, mine_);
  return out;
}

// Uncalibrated, task by task: each task's error after rounding involves
// its own factors only, so a one-task problem gives the same bits as the
// whole module, and the module's factors are not copied twice more (the
// fit and its rounding: with two modules predicted side by side, that was
// the predictions' peak memory).
Evaluated Session::measure_exact(size_t m, const LoadedModule& l, const CandidateSpec& cs, const FitOptions& fo) const {
  if (l.metric.mean || !cs.precision.all_float()) {
    ModuleFit fit = stored(l, ModuleFitter(l.p, fo).fit(cs.spec), cs.precision);
    auto [err2, frob2] = errors(m, l, fit);
    return record(m, std::move(fit), std::move(err2), std::move(frob2), cs, false, fo.max_iters);
  }
  std::vector<double> err2(l.p.tasks());
  util::parallel_for(err2.size(), [&](size_t i) {
    // Factors the stored dtype keeps as they are store the task's update
    // exactly: nothing is lost (adapters read in the dtype stored).
    if (kept_by_dtype(l.p.loras[i].A, dtype_) && kept_by_dtype(l.p.loras[i].B, dtype_)) return;
    const ModuleProblem one{{l.p.loras[i]}, {l.p.weights[i]}};
    const ModuleFit fit = store_in_precision(one, ModuleFitter(one, fo).fit(cs.spec), cs.precision, dtype_);
    const std::vector<double> norm{norms2_[m][i]};
    err2[i] = fit_errors2(one, fit, &norm)[0];
  });
  // The exact fit stores every task's factors as read: its size is the spec's.
  Evaluated e{cs.spec, cs.key, spec_params(cs.spec, shape(m)), 0, std::move(err2), {}, fo.max_iters, true,
              cs.precision, spec_bytes(cs.spec, shape(m), cs.precision, dtype_)};
  for (size_t i = 0; i < e.task_err2.size(); ++i) e.error += weights_[m][i] * e.task_err2[i];
  return e;
}

EvalTable Session::evaluate_merged(
    const std::function<ModuleFit(const ModuleProblem&, const ModuleMetric*, size_t)>& merge) {
  return evaluate_loaded(
      [&](const LoadedModule& l, size_t m) {
        ModuleFit stored =
            merge(l.as_read(), l.metric.mean ? &l.metric : nullptr, m).rounded(dtype_);
        const StructureSpec spec{Family::kMerged, stored.bodies[0].rows(), 0};
        return std::vector<StoredFit>{{{spec, "merged", {}}, std::move(stored)}};
      },
      true);
}

EvalTable Session::evaluate_stored(const std::function<std::vector<StoredFit>(const ModuleProblem&, size_t)>& store,
                                   bool final) {
  // Computed on the adapters as read (these methods have no calibrated
  // form), measured in the merge's metric.
  return evaluate_loaded([&](const LoadedModule& l, size_t m) { return store(l.as_read(), m); }, final);
}

EvalTable Session::evaluate_loaded(const std::function<std::vector<StoredFit>(const LoadedModule&, size_t)>& store,
                                   bool final) {
  EvalTable out(set_.modules().size());
  for_each_item(mine_, threads_, o_.progress, [&](size_t m) {
    const LoadedModule l = load(m);
    std::vector<StoredFit> fits = store(l, m);
    for (StoredFit& s : fits) {
      auto [err2, frob2] = errors(m, l, s.fit);
      out[m].push_back(
          record(m, std::move(s.fit), std::move(err2), std::move(frob2), s.candidate, final && fits.size() == 1, 0));
    }
  });
  share_table(out, mine_);
  return out;
}

// A rounded fit and its per-task errors; with `store`, the fit goes to the
// bundle writer and nothing of it is kept.
Evaluated Session::record(size_t m, ModuleFit stored, std::vector<double> task_err2, std::vector<double> task_frob2,
                          const CandidateSpec& cs, bool store, int max_iters) const {
  Evaluated e{cs.spec, cs.key, stored.params(), 0, std::move(task_err2), std::move(task_frob2), max_iters, true,
              cs.precision, fit_bytes(stored, cs.precision, dtype_)};
  for (size_t i = 0; i < e.task_err2.size(); ++i) e.error += weights_[m][i] * e.task_err2[i];
  if (store && writer_) {
    const auto& mod = set_.modules()[m];
    if (writer_->has_module(m)) writer_->discard(m);  // an earlier choice, replaced
    writer_->write_module(m, {mod.name, mod.in, mod.out, cs.spec, std::move(stored), {}, cs.precision});  // sha256: set by the writer
  }
  return e;
}

// Not with a groups file, whose group count the fits follow over the
// spec's. expect() creates the output file, so every rank checks.
void Session::expect_layout(const std::vector<CandidateSpec>& specs, io::BundleWriter* writer) const {
  dist::checked([&] {
    if (!writer || !o_.groups_file.empty()) return;
    for (size_t m = 0; m < specs.size(); ++m) {
      if (writer->has_module(m)) return;
    }
    std::vector<int64_t> bytes;
    for (size_t m = 0; m < specs.size(); ++m) bytes.push_back(spec_bytes(specs[m].spec, shape(m), specs[m].precision, dtype_));
    writer->expect(bytes);
  });
}

LoadedModule Session::load(size_t m) const {
  LoadedModule l;
  l.p.loras = set_.load(m);
  if (!weights_.empty()) l.p.weights = weights_[m];  // empty while the weights are computed
  if (calibrated()) {
    metrics(m, &l);
    l.original = l.p;
    l.p = whitened(std::move(l.p), *l.metric.mean);
  }
  return l;
}

ModuleFit Session::stored(const LoadedModule& l, ModuleFit fit, const Precision& precision) const {
  if (!l.metric.mean) return store_in_precision(l.p, std::move(fit), precision, dtype_);
  const Whitening& w = *l.metric.mean;
  ModuleFit out = stored_values(unwhitened(store_in_precision(l.p, std::move(fit), precision, dtype_, &w), w), precision, dtype_);
  // Each task's own head or core, in its own metric (float roles only:
  // integer ones were solved against what is stored, in the mean metric).
  if (precision.all_float()) solve_own_metrics(*l.original, l.metric, o_.calibration_rounds, dtype_, &out);
  return out;
}

std::pair<std::vector<double>, std::vector<double>> Session::errors(size_t m, const LoadedModule& l,
                                                                    const ModuleFit& stored) const {
  if (!l.metric.mean) return {fit_errors2(l.p, stored, &norms2_[m]), {}};
  return {fit_errors2(l.p, whitened(stored, *l.metric.mean), &norms2_[m]),
          fit_errors2(*l.original, stored, &frob_norms2_[m])};
}

MergeReport Session::report(const std::string& method, const MethodRun& run, size_t b, const Params& params,
                            double seconds) const {
  MergeReport r;
  r.method = method;
  r.unit = unit_;
  r.budget = run.budgets[b];
  r.original_params = original_;
  r.params_used = params.values();
  std::vector<double> err(set_.size(), 0.0), frob(set_.size(), 0.0);
  ordered_json plan = ordered_json::array();
  for (size_t m = 0; m < run.table.size(); ++m) {
    const Evaluated& e = run.table[m][run.choice[b][m]];
    r.params += e.params;
    r.bytes += e.bytes;
    for (size_t i = 0; i < err.size(); ++i) err[i] += e.task_err2[i];
    for (size_t i = 0; i < e.task_frob2.size(); ++i) frob[i] += e.task_frob2[i];
    const auto& mod = set_.modules()[m];
    plan.push_back(ordered_json::parse(io::plan_entry_json(mod.name, mod.in, mod.out, e.spec, e.params, e.precision)));
  }
  r.plan_json = plan.dump();
  r.original_bytes = original_bytes_;
  r.fraction = static_cast<double>(r.params) / static_cast<double>(original_);
  r.byte_fraction = static_cast<double>(r.bytes) / static_cast<double>(original_bytes_);
  r.bf16_fraction = static_cast<double>(r.bytes) / (2.0 * static_cast<double>(original_));
  double sum = 0, frob_sum = 0;
  for (size_t i = 0; i < err.size(); ++i) {
    const double rel = relative_error(err[i], total_norm2_[i]);
    r.tasks.push_back({set_.task(i).name(), rel, std::nullopt});
    if (calibrated()) {
      r.tasks.back().frobenius_rel_error = relative_error(frob[i], frob_total_[i]);
      frob_sum += *r.tasks.back().frobenius_rel_error;
    }
    sum += rel;
  }
  r.mean_rel_error = sum / static_cast<double>(err.size());
  if (calibrated()) r.mean_frobenius_rel_error = frob_sum / static_cast<double>(err.size());
  r.warnings = warnings_;
  r.seconds = seconds;
  return r;
}

// Modules over ranks, balanced by the size of their factors.
void Session::partition_modules() {
  std::vector<double> cost;
  for (const auto& m : set_.modules()) cost.push_back(factor_count(m));
  owner_ = dist::partition(cost, dist::size());
  for (size_t m = 0; m < owner_.size(); ++m) {
    if (owner_[m] == dist::rank()) mine_.push_back(m);
  }
}

// For the streamed hydra point (fit_shared_heads), which holds at most a
// module's factors in double, or its single-precision stack and heads:
// threads across modules are faster (no synchronisation inside a module, no
// serial steps) but hold that per thread. Across, then, while `threads`
// modules' factors in double take at most o_.across_bytes; past that (many
// tasks, wide modules) inside one module at a time.
void Session::choose_spread() {
  double largest = 0;
  for (const auto& m : set_.modules()) largest = std::max(largest, 8.0 * factor_count(m));
  spread_ = threads_ * largest <= o_.across_bytes ? Spread::kAcross : Spread::kInside;
}

void Session::load_groups() {
  if (o_.groups_file.empty()) return;
  std::vector<std::string> names;
  for (auto& t : set_.tasks()) names.push_back(t.name());
  user_groups_ = io::read_groups_file(o_.groups_file, names, &user_group_count_);
}

// Every task's update norms on every module and, with `hash`, its source's
// checksum: one pass over each file in byte order (each tensor converted
// while its bytes are in cache from hashing), threads across tasks, tasks
// shared out over the ranks.
void Session::scan_sources(bool hash) {
  const size_t nm = set_.modules().size(), n = set_.size();
  norms2_.assign(nm, std::vector<double>(n, 0.0));
  sha_.assign(n, "");
  const std::vector<size_t> my_tasks = my_share(n);
  for_each_item(my_tasks, threads_, nullptr, [&](size_t i) {
    const std::vector<double> col = set_.scan(i, hash ? &sha_[i] : nullptr);
    for (size_t m = 0; m < nm; ++m) norms2_[m][i] = col[m];
  });
  if (dist::size() > 1) {  // each entry is non-zero on one rank only: the sums are exact
    std::vector<double> all(nm * n, 0.0);
    for (size_t m = 0; m < nm; ++m) std::copy(norms2_[m].begin(), norms2_[m].end(), all.begin() + static_cast<ptrdiff_t>(m * n));
    dist::allreduce_sum(all);
    for (size_t m = 0; m < nm; ++m) {
      norms2_[m].assign(all.begin() + static_cast<ptrdiff_t>(m * n), all.begin() + static_cast<ptrdiff_t>((m + 1) * n));
    }
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

// Every task's statistics file, checked against the adapters.
void Session::load_calibration() {
  if (o_.calibration.empty()) return;
  if (!(o_.shrinkage >= 0 && o_.shrinkage <= 1)) {
    throw Error("--shrinkage must be in [0, 1], got " + std::to_string(o_.shrinkage));
  }
  if (o_.calibration_rounds < 0) {
    throw Error("--calibration-rounds must be >= 0, got " + std::to_string(o_.calibration_rounds));
  }
  const std::filesystem::path dir = o_.calibration;
  if (!std::filesystem::is_directory(dir)) throw Error(dir.string(), "", "not a directory of calibration statistics");
  std::map<std::string, size_t> module_of;
  for (size_t m = 0; m < set_.modules().size(); ++m) module_of[set_.modules()[m].name] = m;
  const size_t n = set_.size();
  std::vector<std::optional<CalibratedTask>> stats(n);
  calib_sha_.assign(n, "");
  std::vector<std::string> missing(n);
  const util::InnerThreads threads(threads_);  // the tasks' files read side by side
  util::parallel_for(n, [&](size_t i) {
    const std::string& task = set_.task(i).name();
    const std::filesystem::path path = dir / (task + ".safetensors");
    if (!std::filesystem::exists(path)) {
      missing[i] = "no calibration statistics for task " + task + " (" + path.string() +
                   "): it counts in each module's mean second moment as the identity";
      return;
    }
    auto reader = std::make_shared<const io::CalibrationFileReader>(path);
    const io::CalibrationStats& st = reader->header();
    if (st.task != task) throw Error(path.string(), "", "statistics of task '" + st.task + "', not of '" + task + "'");
    const std::string& base = set_.task(i).base_model();
    if (!st.base_model.empty() && !base.empty() && st.base_model != base) {
      throw Error(path.string(), "", "statistics of base model '" + st.base_model + "'; the adapters' is '" + base + "'");
    }
    CalibratedTask& t = stats[i].emplace();
    for (const auto& [site, modules] : st.modules) {
      for (const std::string& name : modules) {
        auto it = module_of.find(name);
        if (it == module_of.end()) throw Error(path.string(), site, "module " + name + " is not in the adapters");
        const int64_t in = set_.modules()[it->second].in, width = reader->widths().at(site);
        if (width != in) {
          throw Error(path.string(), site + ".diagonal",
                      "inputs " + std::to_string(width) + " wide; module " + name + " reads " + std::to_string(in));
        }
        t.site_of[name] = site;
      }
    }
    calib_sha_[i] = util::sha256_file(path);
    t.file = std::move(reader);
  });
  for (const std::string& w : missing) {
    if (!w.empty()) warnings_.push_back(w);
  }
  if (std::none_of(stats.begin(), stats.end(), [](const auto& s) { return s.has_value(); })) {
    throw Error(dir.string(), "", "no task has a statistics file (<task>.safetensors)");
  }
  calib_ = std::move(stats);
}

std::string Session::site_key(size_t m, std::vector<const std::string*>* site) const {
  const auto& mod = set_.modules()[m];
  if (site) site->assign(calib_.size(), nullptr);
  std::string key = std::to_string(mod.in);
  for (size_t i = 0; i < calib_.size(); ++i) {
    const std::string* s = nullptr;
    if (calib_[i]) {
      const auto it = calib_[i]->site_of.find(mod.name);
      if (it != calib_[i]->site_of.end()) s = &it->second;
    }
    if (site) (*site)[i] = s;
    key += "|" + (s ? *s : std::string());
  }
  return key;
}

// Module m's metrics from the tasks' shrunk moments (read once, when the
// session starts): their mean's whitening (a task without counts as the
// identity; cut to kMeanMomentRank above kExactWidth), and each task's own
// moment unless every task has the same. All factored (diagonal + low
// rank): nothing in x in.
void Session::metrics(size_t m, LoadedModule* l, bool own) const {
  const auto in = static_cast<Eigen::Index>(set_.modules()[m].in);
  const size_t n = calib_.size();
  std::vector<const std::string*> site;
  const std::string key = site_key(m, &site);
  // Each task's second moment, read from its file, scaled to trace `in`
  // and shrunk (empty: none, or a zero trace; counts as the identity).
  std::vector<Moment> c(n);
  bool read_done = false;
  auto read = [&] {
    read_done = true;
    for (size_t i = 0; i < n; ++i) {
      if (!site[i]) continue;
      const io::InputStats x = calib_[i]->file->site(*site[i]);
      const double trace = x.trace();
      if (!(trace > 0)) continue;
      const double scale = static_cast<double>(in) / trace;
      c[i] = shrink(Moment{x.diagonal * scale, x.vectors.transpose() * (x.values * scale).cwiseSqrt().asDiagonal()},
                    o_.shrinkage);
    }
  };
  if (own) {
    // The last few sites' moments are kept: q/k/v (and gate/up) load one
    // after another and read the same.
    {
      std::lock_guard<std::mutex> lock(whitening_mutex_);
      for (const auto& [k, v] : recent_own_) {
        if (k == key) l->metric.own = v;
      }
    }
    if (!l->metric.own) {
      read();
      // Every task the same statistics: the mean is each one's own metric.
      const bool one = std::all_of(c.begin(), c.end(), [&](const Moment& x) {
        return !x.empty() && x.d.size() == c[0].d.size() && x.g.cols() == c[0].g.cols() && x.d == c[0].d &&
               x.g == c[0].g;
      });
      l->metric.own = std::make_shared<const std::vector<Moment>>(one ? std::vector<Moment>() : c);
      std::lock_guard<std::mutex> lock(whitening_mutex_);
      constexpr size_t kRecentSites = 2;
      if (recent_own_.size() == kRecentSites) recent_own_.erase(recent_own_.begin());
      recent_own_.emplace_back(key, l->metric.own);
    }
  }
  // The whitening, computed once per key while the cache holds it (a
  // module of the same site loaded meanwhile waits for it).
  std::promise<std::shared_ptr<const Whitening>> made;
  {
    std::unique_lock<std::mutex> lock(whitening_mutex_);
    auto [it, fresh] = whitening_cache_.try_emplace(key);
    if (!fresh) {
      const auto wait = it->second;
      lock.unlock();
      l->metric.mean = wait.get();
      return;
    }
    it->second = made.get_future().share();
  }
  try {
    // The mean of the shrunk moments is the shrunk mean (each has trace in).
    if (!read_done) read();
    Eigen::Index columns = 0;
    for (const Moment& x : c) columns += x.g.cols();
    Moment mean{Eigen::VectorXd::Zero(in), Eigen::MatrixXd(in, columns)};
    columns = 0;
    for (Moment& x : c) {
      if (x.empty()) {
        mean.d.array() += 1.0;
        continue;
      }
      mean.d += x.d;
      mean.g.middleCols(columns, x.g.cols()) = x.g;
      columns += x.g.cols();
      x = Moment();  // let go as it goes
    }
    mean.d /= static_cast<double>(n);
    mean.g /= std::sqrt(static_cast<double>(n));
    l->metric.mean = std::make_shared<const Whitening>(compressed(std::move(mean), in <= kExactWidth ? in : kMeanMomentRank));
    made.set_value(l->metric.mean);
  } catch (...) {
    made.set_exception(std::current_exception());
    std::lock_guard<std::mutex> lock(whitening_mutex_);
    whitening_cache_.erase(key);
    throw;
  }
  // Kept while they fit in kWhiteningCacheBytes, the oldest let go first
  // (modules load in order, so a site's next reader comes soon).
  constexpr size_t kWhiteningCacheBytes = size_t{256} << 20;
  const size_t bytes = sizeof(double) * l->metric.mean->size();
  std::lock_guard<std::mutex> lock(whitening_mutex_);
  while (!whitening_order_.empty() && whitening_cache_bytes_ + bytes > kWhiteningCacheBytes) {
    whitening_cache_.erase(whitening_order_.front().first);  // who waits holds a copy of the future
    whitening_cache_bytes_ -= whitening_order_.front().second;
    whitening_order_.erase(whitening_order_.begin());
  }
  whitening_order_.emplace_back(key, bytes);
  whitening_cache_bytes_ += bytes;
}

// Update norms in the calibrated metric (the task weights' and relative
// errors' denominators); the Frobenius ones are kept for the reports.
void Session::calibrated_norms() {
  frob_norms2_ = norms2_;
  frob_total_ = total_norm2_;
  const size_t nm = set_.modules().size(), n = set_.size();
  std::vector<double> all(nm * n, 0.0);
  // Modules grouped by the statistics they read (q/k/v one site), each
  // group an item named by its first module: the threads build different
  // sites' metrics side by side, not one waiting for the other's.
  std::map<std::string, size_t> first_of;
  std::map<size_t, std::vector<size_t>> group;
  for (size_t m : mine_) group[first_of.try_emplace(site_key(m), m).first->second].push_back(m);
  std::vector<size_t> firsts;
  for (const auto& [first, members] : group) firsts.push_back(first);
  dist::checked([&] {
    for_each_item(firsts, threads_, nullptr, [&](size_t first) {
      for (size_t m : group.at(first)) {
        LoadedModule l;  // not whitened: the norms come from the factored metric
        l.p.loras = set_.load(m);
        metrics(m, &l, false);
        const std::vector<double> norms = whitened_norms2(l.p, *l.metric.mean);
        std::copy(norms.begin(), norms.end(), all.begin() + static_cast<ptrdiff_t>(m * n));
      }
    });
  });
  dist::allreduce_sum(all);  // each module's entries are non-zero on its rank only: the sums are exact
  total_norm2_.assign(n, 0.0);
  for (size_t m = 0; m < nm; ++m) {
    norms2_[m].assign(all.begin() + static_cast<ptrdiff_t>(m * n), all.begin() + static_cast<ptrdiff_t>((m + 1) * n));
    for (size_t i = 0; i < n; ++i) total_norm2_[i] += norms2_[m][i];
  }
}

void Session::compute_weights() {
  const size_t n = set_.size(), nm = norms2_.size();
  if (o_.weights == "module") {
    // Each (module, task) balanced on its own: the objective is the mean
    // over modules of each task's relative error there, so a module whose
    // update is small is not given up for the large ones.
    weights_.assign(nm, std::vector<double>(n, 0.0));
    for (size_t m = 0; m < nm; ++m) {
      for (size_t i = 0; i < n; ++i) {
        if (norms2_[m][i] > 0) weights_[m][i] = 1.0 / (static_cast<double>(nm) * norms2_[m][i]);
      }
    }
    return;
  }
  // The same task weights on every module.
  std::vector<double> w(n, 0.0);
  if (o_.weights == "balanced") {
    for (size_t i = 0; i < n; ++i) w[i] = total_norm2_[i] > 0 ? 1.0 / total_norm2_[i] : 0.0;
  } else if (o_.weights == "uniform") {
    double mean = 0;
    for (double x : total_norm2_) mean += x / static_cast<double>(n);
    for (size_t i = 0; i < n; ++i) w[i] = mean > 0 ? 1.0 / mean : 1.0;
  } else {
    std::vector<std::string> names;
    for (auto& t : set_.tasks()) names.push_back(t.name());
    const std::vector<double> given = io::read_weights_file(o_.weights, names);
    // Relative to the task's size, so a weight of 1 means "as balanced".
    for (size_t i = 0; i < n; ++i) w[i] = total_norm2_[i] > 0 ? given[i] / total_norm2_[i] : 0.0;
  }
  weights_.assign(nm, w);
}

}  // namespace hydraopt::engine
