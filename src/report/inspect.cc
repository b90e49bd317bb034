#include "hydraopt/inspect.h"

#include <fmt/format.h>

#include <cmath>
#include <exception>
#include <nlohmann/json.hpp>

#include "linalg/subspace.h"
#include "util/blas_threads.h"

namespace hydraopt {

Inspection inspect(const AdapterSet& set) {
  Inspection x;
  for (const auto& t : set.tasks()) {
    x.tasks.push_back({t.name(), t.rank(), t.alpha(), t.dtype(),
                       static_cast<int64_t>(t.modules().size()), t.params()});
  }
  const auto& mods = set.modules();
  x.modules.resize(mods.size());
  std::exception_ptr failure;
  util::single_threaded_blas();
#pragma omp parallel for schedule(dynamic)
  for (size_t m = 0; m < mods.size(); ++m) {
    try {
      ModuleSummary& s = x.modules[m];
      s.name = mods[m].name;
      s.in = mods[m].in;
      s.out = mods[m].out;
      auto factors = set.load(m);
      std::vector<Eigen::MatrixXd> qa, qb;
      for (size_t i = 0; i < factors.size(); ++i) {
        int64_t r = factors[i].rank();
        if (r == 0) continue;
        s.min_rank = s.tasks == 0 ? r : std::min(s.min_rank, r);
        s.max_rank = std::max(s.max_rank, r);
        ++s.tasks;
        qa.push_back(linalg::column_basis(factors[i].A.transpose()));
        qb.push_back(linalg::column_basis(factors[i].B));
      }
      s.similarity_a = linalg::mean_pairwise_similarity(qa);
      s.similarity_b = linalg::mean_pairwise_similarity(qb);
    } catch (...) {
#pragma omp critical
      if (!failure) failure = std::current_exception();
    }
  }
  if (failure) std::rethrow_exception(failure);
  return x;
}

namespace {
nlohmann::json number_or_null(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(); }
}  // namespace

std::string inspection_json(const Inspection& x) {
  nlohmann::ordered_json j;
  j["tasks"] = nlohmann::ordered_json::array();
  for (auto& t : x.tasks) {
    j["tasks"].push_back({{"name", t.name},
                          {"rank", t.rank},
                          {"alpha", t.alpha},
                          {"dtype", dtype_name(t.dtype)},
                          {"params", t.params},
                          {"modules", t.modules}});
  }
  j["modules"] = nlohmann::ordered_json::array();
  for (auto& m : x.modules) {
    j["modules"].push_back({{"name", m.name},
                            {"in", m.in},
                            {"out", m.out},
                            {"tasks", m.tasks},
                            {"min_rank", m.min_rank},
                            {"max_rank", m.max_rank},
                            {"similarity_A", number_or_null(m.similarity_a)},
                            {"similarity_B", number_or_null(m.similarity_b)}});
  }
  return j.dump(2) + "\n";
}

std::string inspection_table(const Inspection& x) {
  size_t wn = 4;
  for (auto& t : x.tasks) wn = std::max(wn, t.name.size());
  std::string s = fmt::format("{} task(s)\n{:<{}}  {:>5}  {:>7}  {:>5}  {:>7}  {:>12}\n", x.tasks.size(),
                              "task", wn, "rank", "alpha", "dtype", "modules", "params");
  for (auto& t : x.tasks) {
    s += fmt::format("{:<{}}  {:>5}  {:>7.4g}  {:>5}  {:>7}  {:>12}\n", t.name, wn, t.rank, t.alpha,
                     dtype_name(t.dtype), t.modules, t.params);
  }
  size_t wm = 6;
  for (auto& m : x.modules) wm = std::max(wm, m.name.size());
  s += fmt::format("\n{} module(s); similarity = mean over task pairs of ||Qi^T Qj||^2 / min(ri, rj), 0..1\n",
                   x.modules.size());
  s += fmt::format("{:<{}}  {:>6}  {:>6}  {:>7}  {:>5}  {:>6}  {:>6}\n", "module", wm, "in", "out", "ranks",
                   "tasks", "sim_A", "sim_B");
  auto sim = [](double v) { return std::isfinite(v) ? fmt::format("{:.3f}", v) : std::string("-"); };
  for (auto& m : x.modules) {
    std::string ranks = m.min_rank == m.max_rank ? fmt::format("{}", m.min_rank)
                                                 : fmt::format("{}-{}", m.min_rank, m.max_rank);
    s += fmt::format("{:<{}}  {:>6}  {:>6}  {:>7}  {:>5}  {:>6}  {:>6}\n", m.name, wm, m.in, m.out, ranks,
                     m.tasks, sim(m.similarity_a), sim(m.similarity_b));
  }
  return s;
}

}  // namespace hydraopt
