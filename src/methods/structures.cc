// Every structure family's fit (methods/structures.h). One file, a little
// over 500 lines, because the fits share ModuleFitter's cached subspaces,
// clusterings and the helpers above them; ALS is in als.cc.
#include "methods/structures.h"

#include <Eigen/QR>

#include <algorithm>
#include <cmath>
#include <map>

#include "hydraopt/error.h"
#include "core/rounding.h"
#include "util/memory.h"
#include "util/parallel.h"

namespace hydraopt {

using Eigen::Index;
using Eigen::MatrixXd;
using Eigen::VectorXd;

namespace {


// s B (A V): a task's update in the basis V of a body (its head).
MatrixXd head(const ModuleLora& l, const MatrixXd& v) { return l.scale * (l.B * (l.A * v)); }
MatrixXd head(const ModuleLoraT& l, const MatrixXd& v) {  // the same bits (see order_free_product)
  if (!linalg::order_free_product(l.rank(), l.At.rows(), v.cols()) ||
      !linalg::order_free_product(l.Bt.cols(), l.rank(), v.cols())) {
    return head(ModuleLora{l.At.transpose(), l.Bt.transpose(), l.scale}, v);
  }
  return l.scale * (l.Bt.transpose() * (l.At.transpose() * v));
}

// Pads m with zero rows (or columns) to exactly k, so stored sizes match the spec.
MatrixXd pad_rows(const MatrixXd& m, Index k) {
  MatrixXd out = MatrixXd::Zero(k, m.cols());
  out.topRows(std::min(k, m.rows())) = m.topRows(std::min(k, m.rows()));
  return out;
}

}  // namespace

ModuleFitter::ModuleFitter(const ModuleProblem& p, FitOptions o) : p_(p), o_(std::move(o)) {}
ModuleFitter::~ModuleFitter() = default;

ModuleShape shape_of(const ModuleProblem& p) {
  ModuleShape m{p.in(), p.out(), {}};
  for (auto& l : p.loras) m.ranks.push_back(l.rank());
  return m;
}

ModuleShape ModuleFitter::shape() const { return shape_of(p_); }

namespace {

// The stack T of sqrt(w_i) S_i A_i with S_i^T S_i = (s_i B_i)^T (s_i B_i):
// its right singular vectors are those of the stack of sqrt(w_i) dW_i, at
// a rank-sized cost per task. Built task by task: a core from the task's
// B, then its rows from its A.
class WeightedStack {
 public:
  explicit WeightedStack(const ModuleShape& m) : cores_(m.ranks.size()), at_(task_offsets(m)) {}
  Index rows() const { return at_.back(); }
  void set_core(size_t i, const ModuleLora& l, double weight) {  // left core of s B: |s| times B's
    if (l.rank() > 0) cores_[i] = std::sqrt(weight) * std::abs(l.scale) * linalg::left_core(l.B);
  }
  void set_core(size_t i, const ModuleLoraT& l, double weight) {  // the same from B^T, bit for bit
    if (l.rank() > 0) cores_[i] = std::sqrt(weight) * std::abs(l.scale) * linalg::left_core_transposed(l.Bt);
  }
  /// Task i's rows of T in the precision of `t` (the product too), from A
  /// or (transposed) from A^T: the same products.
  template <typename Matrix>
  void fill(Matrix& t, size_t i, const MatrixXd& a) const {
    using Scalar = typename Matrix::Scalar;
    if (at_[i + 1] == at_[i]) return;
    t.middleRows(at_[i], at_[i + 1] - at_[i]).noalias() =
        cores_[i].template cast<Scalar>() * a.template cast<Scalar>();
  }
  template <typename Matrix>
  void fill_transposed(Matrix& t, size_t i, const MatrixXd& at) const {
    using Scalar = typename Matrix::Scalar;
    if (at_[i + 1] == at_[i]) return;
    if (!linalg::order_free_product(at.cols(), at.cols(), at.rows())) return fill(t, i, MatrixXd(at.transpose()));
    t.middleRows(at_[i], at_[i + 1] - at_[i]).noalias() =
        cores_[i].template cast<Scalar>() * at.template cast<Scalar>().transpose();
  }

