// The online task benchmark (issue 20; `hydraopt demo --online`): the
// shipped adapters arrive one at a time, in a fixed shuffled order, under a
// fixed storage cap, and five ways of keeping them are scored as they come:
//   add-none   `merge --method hydra` of the first, then `add --refit none`
//              for each next one: storage grows by each new task's factors
//              (plotted at its own storage)
//   add-refit  `add --refit all` to the cap at each arrival, the stored
//              tasks' reconstructions as their targets
//   merge      a full merge of every adapter seen so far, at the cap (needs
//              them all at hand)
//   k-merge    a K-Merge-style baseline: at most K stored merged adapters
//              (the cap's worth); a new adapter takes a free slot, else it is
//              merged into the slot whose update it is most like (cosine of
//              the dW's) by task arithmetic (the slot's mean of its tasks'
//              dW's, truncated to rank r again). Computed here, on dense
//              updates, independently of the library's merges.
//   add-none-K `merge --method hydra` of the first K arrivals (K the cap,
//              all at hand), then `add --refit none` for each next one: a
//              bundle shipped with K tasks, grown on the device.
#include <fmt/format.h>
#include <omp.h>
#include <unistd.h>

#include <Eigen/SVD>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "hydraopt/benchmark.h"
#include "hydraopt/bundle.h"
#include "hydraopt/edit.h"
#include "hydraopt/error.h"
#include "hydraopt/plot.h"
#include "hydraopt/tensors.h"
#include "demo_files.h"

namespace hydraopt {

namespace fs = std::filesystem;
using Eigen::MatrixXd;

namespace {

// The K-Merge-style store: slots of dense rank-r updates per module.
class KMerge {
 public:
  explicit KMerge(int slots) : slots_(slots) {}

  void add(const std::string& task, const Adapter& a) {
    std::map<std::string, MatrixXd> dw;
    for (const auto& m : a.modules()) {
      const ModuleLora l = a.load(m.name);
      dw[m.name] = l.scale * l.B * l.A;
      rank_[m.name] = std::max<Eigen::Index>(rank_[m.name], l.rank());
    }
    if (static_cast<int>(slot_.size()) < slots_) {
      slot_of_[task] = slot_.size();
      slot_.push_back({std::move(dw), 1});
      return;
    }
    size_t best = 0;
    double best_cos = -2;
    for (size_t s = 0; s < slot_.size(); ++s) {
      double dot = 0, n1 = 0, n2 = 0;
      for (auto& [name, x] : dw) {
        auto it = slot_[s].dw.find(name);
        n1 += x.squaredNorm();
        if (it == slot_[s].dw.end()) continue;
        dot += x.cwiseProduct(it->second).sum();
      }
      for (auto& [name, y] : slot_[s].dw) n2 += y.squaredNorm();
      const double c = n1 > 0 && n2 > 0 ? dot / std::sqrt(n1 * n2) : 0;
      if (c > best_cos) best_cos = c, best = s;
    }
    Slot& s = slot_[best];
    const double n = s.count;
    for (auto& [name, x] : dw) {
      MatrixXd& y = s.dw[name];
      if (y.size() == 0) y = MatrixXd::Zero(x.rows(), x.cols());
      y = truncated((n * y + x) / (n + 1), rank_[name]);  // a running mean, stored at rank r
    }
    ++s.count;
    slot_of_[task] = best;
  }

  Deltas deltas(const std::string& task) const {
    Deltas d;
    for (auto& [name, y] : slot_[slot_of_.at(task)].dw) {
      Eigen::BDCSVD<MatrixXd> svd(y, Eigen::ComputeThinU | Eigen::ComputeThinV);
      const Eigen::Index r = std::min<Eigen::Index>(rank_.at(name), svd.singularValues().size());
      d[name] = {(svd.matrixU().leftCols(r) * svd.singularValues().head(r).asDiagonal()).cast<float>(),
                 MatrixXd(svd.matrixV().leftCols(r).transpose()).cast<float>()};
    }
    return d;
  }
  size_t slots_used() const { return slot_.size(); }

