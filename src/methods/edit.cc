// Tasks added to or removed from a stored module fit (methods/edit.h).
#include "methods/edit.h"

#include <limits>
#include <map>
#include <optional>
#include <set>

#include "core/rounding.h"
#include "linalg/factored.h"
#include "methods/fit_error.h"
#include "methods/structures.h"

namespace hydraopt {

using Eigen::MatrixXd;

namespace {

// The stored fit seen with its shared side as bodies: as stored, or
// transposed for the families that share B. Matrices are copied out one at
// a time, so only the few a new task is tried against are transposed.
struct Oriented {
  const ModuleFit& f;
  bool t;
  int head_of(size_t i) const { return t ? f.body_of[i] : f.head_of[i]; }
  int body_of(size_t i) const { return t ? f.head_of[i] : f.body_of[i]; }
  MatrixXd head(int g) const { return t ? MatrixXd(f.bodies[g].transpose()) : f.heads[g]; }
  MatrixXd body(int b) const { return t ? MatrixXd(f.heads[b].transpose()) : f.bodies[b]; }
};

// One task's fit: head, optional core, body (in the oriented problem).
ModuleFit single(MatrixXd head, std::optional<MatrixXd> core, MatrixXd body, bool diagonal, double scale) {
  ModuleFit c;
  c.heads = {std::move(head)};
  c.bodies = {std::move(body)};
  c.head_of = {0};
  c.body_of = {0};
  c.core_of = {-1};
  c.scale = {scale};
  c.diagonal_cores = diagonal;
  if (core) {
    c.cores = {std::move(*core)};
    c.core_of = {0};
  }
  return c;
}

// A way to store the new task: its one-task fit, which stored head and body
// it uses (-1: its own, in `fit`), and its error.
struct Candidate {
  ModuleFit fit;
  int head = -1, body = -1;
  double err2 = std::numeric_limits<double>::infinity();
};


// How a new task is stored, by structure (methods/edit.h).
enum class Mode {
  kOwnFactors,    // exact: its A and B
  kHeadPerTask,   // a new head on the best stored body
  kOwnHeadCore,   // its s B as head, a new core on the body
  kCorePerPair,   // a new core on the best stored (head, body) pair
  kScalePerPair,  // the best stored pair, with a least-squares scale
};

Mode mode_of(const StructureSpec& spec, size_t tasks) {
  const Family family = shares_b(spec.family) ? mirror(spec.family) : spec.family;
  const bool head_per_task = group_count(spec.groups, tasks) == static_cast<int>(tasks);
  switch (family) {
    case Family::kExact: return Mode::kOwnFactors;
    case Family::kSharedA: return head_per_task ? Mode::kHeadPerTask : Mode::kScalePerPair;
    case Family::kMultiA:
    case Family::kAvgA: return Mode::kHeadPerTask;
    case Family::kSharedACore: return head_per_task ? Mode::kOwnHeadCore : Mode::kCorePerPair;
    case Family::kJdFull:
    case Family::kJdDiag: return Mode::kCorePerPair;
    case Family::kMerged: return Mode::kScalePerPair;
    default: break;
  }
  throw std::logic_error("add_task: unhandled structure family");
}

}  // namespace

StoredReads add_task_reads(const ModuleFit& f, const StructureSpec& spec) {
  StoredReads reads{std::vector<bool>(f.heads.size(), false), std::vector<bool>(f.bodies.size(), false)};
  const Mode mode = mode_of(spec, f.tasks());
  if (mode == Mode::kOwnFactors) return reads;
  const bool t = shares_b(spec.family);
  const bool pairs = mode == Mode::kCorePerPair || mode == Mode::kScalePerPair;
  for (size_t i = 0; i < f.tasks(); ++i) {
    (t ? reads.heads : reads.bodies)[t ? f.head_of[i] : f.body_of[i]] = true;
    if (pairs) (t ? reads.bodies : reads.heads)[t ? f.body_of[i] : f.head_of[i]] = true;
  }
  return reads;
}

AddedTask add_task(ModuleFit* fit, StructureSpec* spec, const ModuleLora& task, DType dtype) {
  ModuleFit& f = *fit;
  const size_t n = f.tasks();
  if (n == 0) throw std::logic_error("add_task: a stored fit without tasks");
  AddedTask out;
  const Mode mode = mode_of(*spec, n);
  if (mode == Mode::kOwnFactors) {
    f.heads.push_back(round_to_dtype(task.B, dtype));
    f.bodies.push_back(round_to_dtype(task.A, dtype));
    f.head_of.push_back(static_cast<int>(f.heads.size()) - 1);
    f.body_of.push_back(static_cast<int>(f.bodies.size()) - 1);
    f.core_of.push_back(-1);
    f.scale.push_back(task.scale);
    const ModuleProblem p{{task}, {1.0}};
    const std::vector<double> norms = update_norms2(p);
    out.norm2 = norms[0];
    out.err2 = fit_errors2(p, single(f.heads.back(), std::nullopt, f.bodies.back(), false, task.scale), &norms)[0];
    return out;
  }
  const bool t = shares_b(spec->family);
  const Oriented o{f, t};
  const ModuleProblem p{{t ? ModuleLora{task.B.transpose(), task.A.transpose(), task.scale} : task}, {1.0}};
  const ModuleLora& l = p.loras[0];
  const std::vector<double> norms = update_norms2(p);
  out.norm2 = norms[0];

  std::set<int> bodies;
  std::set<std::pair<int, int>> pairs;  // (head, body) pairs the stored tasks use
  for (size_t i = 0; i < n; ++i) {
    bodies.insert(o.body_of(i));
    pairs.insert({o.head_of(i), o.body_of(i)});
  }
  // Grams (and their pseudo-inverses) of the stored matrices tried, once
  // each: they cost more than the new task's own products.
  struct Side {
    MatrixXd m, gram, gram_pinv;
  };
  auto make_side = [](MatrixXd m, bool rows) {
    MatrixXd g = rows ? MatrixXd(m * m.transpose()) : MatrixXd(m.transpose() * m);
    MatrixXd gp = linalg::psd_pinv(g);
    return Side{std::move(m), std::move(g), std::move(gp)};
  };
  std::map<int, Side> heads_seen, bodies_seen;
  auto side = [&](std::map<int, Side>& seen, int j, MatrixXd m, bool rows) -> const Side& {
    auto it = seen.find(j);
    if (it != seen.end()) return it->second;
    return seen.emplace(j, make_side(std::move(m), rows)).first->second;
  };
  auto body_side = [&](int b) -> const Side& { return side(bodies_seen, b, o.body(b), true); };
  auto head_side = [&](int g) -> const Side& { return side(heads_seen, g, o.head(g), false); };
  Candidate best;
  auto consider = [&](Candidate c, const MatrixXd& hh, const MatrixXd& rr) {
    c.err2 = fit_error2(p, c.fit, 0, norms[0], hh, rr);
    if (!best.fit.tasks() || c.err2 < best.err2) best = std::move(c);  // (a NaN from non-finite stored values: kept, reported)
  };
  const MatrixXd left = p.left(0);  // s B (out x r)
  switch (mode) {
    case Mode::kHeadPerTask:
      // H = s B A R^T (R R^T)^+, the least-squares head on the body.
      for (int b : bodies) {
        const Side& r = body_side(b);
        MatrixXd h = round_to_dtype(left * (l.A * r.m.transpose()) * r.gram_pinv, dtype);
        const MatrixXd hh = h.transpose() * h;
        consider(Candidate{single(std::move(h), std::nullopt, r.m, false, 1.0), -1, b}, hh, r.gram);
      }
      break;
    case Mode::kOwnHeadCore:
    case Mode::kCorePerPair: {
      // C = (H^T H)^+ H^T s B A R^T (R R^T)^+ given the head: with the
      // task's own s B as head, H C R is the update's projection on the
      // body, the best any head and core can do. A diagonal core is
      // solve_cores' (methods/als.cc).
      std::vector<std::pair<int, int>> tried(pairs.begin(), pairs.end());
      if (mode == Mode::kOwnHeadCore) {
        tried.clear();
        for (int b : bodies) tried.push_back({-1, b});
      }
      const Side own = mode == Mode::kOwnHeadCore ? make_side(round_to_dtype(left, dtype), false) : Side{};
      for (auto [g, b] : tried) {
        const Side& h = g < 0 ? own : head_side(g);
        const Side& r = body_side(b);
        Candidate c{single(h.m, MatrixXd(), r.m, f.diagonal_cores, 1.0), g, b};
        if (f.diagonal_cores) {
          c.fit.cores[0] = MatrixXd::Zero(h.m.cols(), 1);
          solve_cores(p, &c.fit);
        } else {
          c.fit.cores[0] = h.gram_pinv * (h.m.transpose() * left) * (l.A * r.m.transpose()) * r.gram_pinv;
        }
        c.fit.cores[0] = round_to_dtype(c.fit.cores[0], dtype);
        consider(std::move(c), h.gram, r.gram);
      }
      break;
    }
    case Mode::kScalePerPair:
      // The scale <s B A, H R> / ||H R||^2.
      for (auto [g, b] : pairs) {
        const Side &h = head_side(g), &r = body_side(b);
        const double num = l.scale * (MatrixXd(l.B.transpose() * h.m).cwiseProduct(MatrixXd(l.A * r.m.transpose()))).sum();
        const double den = h.gram.cwiseProduct(r.gram).sum();
        consider(Candidate{single(h.m, std::nullopt, r.m, false, den > 0 ? num / den : 0.0), g, b}, h.gram, r.gram);
      }
      break;
    case Mode::kOwnFactors: break;
  }
  if (!best.fit.tasks()) throw std::logic_error("add_task: no candidate");

  // Append the new matrices in the stored orientation.
  ModuleFit& c = best.fit;
  auto append = [](std::vector<MatrixXd>& list, MatrixXd m) {
    list.push_back(std::move(m));
    return static_cast<int>(list.size()) - 1;
  };
  int head = best.head, body = best.body, core = -1;
  if (head < 0) head = t ? append(f.bodies, c.heads[0].transpose()) : append(f.heads, c.heads[0]);
  if (!c.cores.empty()) {
    core = append(f.cores, t && !c.diagonal_cores ? MatrixXd(c.cores[0].transpose()) : c.cores[0]);
  }
  f.head_of.push_back(t ? body : head);
  f.body_of.push_back(t ? head : body);
  f.core_of.push_back(core);
  f.scale.push_back(c.scale[0]);
  out.err2 = best.err2;
  // The layout now has a head per task (or for multi-*, as many bodies as
  // before, shared): say so in the spec.
  const Family family = t ? mirror(spec->family) : spec->family;
  if (family == Family::kMultiA) {
    if (spec->groups <= 0) spec->groups = static_cast<int>(bodies.size());
  } else if (mode == Mode::kHeadPerTask || mode == Mode::kOwnHeadCore) {
    spec->groups = 0;
  }
  return out;
}

KeptMatrices remove_tasks(ModuleFit* fit, const std::vector<bool>& drop) {
  ModuleFit& f = *fit;
  if (drop.size() != f.tasks()) throw std::logic_error("remove_tasks: one flag per task");
  KeptMatrices kept_matrices;
  auto prune = [&](std::vector<MatrixXd>& list, std::vector<int>& of, std::vector<int>& kept_list) {
    std::vector<int> kept(list.size(), 0), dropped(list.size(), 0);
    for (size_t i = 0; i < of.size(); ++i) {
      if (of[i] >= 0) ++(drop[i] ? dropped : kept)[of[i]];
    }
    std::vector<int> index(list.size(), -1);
    std::vector<MatrixXd> out;
    for (size_t j = 0; j < list.size(); ++j) {
      if (kept[j] == 0 && dropped[j] > 0) continue;  // only removed tasks used it
      index[j] = static_cast<int>(out.size());
      out.push_back(std::move(list[j]));
      kept_list.push_back(static_cast<int>(j));
    }
    list = std::move(out);
    std::vector<int> left;
    for (size_t i = 0; i < of.size(); ++i) {
      if (!drop[i]) left.push_back(of[i] < 0 ? -1 : index[of[i]]);
    }
    of = std::move(left);
  };
  prune(f.heads, f.head_of, kept_matrices.heads);
  prune(f.cores, f.core_of, kept_matrices.cores);
  prune(f.bodies, f.body_of, kept_matrices.bodies);
  std::vector<double> scale;
  for (size_t i = 0; i < drop.size(); ++i) {
    if (!drop[i]) scale.push_back(f.scale[i]);
  }
  f.scale = std::move(scale);
  return kept_matrices;
}

}  // namespace hydraopt