 private:
  std::vector<MatrixXd> cores_;
  std::vector<Index> at_;  // first row of each task's block
};

// Columns of the shared-body subspace to solve for, for shared rank k:
// k, or the planner's widest body (FitOptions::body_width) if wider, within
// min(sum of ranks, in), the most there are.
int64_t body_columns(const ModuleShape& m, const FitOptions& o, int64_t k) {
  return std::min(std::min(m.rank_sum(), m.in), std::max(k, o.body_width * m.max_rank()));
}

}  // namespace

const linalg::Subspace& ModuleFitter::right(int64_t k) {
  if (k > right_rank()) throw std::logic_error("shared rank exceeds the data's rank");
  // Solved at body_columns(k) columns and kept by that width, so a fit's
  // body does not depend on what else this fitter fitted before it.
  const ModuleShape m = shape();
  const int64_t cols = body_columns(m, o_, k);
  auto found = right_.find(cols);
  if (found == right_.end()) {
    // T held in single precision, as the range finder uses it; in double
    // only if it asks (nearly exact fits).
    const size_t n = p_.tasks();
    WeightedStack stack(m);
    util::parallel_for(n, [&](size_t i) { stack.set_core(i, p_.loras[i], p_.weights[i]); });
    auto fill = [&](auto& t) {
      t.resize(stack.rows(), p_.in());
      util::parallel_for(n, [&](size_t i) { stack.fill(t, i, p_.loras[i].A); });
    };
    Eigen::MatrixXf tf;
    fill(tf);
    std::optional<MatrixXd> t;
    auto dense = [&]() -> const MatrixXd& {
      if (!t) fill(t.emplace());
      return *t;
    };
    // As many columns as the structures to come need (leading columns of a
    // top-K basis are a top-k basis).
    found = right_.emplace(cols, linalg::top_right_subspace(tf, dense, cols)).first;
  }
  return found->second;
}

int64_t ModuleFitter::right_rank() const {
  int64_t rows = 0;
  for (const auto& l : p_.loras) rows += l.rank();
  return std::min(rows, p_.in());
}

ModuleFitter& ModuleFitter::mirrored() {
  if (origin_) return *origin_;  // this is a mirror: its mirror is the original
  if (!mirror_) {
    transposed_problem_ = std::make_unique<ModuleProblem>(p_.transposed());
    FitOptions o = o_;
    mirror_ = std::make_unique<ModuleFitter>(*transposed_problem_, o);
    mirror_->origin_ = this;
  }
  return *mirror_;
}

// Tasks' heads are clustered in one shared body basis, where distances
// mean something: the leading max-rank columns.
int64_t ModuleFitter::head_cluster_width() const { return std::min<int64_t>(p_.max_rank(), right_rank()); }

std::vector<int> ModuleFitter::head_groups(int groups) {
  if (!o_.user_groups.empty()) return canonical_labels(o_.user_groups);
  if (!head_tree_) {
    const int64_t k = head_cluster_width();
    const std::vector<MatrixXd> y = projections(right(k).basis.leftCols(k));
    const size_t n = y.size();
    MatrixXd d2(n, n);
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = 0; j <= i; ++j) d2(i, j) = d2(j, i) = (y[i] - y[j]).squaredNorm();
    }
    head_tree_.emplace(d2, p_.weights);
  }
  return head_tree_->cut(groups);
}

MatrixXd body_distances(const MatrixXd& g, const std::vector<Index>& at) {
  const size_t n = at.size() - 1;
  auto rows = [&](size_t i) { return at[i + 1] - at[i]; };
  std::vector<double> norm(n);
  for (size_t i = 0; i < n; ++i) norm[i] = g.block(at[i], at[i], rows(i), rows(i)).trace();
  MatrixXd tr(n, n);
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j <= i; ++j) {
      const bool both = norm[i] > 0 && norm[j] > 0;
      tr(i, j) = tr(j, i) = both ? g.block(at[i], at[j], rows(i), rows(j)).squaredNorm() / (norm[i] * norm[j]) : 0;
    }
  }
  MatrixXd d2(n, n);
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < n; ++j) d2(i, j) = tr(i, i) + tr(j, j) - 2 * tr(i, j);
  }
  return d2;
}