 private:
  static MatrixXd truncated(const MatrixXd& y, Eigen::Index r) {
    Eigen::BDCSVD<MatrixXd> svd(y, Eigen::ComputeThinU | Eigen::ComputeThinV);
    r = std::min<Eigen::Index>(r, svd.singularValues().size());
    return svd.matrixU().leftCols(r) * svd.singularValues().head(r).asDiagonal() * svd.matrixV().leftCols(r).transpose();
  }
  struct Slot {
    std::map<std::string, MatrixXd> dw;
    int count = 0;
  };
  int slots_;
  std::vector<Slot> slot_;
  std::map<std::string, size_t> slot_of_;
  std::map<std::string, Eigen::Index> rank_;
};

// A permutation of 0..n-1 from `seed` (Fisher-Yates on mt19937_64, whose
// output the standard fixes: the same order everywhere).
std::vector<size_t> shuffled(size_t n, uint64_t seed) {
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  std::mt19937_64 g(seed);
  for (size_t i = n; i > 1; --i) std::swap(order[i - 1], order[g() % i]);
  return order;
}

}  // namespace

OnlineResult run_online(const OnlineOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  auto log = [&](const std::string& s) {
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (o.log) o.log(fmt::format("[{:6.1f} s] {}", sec, s));
  };
  if (o.cap_adapters < 1) throw Error("--online-cap must be at least 1 adapter");
  if (o.every < 1) throw Error("--online-every must be at least 1");
  if (o.arrivals < 0) throw Error("--online-arrivals must be at least 0 (0: all)");
  Model model = Model::open(o.assets / "model");
  const AdapterSet all = AdapterSet::open(demo_files::adapter_dirs(demo_files::set_dir(o.assets, o.set)));
  const size_t n = all.size();
  const size_t arriving = o.arrivals > 0 ? std::min(n, static_cast<size_t>(o.arrivals)) : n;
  OnlineResult r;
  r.cap_adapters = o.cap_adapters;
  r.adapter_params = all.original_params() / static_cast<int64_t>(n);
  const int64_t cap = r.adapter_params * o.cap_adapters;
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < n; ++i) index[all.task(i).name()] = i;
  for (size_t t : shuffled(n, o.seed)) r.order.push_back(all.task(t).name());
  r.order.resize(arriving);
  std::vector<TaskExamples> tasks(n);
  std::vector<double> own(n);
  for (const std::string& name : r.order) {
    const size_t i = index[name];
    tasks[i] = load_task(o.assets / "tasks" / name, o.limit);
    const Deltas d = deltas_from_adapter(all.task(i));
    own[i] = task_score(model, tasks[i], &d, o.threads);
  }
  log(fmt::format("{} adapters scored on their own tasks; cap {} adapters ({} params)", arriving, o.cap_adapters, cap));

