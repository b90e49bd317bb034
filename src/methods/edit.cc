// Tasks added to or removed from a stored module fit (methods/edit.h).
#include "methods/edit.h"

#include <limits>
#include <optional>
#include <set>

#include "core/rounding.h"
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

// <s B A, H R> / ||H R||^2 from rank-sized products: the scale that fits
// the update best with the stored pair (H, R).
double least_squares_scale(const ModuleLora& l, const MatrixXd& h, const MatrixXd& r) {
  const double num = l.scale * (MatrixXd(l.B.transpose() * h).cwiseProduct(MatrixXd(l.A * r.transpose()))).sum();
  const double den = MatrixXd(h.transpose() * h).cwiseProduct(MatrixXd(r * r.transpose())).sum();
  return den > 0 ? num / den : 0.0;
}

}  // namespace

AddedTask add_task(ModuleFit* fit, StructureSpec* spec, const ModuleLora& task, DType dtype) {
  ModuleFit& f = *fit;
  const size_t n = f.tasks();
  if (n == 0) throw std::logic_error("add_task: a stored fit without tasks");
  AddedTask out;
  if (spec->family == Family::kExact) {
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
  const Family family = t ? mirror(spec->family) : spec->family;
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
  const bool head_per_task = group_count(spec->groups, n) == static_cast<int>(n);
  Candidate best;
  auto consider = [&](Candidate c) {
    c.err2 = fit_errors2(p, c.fit, &norms)[0];
    if (c.err2 < best.err2) best = std::move(c);
  };
  if (family == Family::kSharedACore && head_per_task) {
    // The task's own s B as head: the core solved on it is the projection of
    // the update on the body, the best any head and core can do.
    for (int b : bodies) {
      const MatrixXd r = o.body(b);
      Candidate c{single(round_to_dtype(p.left(0), dtype), MatrixXd(MatrixXd::Zero(l.rank(), r.rows())), r, false, 1.0), -1, b};
      solve_cores(p, &c.fit);
      c.fit.cores[0] = round_to_dtype(c.fit.cores[0], dtype);
      consider(std::move(c));
    }
  } else if ((family == Family::kSharedA && head_per_task) || family == Family::kMultiA || family == Family::kAvgA) {
    for (int b : bodies) {
      const MatrixXd r = o.body(b);
      Candidate c{single(MatrixXd::Zero(p.out(), r.rows()), std::nullopt, r, false, 1.0), -1, b};
      solve_heads(p, &c.fit);  // the head carries the scale
      c.fit.heads[0] = round_to_dtype(c.fit.heads[0], dtype);
      consider(std::move(c));
    }
  } else if (family == Family::kSharedACore || family == Family::kJdFull || family == Family::kJdDiag) {
    for (auto [g, b] : pairs) {
      const MatrixXd h = o.head(g), r = o.body(b);
      const bool diag = f.diagonal_cores;
      MatrixXd core = diag ? MatrixXd::Zero(h.cols(), 1) : MatrixXd::Zero(h.cols(), r.rows());
      Candidate c{single(h, std::move(core), r, diag, 1.0), g, b};
      solve_cores(p, &c.fit);
      c.fit.cores[0] = round_to_dtype(c.fit.cores[0], dtype);
      consider(std::move(c));
    }
  } else if (family == Family::kSharedA || family == Family::kMerged) {
    for (auto [g, b] : pairs) {
      const MatrixXd h = o.head(g), r = o.body(b);
      const double s = least_squares_scale(l, h, r);
      consider(Candidate{single(h, std::nullopt, r, false, s), g, b});
    }
  } else {
    throw std::logic_error("add_task: unhandled structure family");
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
  if (head_per_task && family != Family::kMultiA) spec->groups = 0;
  if (family == Family::kMultiA && spec->groups <= 0) spec->groups = static_cast<int>(bodies.size());
  return out;
}

void remove_tasks(ModuleFit* fit, const std::vector<bool>& drop) {
  ModuleFit& f = *fit;
  if (drop.size() != f.tasks()) throw std::logic_error("remove_tasks: one flag per task");
  auto prune = [&](std::vector<MatrixXd>& list, std::vector<int>& of) {
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
    }
    list = std::move(out);
    std::vector<int> left;
    for (size_t i = 0; i < of.size(); ++i) {
      if (!drop[i]) left.push_back(of[i] < 0 ? -1 : index[of[i]]);
    }
    of = std::move(left);
  };
  prune(f.heads, f.head_of);
  prune(f.cores, f.core_of);
  prune(f.bodies, f.body_of);
  std::vector<double> scale;
  for (size_t i = 0; i < drop.size(); ++i) {
    if (!drop[i]) scale.push_back(f.scale[i]);
  }
  f.scale = std::move(scale);
}

}  // namespace hydraopt