std::vector<int> ModuleFitter::body_groups(int groups) {
  if (!o_.user_groups.empty()) return canonical_labels(o_.user_groups);
  if (!body_tree_) {
    // Z Z^T for Z the stack of Z_i = S_i A_i (S_i the core of s_i B_i), in
    // single precision: its sums are distances.
    const std::vector<Index> at = task_offsets(shape());
    Eigen::MatrixXf z(at.back(), p_.in());
    util::parallel_for(p_.tasks(), [&](size_t i) {
      if (at[i + 1] > at[i]) {
        z.middleRows(at[i], at[i + 1] - at[i]) = (linalg::left_core(p_.left(i)) * p_.loras[i].A).cast<float>();
      }
    });
    Eigen::MatrixXf g = Eigen::MatrixXf::Zero(z.rows(), z.rows());
    g.selfadjointView<Eigen::Lower>().rankUpdate(z);
    body_tree_.emplace(body_distances(g.selfadjointView<Eigen::Lower>().toDenseMatrix().cast<double>(), at),
                       std::vector<double>(p_.tasks(), 1.0));
  }
  return body_tree_->cut(groups);
}

ModuleFit ModuleFitter::fit(const StructureSpec& s, FitStats* stats) {
  if (!spec_valid(s, shape())) throw Error("structure " + s.label() + " does not fit this module's shape");
  if (shares_b(s.family)) {
    StructureSpec m = s;
    m.family = mirror(s.family);
    return mirrored().fit(m, stats).transposed();
  }
  switch (s.family) {
    case Family::kExact: return fit_exact();
    case Family::kMerged: return fit_merged(s.rank);
    case Family::kSharedA: return fit_shared(s.rank, s.groups, stats);
    case Family::kSharedACore: return fit_shared_core(s.rank, s.groups, stats);
    case Family::kMultiA: return fit_multi(s.rank, s.groups);
    case Family::kJdFull: return fit_jd(s.rank, false, stats);
    case Family::kJdDiag: return fit_jd(s.rank, true, stats);
    case Family::kAvgA: return fit_avg();
    default: break;
  }
  throw std::logic_error("unhandled structure family");
}

namespace {

ModuleFit per_task_layout(size_t n) {
  ModuleFit f;
  f.head_of.resize(n);
  f.body_of.resize(n);
  f.core_of.assign(n, -1);
  f.scale.assign(n, 1.0);
  return f;
}

}  // namespace

ModuleFit fit_shared_heads(const ModuleShape& shape, const std::vector<double>& weights,
                           const std::function<ModuleLoraT(size_t)>& read, const StructureSpec& s, const FitOptions& o,
                           DType dtype, const std::vector<double>& norms, std::vector<double>* err2) {
  const size_t n = shape.ranks.size();
  if (!per_task_heads(s, n)) throw std::logic_error("fit_shared_heads: not shared-A with a head per task");
  if (weights.size() != n || norms.size() != n || !err2) throw std::logic_error("fit_shared_heads: one weight and norm per task");
  if (!spec_valid(s, shape)) throw Error("structure " + s.label() + " does not fit this module's shape");
  // The body, as ModuleFitter::right finds it, from a stack built task by
  // task: no task's factors are kept past its rows.
  MatrixXd v;
  {
    WeightedStack stack(shape);
    Eigen::MatrixXf tf(stack.rows(), shape.in);
    util::advise_huge_pages(tf.data(), static_cast<size_t>(tf.size()) * sizeof(float));
    util::parallel_for(n, [&](size_t i) {
      const ModuleLoraT l = read(i);
      stack.set_core(i, l, weights[i]);
      stack.fill_transposed(tf, i, l.At);
    });
    std::optional<MatrixXd> t;
    auto dense = [&]() -> const MatrixXd& {
      if (!t) {
        t.emplace(stack.rows(), shape.in);
        util::parallel_for(n, [&](size_t i) { stack.fill_transposed(*t, i, read(i).At); });
      }
      return *t;
    };
    v = linalg::top_right_subspace(tf, dense, body_columns(shape, o, s.rank)).basis.leftCols(s.rank);
  }
  // Heads and errors, each task read again and dropped when done.
  ModuleFit f = per_task_layout(n);
  f.bodies = {round_to_dtype(v.transpose(), dtype)};
  std::fill(f.body_of.begin(), f.body_of.end(), 0);
  f.heads.resize(n);
  const MatrixXd rr = f.bodies[0] * f.bodies[0].transpose();
  err2->assign(n, 0.0);
  util::parallel_for(n, [&](size_t i) {
    const ModuleLoraT l = read(i);
    f.head_of[i] = static_cast<int>(i);
    f.heads[i] = round_to_dtype(head(l, v), dtype);
    const MatrixXd hh = f.heads[i].transpose() * f.heads[i];
    (*err2)[i] = fit_error2(l, f, i, norms[i], hh, rr);
  });
  return f;
}

