#include "hydraopt/benchmark.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "hydraopt/dist.h"
#include "hydraopt/error.h"
#include "hydraopt/inspect.h"
#include "hydraopt/plot.h"
#include "hydraopt/tensors.h"
#include "demo_files.h"

#include <omp.h>
#include <unistd.h>

namespace hydraopt {

namespace fs = std::filesystem;

std::vector<std::string> adapter_sets(const fs::path& assets) {
  std::vector<std::string> sets;
  std::error_code ec;
  for (auto& e : fs::directory_iterator(assets, ec)) {
    const std::string name = e.path().filename().string();
    if (e.is_directory() && name.rfind("adapters-", 0) == 0 && name.size() > 9) sets.push_back(name.substr(9));
  }
  if (ec) throw Error(assets.string(), "", "cannot list: " + ec.message());
  std::sort(sets.begin(), sets.end());
  if (fs::is_directory(assets / "adapters")) sets.insert(sets.begin(), "fast");
  return sets;
}

fs::path demo_files::set_dir(const fs::path& assets, const std::string& set) {
  const fs::path dir = set == "fast" ? assets / "adapters" : assets / ("adapters-" + set);
  const bool plain = !set.empty() && set.find_first_of("/\\") == std::string::npos && set != "." && set != "..";
  if (!plain || !fs::is_directory(dir)) {
    std::string known;
    for (const auto& n : adapter_sets(assets)) known += (known.empty() ? "" : ", ") + n;
    throw Error(assets.string(), "", "no adapter set '" + set + "' (sets here: " + (known.empty() ? "none" : known) + ")");
  }
  return dir;
}

SetProfile set_profile(const std::string& name, const AdapterSet& set, const fs::path& init) {
  SetProfile p{name, 0, 0, NAN};
  const Inspection x = inspect(set);
  for (const auto& m : x.modules) {
    p.similarity_a += m.similarity_a / static_cast<double>(x.modules.size());
    p.similarity_b += m.similarity_b / static_cast<double>(x.modules.size());
  }
  if (init.empty()) return p;
  const Adapter a0 = Adapter::open(init.string());
  double sum = 0;
  for (const Adapter& a : set.tasks()) {
    double moved = 0, start = 0;
    for (const auto& m : a.modules()) {
      if (!a0.find(m.name)) throw Error(init.string(), m.name, "the initialisation lacks a module of task " + a.name());
      const Eigen::MatrixXd A = a.load(m.name).A, A0 = a0.load(m.name).A;
      if (A.rows() != A0.rows() || A.cols() != A0.cols()) {
        throw Error(init.string(), m.name, "the initial A's shape differs from task " + a.name() + "'s");
      }
      moved += (A - A0).squaredNorm();
      start += A0.squaredNorm();
    }
    sum += start > 0 ? std::sqrt(moved / start) : NAN;
  }
  p.a_drift = sum / static_cast<double>(set.size());
  return p;
}

TaskExamples load_task(const fs::path& dir, int limit, const std::string& name) {
  TaskExamples t;
  t.name = dir.filename().string();
  const fs::path file = dir / name;
  std::ifstream in(file);
  if (!in) throw Error(file.string(), "", "cannot open");
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    ++n;
    try {
      auto j = nlohmann::json::parse(line);
      t.examples.emplace_back(j.at("prompt").get<std::string>(), j.at("answer").get<std::string>());
    } catch (const nlohmann::json::exception& e) {
      throw Error(file.string(), "", "line " + std::to_string(n) + ": " + e.what());
    }
    if (limit > 0 && static_cast<int>(t.examples.size()) >= limit) break;
  }
  if (t.examples.empty()) throw Error(file.string(), "", "no examples");
  return t;
}

namespace {

constexpr size_t kBatch = 32;  // sequences packed per forward pass

// Batch b of `task`: each example's encoded prompt and its answer's bytes.
std::vector<std::pair<std::vector<int>, std::vector<int>>> encoded_batch(const Model& model, const TaskExamples& task,
                                                                         size_t b) {
  std::vector<std::pair<std::vector<int>, std::vector<int>>> ex;
  for (size_t i = b * kBatch; i < std::min(task.examples.size(), (b + 1) * kBatch); ++i) {
    std::vector<int> answer(task.examples[i].second.begin(), task.examples[i].second.end());
    for (int& c : answer) c = static_cast<unsigned char>(c);
    ex.emplace_back(model.encode_prompt(task.examples[i].first), std::move(answer));
  }
  return ex;
}

}  // namespace