  const demo_files::Scratch scratch("online");
  const fs::path& tmp = scratch.path();
  const fs::path a_path = tmp / "add-none.safetensors", b_path = tmp / "add-refit.safetensors",
                 c_path = tmp / "merge.safetensors", d_path = tmp / "add-none-k.safetensors";
  r.variants = {{"add-none", {}}, {"add-refit", {}}, {"merge", {}}, {"k-merge", {}},
                {fmt::format("add-none-{}", o.cap_adapters), {}}};
  const size_t k_first = static_cast<size_t>(o.cap_adapters);
  MergeOptions hydra;  // the hydra point: add-none's and add-none-K's start
  hydra.method = "hydra";
  hydra.threads = o.threads;
  KMerge kmerge(o.cap_adapters);
  std::vector<std::string> seen;
  for (size_t k = 0; k < arriving; ++k) {
    const std::string& name = r.order[k];
    const Adapter& a = all.task(index[name]);
    seen.push_back(name);
    const AdapterSet one({a});
    const double fraction = std::min(1.0, static_cast<double>(cap) / static_cast<double>(seen.size() * r.adapter_params));
    MergeOptions mo;
    mo.method = o.method;
    mo.threads = o.threads;
    mo.budget = fraction;
    if (k == 0) {
      merge(one, hydra, a_path);
      merge(one, mo, b_path);
    } else {
      add_adapters(a_path, one, {}, a_path);
      EditOptions refit;
      refit.refit = "all";
      refit.budget = fraction;
      refit.threads = o.threads;
      add_adapters(b_path, one, refit, b_path);
    }
    kmerge.add(name, a);
    const bool scored = (k + 1) % static_cast<size_t>(o.every) == 0 || k + 1 == arriving;
    auto seen_set = [&] {
      std::vector<std::string> specs;
      for (auto& s : seen) specs.push_back(all.task(index[s]).dir().string());
      return AdapterSet::open(specs);
    };
    if (k + 1 > k_first) add_adapters(d_path, one, {}, d_path);
    else if (scored || k + 1 == k_first) merge(seen_set(), hydra, d_path);
    if (!scored) continue;

    merge(seen_set(), mo, c_path);
    // Scores: each seen task by each variant, relative to its own adapter's.
    auto score = [&](OnlineVariant& v, const std::function<Deltas(const std::string&)>& deltas, int64_t params) {
      double sum = 0;
      for (auto& s : seen) {
        const size_t i = index[s];
        const Deltas d = deltas(s);
        sum += own[i] > 0 ? task_score(model, tasks[i], &d, o.threads) / own[i] : 0.0;
      }
      v.points.push_back({k + 1, static_cast<double>(params) / static_cast<double>(r.adapter_params),
                          sum / static_cast<double>(seen.size())});
    };
    auto score_bundle = [&](OnlineVariant& v, const fs::path& p) {
      const Bundle b = Bundle::open(p);
      const std::vector<Deltas> ds = bundle_deltas(p);
      score(v, [&](const std::string& s) { return ds[b.task_index(s)]; }, b.params());
    };
    score_bundle(r.variants[0], a_path);
    score_bundle(r.variants[1], b_path);
    score_bundle(r.variants[2], c_path);
    score(r.variants[3], [&](const std::string& s) { return kmerge.deltas(s); },
          static_cast<int64_t>(kmerge.slots_used()) * r.adapter_params);
    score_bundle(r.variants[4], d_path);
    std::string line = fmt::format("{} arrivals:", k + 1);
    for (auto& v : r.variants) {
      line += fmt::format(" {} {:.3f} ({:.1f} adapters)", v.name, v.points.back().mean_relative, v.points.back().storage);
    }
    log(line);
  }
  return r;
}

std::string OnlineResult::json() const {
  nlohmann::ordered_json j;
  j["cap_adapters"] = cap_adapters;
  j["adapter_params"] = adapter_params;
  j["order"] = order;
  j["variants"] = nlohmann::ordered_json::array();
  for (auto& v : variants) {
    nlohmann::ordered_json pts = nlohmann::ordered_json::array();
    for (auto& p : v.points) {
      pts.push_back({{"arrivals", p.arrivals}, {"storage_adapters", p.storage}, {"mean_relative_score", p.mean_relative}});
    }
    j["variants"].push_back({{"name", v.name}, {"points", pts}});
  }
  return j.dump(2) + "\n";
}

std::string OnlineResult::table() const {
  std::string s = fmt::format("online: {} adapters arriving in a fixed shuffled order, cap {} adapters' storage\n\n",
                              order.size(), cap_adapters);
  s += "| arrivals |";
  for (auto& v : variants) s += fmt::format(" {} score | {} storage |", v.name, v.name);
  s += "\n|---:|";
  for (size_t i = 0; i < variants.size(); ++i) s += "---:|---:|";
  s += "\n";
  for (size_t k = 0; !variants.empty() && k < variants[0].points.size(); ++k) {
    s += fmt::format("| {} |", variants[0].points[k].arrivals);
    for (auto& v : variants) s += fmt::format(" {:.3f} | {:.1f} |", v.points[k].mean_relative, v.points[k].storage);
    s += "\n";
  }
  s += "\n(score: mean relative task score over the tasks seen so far; storage: in adapters' worth of parameters)\n";
  return s;
}

std::string OnlineResult::svg() const {
  std::vector<PlotSeries> series;
  for (auto& v : variants) {
    PlotSeries ps{v.name, {}};
    for (auto& p : v.points) ps.points.emplace_back(static_cast<double>(p.arrivals), p.mean_relative);
    series.push_back(std::move(ps));
  }
  return line_plot_svg(series, {fmt::format("Adapters arriving one at a time, cap {} adapters", cap_adapters),
                                "mean relative task score (tasks seen)", "relative score", "adapters arrived"});
}

void write_online(const fs::path& dir, const OnlineResult& result) {
  fs::create_directories(dir);
  write_file_atomic(dir / "online.json", result.json());
  write_file_atomic(dir / "online.md", result.table());
  write_file_atomic(dir / "online.svg", result.svg());
}

}  // namespace hydraopt