ModuleFit ModuleFitter::fit_exact() const {
  const size_t n = p_.tasks();
  ModuleFit f = per_task_layout(n);
  for (size_t i = 0; i < n; ++i) {
    f.heads.push_back(p_.loras[i].B);
    f.bodies.push_back(p_.loras[i].A);
    f.head_of[i] = f.body_of[i] = static_cast<int>(i);
    f.scale[i] = p_.loras[i].scale;
  }
  return f;
}

void mean_update(const ModuleProblem& p, MatrixXd* l, MatrixXd* r) {
  double wsum = 0;
  Index cols = 0;
  for (size_t i = 0; i < p.tasks(); ++i) {
    wsum += p.weights[i];
    cols += p.loras[i].rank();
  }
  l->resize(p.out(), cols);
  r->resize(cols, p.in());
  cols = 0;
  for (size_t i = 0; i < p.tasks(); ++i) {
    const Index ri = p.loras[i].rank();
    l->middleCols(cols, ri) = (wsum > 0 ? p.weights[i] / wsum : 0.0) * p.left(i);
    r->middleRows(cols, ri) = p.loras[i].A;
    cols += ri;
  }
}

std::vector<Index> task_offsets(const ModuleShape& m) {
  std::vector<Index> at(m.ranks.size() + 1, 0);
  for (size_t i = 0; i < m.ranks.size(); ++i) at[i + 1] = at[i] + m.ranks[i];
  return at;
}

const linalg::Subspace& ModuleFitter::merged(int64_t k, const MatrixXd* l_given, const MatrixXd* r_given) {
  const Index most = std::min<Index>(shape().rank_sum(), std::min(p_.in(), p_.out()));
  if (!merged_ || merged_->basis.cols() < std::min<Index>(k, most)) {
    MatrixXd l_own, r_own;
    if (!l_given) mean_update(p_, &l_own, &r_own);
    const MatrixXd& l = l_given ? *l_given : l_own;
    const MatrixXd& r = r_given ? *r_given : r_own;
    // The leading columns serve every smaller rank: solve once for 2r.
    merged_ = linalg::top_right_subspace_of_product(l, r, std::max(k, 2 * p_.max_rank()));
  }
  return *merged_;
}

ModuleFit ModuleFitter::fit_merged(int64_t k) {
  // Best rank-k approximation of the weighted mean update (sum w_i dW_i)/W,
  // which minimises sum_i w_i ||dW_i - X||^2 over rank-k X.
  const size_t n = p_.tasks();
  MatrixXd l, r;
  mean_update(p_, &l, &r);
  const linalg::Subspace& sub = merged(k, &l, &r);
  const Index kk = std::min<Index>(k, sub.basis.cols());
  const MatrixXd v = sub.basis.leftCols(kk);
  ModuleFit f = per_task_layout(n);
  f.heads = {pad_rows(MatrixXd(l * (r * v)).transpose(), k).transpose()};
  f.bodies = {pad_rows(v.transpose(), k)};
  std::fill(f.head_of.begin(), f.head_of.end(), 0);
  std::fill(f.body_of.begin(), f.body_of.end(), 0);
  return f;
}

std::vector<MatrixXd> ModuleFitter::projections(const MatrixXd& v) const {
  std::vector<MatrixXd> y(p_.tasks());
  util::parallel_for(y.size(), [&](size_t i) { y[i] = head(p_.loras[i], v); });
  return y;
}

ModuleFit ModuleFitter::shared_body(const MatrixXd& v) const {
  ModuleFit f = per_task_layout(p_.tasks());
  f.bodies = {v.transpose()};
  std::fill(f.body_of.begin(), f.body_of.end(), 0);
  return f;
}