double task_score(const Model& model, const TaskExamples& task, const Deltas* deltas, int threads) {
  const size_t n = task.examples.size(), batches = (n + kBatch - 1) / kBatch;
  std::vector<int> hits(batches, 0);
  const int t = threads > 0 ? threads : omp_get_max_threads();
#pragma omp parallel for num_threads(t) schedule(dynamic)
  for (size_t b = 0; b < batches; ++b) {
    for (bool ok : model.greedy_matches_batch(encoded_batch(model, task, b), deltas)) hits[b] += ok;
  }
  int total = 0;
  for (int h : hits) total += h;
  return static_cast<double>(total) / static_cast<double>(n);
}

namespace {

// Code points of `s`; a byte that does not start a valid UTF-8 sequence
// stands for itself (offset past the code point range).
std::vector<uint32_t> code_points(const std::string& s) {
  std::vector<uint32_t> out;
  for (size_t i = 0; i < s.size();) {
    const auto b = static_cast<unsigned char>(s[i]);
    const size_t n = b < 0x80 ? 1 : (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xE ? 3 : (b >> 3) == 0x1E ? 4 : 0;
    bool ok = n > 0 && i + n <= s.size();
    uint32_t cp = n == 1 ? b : n == 2 ? b & 0x1Fu : n == 3 ? b & 0x0Fu : b & 0x07u;
    for (size_t k = 1; ok && k < n; ++k) {
      const auto c = static_cast<unsigned char>(s[i + k]);
      ok = (c >> 6) == 0x2;
      cp = (cp << 6) | (c & 0x3Fu);
    }
    if (ok) {
      out.push_back(cp);
      i += n;
    } else {
      out.push_back(0x110000u + b);
      i += 1;
    }
  }
  return out;
}

}  // namespace

double edit_similarity(const std::string& a, const std::string& b) {
  const std::vector<uint32_t> x = code_points(a), y = code_points(b);
  if (x.empty() && y.empty()) return 1.0;
  std::vector<size_t> row(y.size() + 1);
  for (size_t j = 0; j <= y.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= x.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= y.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (x[i - 1] == y[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return 1.0 - static_cast<double>(row[y.size()]) / static_cast<double>(std::max(x.size(), y.size()));
}

TaskScores task_scores(const Model& model, const TaskExamples& task, const Deltas* deltas, int threads) {
  const size_t n = task.examples.size(), batches = (n + kBatch - 1) / kBatch;
  std::vector<int> hits(batches, 0);
  std::vector<double> sims(batches, 0.0);
  const int t = threads > 0 ? threads : omp_get_max_threads();
#pragma omp parallel for num_threads(t) schedule(dynamic)
  for (size_t b = 0; b < batches; ++b) {
    const auto ex = encoded_batch(model, task, b);  // the answers are the first guesses
    std::vector<int> limit;
    for (const auto& e : ex) limit.push_back(static_cast<int>(2 * e.second.size() + 8));
    std::vector<bool> eos;
    const auto outs = model.greedy_outputs_batch(ex, limit, deltas, &eos);
    for (size_t k = 0; k < ex.size(); ++k) {
      const std::string& answer = task.examples[b * kBatch + k].second;
      std::string got;
      for (int c : outs[k]) got.push_back(static_cast<char>(c < 256 ? c : '?'));
      hits[b] += eos[k] && outs[k] == ex[k].second;
      sims[b] += edit_similarity(got, answer);
    }
  }
  TaskScores s;
  for (size_t b = 0; b < batches; ++b) {
    s.exact += hits[b];
    s.similarity += sims[b];
  }
  s.exact /= static_cast<double>(n);
  s.similarity /= static_cast<double>(n);
  return s;
}

DemoPoint parse_demo_point(const std::string& text) {
  const size_t at = text.find('@');
  auto bad = [&](const std::string& why) {
    return Error(fmt::format("demo point '{}': {} (METHOD@F, METHOD@1/N, METHOD@hydra or METHOD@bytes:F)", text, why));
  };
  if (at == std::string::npos) throw bad("no '@'");
  DemoPoint p{text.substr(0, at), 0.0};
  if (p.method.size() > 4 && p.method.compare(p.method.size() - 4, 4, "+cal") == 0) {
    p.method.resize(p.method.size() - 4);
    p.calibrated = true;
  }
  if (!find_method(p.method)) throw bad("unknown method '" + p.method + "' (see hydraopt methods)");
  std::string budget = text.substr(at + 1);
  // Named storages, in DemoPoint::budget's encoding.
  static const std::map<std::string, double> named = {{"1/N", 0.0}, {"hydra", -1.0}};
  if (auto it = named.find(budget); it != named.end()) {
    p.budget = it->second;
    return p;
  }
  if (budget.rfind("bytes:", 0) == 0) {
    p.unit = BudgetUnit::kBytes;
    budget = budget.substr(6);
  }
  size_t used = 0;
  try {
    p.budget = std::stod(budget, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != budget.size() || budget.empty() || !(p.budget > 0 && p.budget <= 1)) {
    throw bad("the budget must be a fraction in (0, 1]");
  }
  return p;
}

namespace {

// Greedy outputs on each example's prompt, each as far as 2 x its answer's
// length + 8; a -1 appended where the model ended the sequence.
std::vector<std::vector<int>> greedy_outputs(const Model& model, const TaskExamples& task, const Deltas* deltas,
                                             int threads) {
  const size_t n = task.examples.size(), batches = (n + kBatch - 1) / kBatch;
  std::vector<std::vector<int>> out(n);
  const int t = threads > 0 ? threads : omp_get_max_threads();
#pragma omp parallel for num_threads(t) schedule(dynamic)
  for (size_t b = 0; b < batches; ++b) {
    const auto ex = encoded_batch(model, task, b);
    std::vector<int> limit;
    for (const auto& e : ex) limit.push_back(static_cast<int>(2 * e.second.size() + 8));
    std::vector<bool> eos;
    auto outs = model.greedy_outputs_batch(ex, limit, deltas, &eos);
    for (size_t k = 0; k < ex.size(); ++k) {
      if (eos[k]) outs[k].push_back(-1);
      out[b * kBatch + k] = std::move(outs[k]);
    }
  }
  return out;
}

}  // namespace

BenchmarkResult run_benchmark(const BenchmarkOptions& o) {
  if (dist::size() > 1) throw Error("the task benchmark runs in one process: start it without mpirun (or with -np 1)");
  const auto t0 = std::chrono::steady_clock::now();
  auto log = [&](const std::string& s) {
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (o.log) o.log(fmt::format("[{:5.1f} s] {}", sec, s));
  };
  Model model = Model::open(o.assets / "model");
  AdapterSet set = AdapterSet::open(demo_files::adapter_dirs(demo_files::set_dir(o.assets, o.set)));
  BenchmarkResult r;
  r.weights = o.weights;
  const fs::path init = o.assets / "lora-init";
  r.profile = set_profile(o.set, set, fs::is_directory(init) ? init : fs::path());
  std::vector<TaskExamples> tasks;
  for (const auto& t : set.tasks()) {
    r.tasks.push_back(t.name());
    tasks.push_back(load_task(o.assets / "tasks" / t.name(), o.limit));
  }
  log(fmt::format("{} tasks, {} test examples each (at most)", tasks.size(), tasks[0].examples.size()));
  // Exact match alone (teacher-forced, one pass) unless the similarity is asked for.
  auto score = [&](const TaskExamples& task, const Deltas* deltas) {
    if (o.similarity) return task_scores(model, task, deltas, o.threads);
    return TaskScores{task_score(model, task, deltas, o.threads), NAN};
  };
  for (size_t i = 0; i < tasks.size(); ++i) {
    const TaskScores base = score(tasks[i], nullptr);
    r.base.push_back(base.exact);
    r.base_similarity.push_back(base.similarity);
    Deltas own_deltas = deltas_from_adapter(set.task(i));
    const TaskScores own = score(tasks[i], &own_deltas);
    r.individual.push_back(own.exact);
    r.individual_similarity.push_back(own.similarity);
  }
  log("scored the base model and every adapter");
  // Out of distribution: each task's adapter on the other tasks' prompts.
  std::vector<TaskExamples> ood(o.ood > 0 ? tasks.size() : 0);
  std::vector<std::vector<std::vector<int>>> ood_own(ood.size());
  for (size_t i = 0; i < ood.size(); ++i) {
    for (size_t j = 0; j < tasks.size(); ++j) {
      const auto& ex = tasks[j].examples;
      if (j != i) ood[i].examples.insert(ood[i].examples.end(), ex.begin(), ex.begin() + std::min<size_t>(ex.size(), o.ood));
    }
    Deltas own_deltas = deltas_from_adapter(set.task(i));
    ood_own[i] = greedy_outputs(model, ood[i], &own_deltas, o.threads);
  }
  if (!ood.empty()) log(fmt::format("every adapter's outputs on the other tasks' first {} prompts", o.ood));
  const demo_files::Scratch scratch("bench");
  const fs::path& tmp = scratch.path();
  // The hydra point: one shared body (r x in) per module, a head per task.
  int64_t hydra = 0;
  for (const auto& m : set.modules()) {
    int64_t r = 0;
    for (auto x : m.ranks) r = std::max(r, x);
    hydra += r * m.in + static_cast<int64_t>(set.size()) * r * m.out;
  }
  const double hydra_fraction = std::min(1.0, static_cast<double>(hydra) / static_cast<double>(set.original_params()));
  // Every point's merge; a method's points at several budgets in one run
  // (the planner predicts its candidates once for all of them).
  std::vector<MergeReport> merged(o.points.size());
  std::vector<fs::path> bundles(o.points.size());
  for (size_t i = 0; i < o.points.size(); ++i) bundles[i] = tmp / fmt::format("bundle{}.safetensors", i);
  std::vector<bool> done(o.points.size(), false);
  // Calibrated points: every task's statistics, from its own adapter.
  const fs::path stats = tmp / "calibration";
  if (std::any_of(o.points.begin(), o.points.end(), [](const DemoPoint& p) { return p.calibrated; })) {
    CalibrateOptions co;
    co.model = o.assets / "model";
    co.data = o.assets / "tasks";
    co.out = stats;
    for (const Adapter& a : set.tasks()) co.adapters.push_back(a.name() + "=" + a.dir().string());
    co.examples = o.calibration_examples;
    co.threads = o.threads;
    calibrate(co);
    log(fmt::format("calibration statistics of every task ({} examples each)", o.calibration_examples));
  }
  for (size_t i = 0; i < o.points.size(); ++i) {
    if (done[i]) continue;
    std::vector<size_t> same;
    std::vector<double> budgets;
    std::vector<fs::path> paths;
    for (size_t j = i; j < o.points.size(); ++j) {
      if (o.points[j].method != o.points[i].method || o.points[j].unit != o.points[i].unit ||
          o.points[j].calibrated != o.points[i].calibrated) {
        continue;
      }
      const double budget = o.points[j].budget;
      same.push_back(j);
      done[j] = true;
      budgets.push_back(o.points[j].unit == BudgetUnit::kBytes || budget > 0 ? budget
                        : budget < 0                                        ? hydra_fraction
                                                                            : 1.0 / static_cast<double>(set.size()));
      paths.push_back(bundles[j]);
    }
    MergeOptions mo;
    mo.weights = o.weights;
    mo.method = o.points[i].method;
    mo.unit = o.points[i].unit;
    mo.dtype = DType::BF16;
    mo.threads = o.threads;
    if (o.points[i].calibrated) {
      mo.calibration = stats.string();
      mo.shrinkage = o.shrinkage;
      mo.calibration_plan = o.calibration_plan;
      mo.calibration_rounds = o.calibration_rounds;
    }
    auto reports = merge(set, mo, budgets, paths);
    for (size_t j = 0; j < same.size(); ++j) merged[same[j]] = std::move(reports[j]);
  }
  for (size_t pi = 0; pi < o.points.size(); ++pi) {
    const std::string method = o.points[pi].series();
    BenchmarkPoint p;
    p.series = method;
    p.merge = std::move(merged[pi]);
    const fs::path& bundle = bundles[pi];
    auto deltas = bundle_deltas(bundle);
    double sum = 0, sum_sim = 0;
    p.min_relative = p.min_relative_similarity = INFINITY;
    for (size_t i = 0; i < tasks.size(); ++i) {
      const TaskScores sc = score(tasks[i], &deltas[i]);
      p.scores.push_back(sc.exact);
      p.relative.push_back(r.individual[i] > 0 ? sc.exact / r.individual[i] : 0.0);
      sum += p.relative.back();
      p.min_relative = std::min(p.min_relative, p.relative.back());
      p.similarity.push_back(sc.similarity);
      p.relative_similarity.push_back(r.individual_similarity[i] > 0 || !o.similarity
                                          ? sc.similarity / r.individual_similarity[i]
                                          : 0.0);
      sum_sim += p.relative_similarity.back();
      p.min_relative_similarity = std::min(p.min_relative_similarity, p.relative_similarity.back());
    }
    if (!ood.empty()) {
      double agree_sum = 0;
      for (size_t i = 0; i < ood.size(); ++i) {
        const auto got = greedy_outputs(model, ood[i], &deltas[i], o.threads);
        size_t same = 0;
        for (size_t k = 0; k < got.size(); ++k) same += got[k] == ood_own[i][k];
        p.ood_agreement.push_back(got.empty() ? 1.0 : static_cast<double>(same) / static_cast<double>(got.size()));
        agree_sum += p.ood_agreement.back();
      }
      p.mean_ood_agreement = agree_sum / static_cast<double>(ood.size());
    }
    p.mean_relative = sum / static_cast<double>(tasks.size());
    p.mean_relative_similarity = sum_sim / static_cast<double>(tasks.size());
    if (!o.similarity) p.min_relative_similarity = NAN;
    log(fmt::format("{} at storage {:.3f} ({:.3f} of a bf16 copy's bytes): mean relative score {:.3f}{}{}", method,
                    p.merge.fraction, p.merge.bf16_fraction, p.mean_relative,
                    o.similarity ? fmt::format(", edit similarity {:.3f}", p.mean_relative_similarity) : "",
                    ood.empty() ? "" : fmt::format(", out-of-distribution agreement {:.3f}", p.mean_ood_agreement)));
    r.points.push_back(std::move(p));
  }
  return r;
}

std::string BenchmarkResult::json() const {
  auto mean = [](const std::vector<double>& v) {
    double s = 0;
    for (double x : v) s += x;
    return v.empty() ? 0.0 : s / static_cast<double>(v.size());
  };
  nlohmann::ordered_json j;
  auto number = [](double x) { return std::isfinite(x) ? nlohmann::ordered_json(x) : nlohmann::ordered_json(); };
  j["set"] = {{"name", profile.name},
              {"similarity_A", number(profile.similarity_a)},
              {"similarity_B", number(profile.similarity_b)},
              {"A_drift", number(profile.a_drift)}};
  j["tasks"] = tasks.size();
  j["weights"] = weights;
  j["base_mean_score"] = mean(base);
  j["lora_mean_score"] = mean(individual);
  j["base_mean_similarity"] = number(mean(base_similarity));
  j["lora_mean_similarity"] = number(mean(individual_similarity));
  j["points"] = nlohmann::ordered_json::array();
  for (auto& p : points) {
    auto& point = j["points"].emplace_back(nlohmann::ordered_json{{"method", p.merge.method},
                           {"series", p.series},
                           {"storage_fraction", p.merge.fraction},
                           {"bf16_byte_fraction", p.merge.bf16_fraction},
                           {"bytes", p.merge.bytes},
                           {"mean_relative_score", p.mean_relative},
                           {"min_relative_score", p.min_relative},
                           {"mean_relative_similarity", number(p.mean_relative_similarity)},
                           {"min_relative_similarity", number(p.min_relative_similarity)},
                           {"mean_score", mean(p.scores)},
                           {"mean_rel_error", p.merge.mean_rel_error}});
    // Calibrated merges: mean_rel_error is in the calibrated metric.
    if (p.merge.mean_frobenius_rel_error) point["mean_frobenius_rel_error"] = *p.merge.mean_frobenius_rel_error;
    if (!p.ood_agreement.empty()) {
      point["mean_ood_agreement"] = p.mean_ood_agreement;
      point["ood_agreement"] = p.ood_agreement;  // per task
    }
    point["scores"] = p.scores;  // per task, in `per_task`'s order
  }
  j["per_task"] = nlohmann::ordered_json::array();
  for (size_t i = 0; i < tasks.size(); ++i) {
    j["per_task"].push_back({{"name", tasks[i]},
                             {"base", base[i]},
                             {"lora", individual[i]},
                             {"base_similarity", number(base_similarity[i])},
                             {"lora_similarity", number(individual_similarity[i])}});
  }
  return j.dump(2) + "\n";
}

std::string BenchmarkResult::table() const {
  double base_mean = 0, ind_mean = 0, base_sim = 0, ind_sim = 0;
  int worse = 0;
  for (size_t i = 0; i < tasks.size(); ++i) {
    base_mean += base[i] / tasks.size();
    ind_mean += individual[i] / tasks.size();
    base_sim += base_similarity[i] / tasks.size();
    ind_sim += individual_similarity[i] / tasks.size();
    worse += individual[i] <= base[i];
  }
  std::string s = fmt::format(
      "adapter set '{}': mean subspace similarity A {:.2f}, B {:.2f}; mean A drift ||A - A_init|| / ||A_init|| {}\n",
      profile.name, profile.similarity_a, profile.similarity_b,
      std::isfinite(profile.a_drift) ? fmt::format("{:.2f}", profile.a_drift) : "unknown (no lora-init)");
  const bool sim = std::isfinite(base_sim);  // scored with --similarity
  s += fmt::format("base model: mean exact match {:.1f}%{}; own adapters: {:.1f}%{} ({} of {} beat the base)\n\n",
                   100 * base_mean, sim ? fmt::format(" (edit similarity {:.3f})", base_sim) : "", 100 * ind_mean,
                   sim ? fmt::format(" ({:.3f})", ind_sim) : "", tasks.size() - worse, tasks.size());
  s += "| method | params % | bytes % of a bf16 copy | mean relative task score | worst task's relative score | ";
  s += sim ? "mean relative edit similarity | worst task's | mean rel. error |\n|---|---:|---:|---:|---:|---:|---:|---:|\n"
           : "mean rel. error |\n|---|---:|---:|---:|---:|---:|\n";
  for (auto& p : points) {
    s += fmt::format("| {} | {:.1f} | {:.1f} | {:.3f} | {:.3f} | ", p.series, 100 * p.merge.fraction,
                     100 * p.merge.bf16_fraction, p.mean_relative, p.min_relative);
    if (sim) s += fmt::format("{:.3f} | {:.3f} | ", p.mean_relative_similarity, p.min_relative_similarity);
    s += fmt::format("{:.3f} |\n", p.merge.mean_rel_error);
  }
  if (weights != "balanced") s += fmt::format("\n(every merge with --weights {})\n", weights);
  if (sim) {
    s += "\n(task score: exact match of the greedy answer; edit similarity: 1 - Levenshtein distance / the longer "
         "length, over characters, of the greedy output and the answer; both relative to each task's own adapter)\n";
  }
  return s;
}

std::string BenchmarkResult::svg() const {
  std::vector<PlotSeries> series;
  for (const auto& p : points) {
    auto it = std::find_if(series.begin(), series.end(), [&](const PlotSeries& s) { return s.name == p.series; });
    if (it == series.end()) it = series.insert(series.end(), PlotSeries{p.series, {}});
    it->points.emplace_back(p.merge.bf16_fraction, p.mean_relative);
  }
  for (auto& s : series) std::stable_sort(s.points.begin(), s.points.end());
  PlotLabels labels{fmt::format("Task quality kept by each method ({} tasks, adapter set {})", tasks.size(), profile.name),
                    "mean relative task score",
                    "relative score", ""};
  labels.x_axis = "storage (bytes as a fraction of a bf16 copy of the adapters)";
  return line_plot_svg(series, labels);
}

void write_benchmark(const fs::path& dir, const BenchmarkResult& result) {
  fs::create_directories(dir);
  write_file_atomic(dir / "demo.json", result.json());
  write_file_atomic(dir / "demo.md", result.table());
  write_file_atomic(dir / "demo.svg", result.svg());
}

}  // namespace hydraopt