ModuleFit ModuleFitter::fit_shared(int64_t k, int groups, FitStats* stats) {
  const size_t n = p_.tasks();
  const MatrixXd v = right(k).basis.leftCols(k);
  ModuleFit f = shared_body(v);
  std::vector<MatrixXd> y = projections(v);  // closed-form heads
  const int g = group_count(groups, n);
  if (g == static_cast<int>(n)) {
    f.heads = std::move(y);
    for (size_t i = 0; i < n; ++i) f.head_of[i] = static_cast<int>(i);
    if (stats) stats->objective = {weighted_error(p_, f)};
    return f;
  }
  // Heads shared by task groups: start from the weighted mean head of each
  // group in the closed-form body's basis, then alternate.
  f.head_of = head_groups(g);
  const int groups_found = *std::max_element(f.head_of.begin(), f.head_of.end()) + 1;
  f.heads.assign(groups_found, MatrixXd::Zero(p_.out(), k));
  std::vector<double> wg(groups_found, 0.0);
  for (size_t i = 0; i < n; ++i) {
    f.heads[f.head_of[i]] += p_.weights[i] * y[i];
    wg[f.head_of[i]] += p_.weights[i];
  }
  for (int c = 0; c < groups_found; ++c) {
    if (wg[c] > 0) f.heads[c] /= wg[c];
  }
  // Keep the stored size exact when clustering yields fewer groups.
  while (static_cast<int>(f.heads.size()) < g) f.heads.push_back(MatrixXd::Zero(p_.out(), k));
  als_refine(p_, &f, o_, stats);
  return f;
}

ModuleFit ModuleFitter::fit_shared_core(int64_t k, int groups, FitStats* stats) {
  const size_t n = p_.tasks();
  const MatrixXd v = right(k).basis.leftCols(k);
  ModuleFit f = shared_body(v);
  const int g = group_count(groups, n);
  if (g == static_cast<int>(n)) {
    // Closed form: dW_i projected on the body is s_i B_i (A_i V) V^T exactly,
    // so the task keeps its own head and stores only the r x k' core.
    for (size_t i = 0; i < n; ++i) {
      f.heads.push_back(p_.left(i));
      f.cores.push_back(p_.loras[i].A * v);
      f.head_of[i] = f.core_of[i] = static_cast<int>(i);
    }
    if (stats) stats->objective = {weighted_error(p_, f)};
    return f;
  }
  const int64_t r = p_.max_rank();
  f.head_of = head_groups(g);
  const int groups_found = *std::max_element(f.head_of.begin(), f.head_of.end()) + 1;
  // Each group's head: top-r left singular subspace of its projected updates.
  const std::vector<MatrixXd> y = projections(v);  // out x k
  f.heads.assign(g, MatrixXd::Zero(p_.out(), r));
  for (int c = 0; c < groups_found; ++c) {
    std::vector<size_t> members;
    for (size_t i = 0; i < n; ++i) {
      if (f.head_of[i] == c) members.push_back(i);
    }
    MatrixXd t(members.size() * k, p_.out());
    for (size_t j = 0; j < members.size(); ++j) {
      t.middleRows(j * k, k) = std::sqrt(p_.weights[members[j]]) * y[members[j]].transpose();
    }
    auto sub = linalg::top_right_subspace(t, r);
    f.heads[c].leftCols(sub.basis.cols()) = sub.basis;
  }
  f.cores.resize(n);
  for (size_t i = 0; i < n; ++i) {
    f.cores[i] = f.heads[f.head_of[i]].transpose() * y[i];  // r x k
    f.core_of[i] = static_cast<int>(i);
  }
  als_refine(p_, &f, o_, stats);
  return f;
}

ModuleFit ModuleFitter::fit_multi(int64_t k, int groups) {
  const size_t n = p_.tasks();
  ModuleFit f = per_task_layout(n);
  const int g = group_count(groups, n);
  f.body_of = body_groups(g);
  const int groups_found = *std::max_element(f.body_of.begin(), f.body_of.end()) + 1;
  f.bodies.assign(g, MatrixXd::Zero(k, p_.in()));
  for (int c = 0; c < groups_found; ++c) {
    // Each group is its own shared-A problem: closed form.
    ModuleProblem sub;
    std::vector<size_t> members;
    for (size_t i = 0; i < n; ++i) {
      if (f.body_of[i] != c) continue;
      members.push_back(i);
      sub.loras.push_back(p_.loras[i]);
      sub.weights.push_back(p_.weights[i]);
    }
    FitOptions so = o_;
    so.body_width = 1;  // this group's body only: k columns
    ModuleFitter fitter(sub, so);
    const int64_t kk = std::min<int64_t>(k, fitter.right_rank());
    if (kk > 0) f.bodies[c].topRows(kk) = fitter.right(kk).basis.leftCols(kk).transpose();
  }
  for (size_t i = 0; i < n; ++i) {
    f.heads.push_back(p_.left(i) * (p_.loras[i].A * f.bodies[f.body_of[i]].transpose()));
    f.head_of[i] = static_cast<int>(i);
  }
  return f;
}

ModuleFit ModuleFitter::fit_jd(int64_t k, bool diagonal, FitStats* stats) {
  const size_t n = p_.tasks();
  MatrixXd v = right(k).basis.leftCols(k);               // in x k
  MatrixXd u = mirrored().right(k).basis.leftCols(k);    // out x k
  auto cores = [&](const MatrixXd& uu, const MatrixXd& vv) {
    std::vector<MatrixXd> c(n);
    for (size_t i = 0; i < n; ++i) c[i] = (uu.transpose() * p_.left(i)) * (p_.loras[i].A * vv);
    return c;
  };
  ModuleFit f = per_task_layout(n);
  std::fill(f.head_of.begin(), f.head_of.end(), 0);
  std::fill(f.body_of.begin(), f.body_of.end(), 0);
  for (size_t i = 0; i < n; ++i) f.core_of[i] = static_cast<int>(i);
  auto assemble = [&] {
    f.heads = {u};
    f.bodies = {v.transpose()};
    f.cores = cores(u, v);
    if (diagonal) {
      for (auto& c : f.cores) c = MatrixXd(c.diagonal());
    }
  };
  f.diagonal_cores = diagonal;
  assemble();
  if (diagonal) {
    als_refine(p_, &f, o_, stats);
    return f;
  }
  // HOOI with one orthogonal-iteration step per side: V <- orth(S_V V) with
  // S_V = sum_i w_i dW_i^T U U^T dW_i (and U likewise), which raises
  // sum_i w_i ||U^T dW_i V||^2 at a rank-sized cost per task; the guard
  // below keeps the objective from ever rising.
  auto orth = [](const MatrixXd& x) {
    Eigen::HouseholderQR<MatrixXd> qr(x);
    MatrixXd q = qr.householderQ() * MatrixXd::Identity(x.rows(), x.cols());
    for (Index j = 0; j < x.cols(); ++j) {
      if (q.col(j).dot(x.col(j)) < 0) q.col(j) = -q.col(j);
    }
    return q;
  };
  double obj = weighted_error(p_, f);
  if (stats) stats->objective = {obj};
  for (int it = 0; it < o_.max_iters; ++it) {
    MatrixXd sv = MatrixXd::Zero(p_.in(), k);
    for (size_t i = 0; i < n; ++i) {
      if (p_.loras[i].rank() == 0 || p_.weights[i] == 0) continue;
      MatrixXd ul = u.transpose() * p_.left(i);  // k x r
      sv += p_.weights[i] * (p_.loras[i].A.transpose() * ((ul.transpose() * ul) * (p_.loras[i].A * v)));
    }
    v = orth(sv);
    MatrixXd su = MatrixXd::Zero(p_.out(), k);
    for (size_t i = 0; i < n; ++i) {
      if (p_.loras[i].rank() == 0 || p_.weights[i] == 0) continue;
      MatrixXd av = p_.loras[i].A * v;  // r x k
      su += p_.weights[i] * (p_.left(i) * (av * (av.transpose() * (p_.left(i).transpose() * u))));
    }
    u = orth(su);
    if (u.cols() < k || v.cols() < k) break;  // cannot happen for valid specs
    ModuleFit prev = f;
    assemble();
    double next = weighted_error(p_, f);
    if (next > obj * (1 + 1e-12)) {
      f = std::move(prev);
      break;
    }
    if (stats) {
      stats->objective.push_back(next);
      stats->iterations = it + 1;
    }
    bool done = obj - next <= o_.tol * obj;
    obj = next;
    if (done) break;
  }
  return f;
}

ModuleFit ModuleFitter::fit_avg() const {
  const size_t n = p_.tasks();
  const int64_t r = p_.max_rank();
  ModuleFit f = per_task_layout(n);
  MatrixXd mean = MatrixXd::Zero(r, p_.in());
  int count = 0;
  for (auto& l : p_.loras) {
    if (l.rank() == 0) continue;
    mean += l.A;
    ++count;
  }
  f.bodies = {mean / std::max(count, 1)};
  std::fill(f.body_of.begin(), f.body_of.end(), 0);
  for (size_t i = 0; i < n; ++i) {
    f.heads.push_back(p_.loras[i].rank() ? p_.left(i) : MatrixXd::Zero(p_.out(), r));
    f.head_of[i] = static_cast<int>(i);
  }
  return f;
}

}  // namespace hydraopt
