// Predicted errors (ModuleFitter::predict): what each structure's fit
// would leave, from the subspaces the fits share, without fitting it.
//
// With T the weighted stack of a module's updates (rows sqrt(w_i) S_i A_i,
// S_i the core of s_i B_i; its right singular values theta_j, so theta_j^2
// are captured energies, methods/structures.cc) and
// N = sum_i w_i ||dW_i||^2 = ||T||^2:
//   shared-A(k), shared-A+core(k), one head or core per task:
//       N - sum_{j<=k} theta_j^2  (dW_i V V^T is what both keep)
//   merged(k):  N - W sum_{j<=k} sigma_j^2, sigma the singular values of
//       the weighted mean update (sum_i w_i dW_i) / W, W = sum_i w_i
//   shared-A(k) with G head groups (ALS start: each group's mean head):
//       N - sum_g W_g ||ybar_g||^2, y_i = dW_i V the task's head in the
//       body's basis, ybar_g the group's weighted mean
//   shared-A+core(k) with G head groups (start: each group's top-r left
//       singular subspace of its heads [sqrt(w_i) y_i]):
//       N - sum_g (top-r eigenvalues of X_g^T X_g), X_g = [s_i B_i R_i^T]
//       over the group's tasks, R_i the core of sqrt(w_i) (A_i V)^T, since
//       X_g X_g^T = sum_{i in g} w_i y_i y_i^T
//   multi-A(k) with G body groups (each group's own closed form):
//       N - sum_g (top-k eigenvalues of T_g T_g^T), T_g the group's rows of T
//   jd-full(k), jd-diag(k) (start: U^T dW_i V, or its diagonal, from the
//       two sides' subspaces): sum_i w_i (||dW_i||^2 - ||core_i||^2)
//   shared-B, ...: the same on the transposed problem.
// The groups are the fits' own clusterings. The two grouped eigenvalue
// sums come from two Grams per module and side (T T^T, which the body
// clustering uses too, and X^T X: sum of ranks squared, the groups' blocks
// on their diagonals) and linalg::top_eigen_sum.
// So each prediction is the closed-form start's error, to the range
// finders' tolerance; ALS (grouped heads and cores, jd) only lowers it,
// and the planner refines the structures it chooses (structure_methods.cc).
//
// Rounding every stored number to the dtype adds, for a matrix product of
// f rounded factors, about f * kappa * ||dW_hat||^2, with kappa the
// relative variance of rounding to nearest for values spread evenly over
// the binades: (ulp^2 / 12) E[1/x^2] over x in [1, 2) log-uniform =
// 0.18 * 2^-2p for p significand bits (bf16: 2.7e-6, f16: 4.3e-8). The
// fitted part's energy ||dW_hat||^2 summed over tasks is N minus the fit's
// error.
#include <Eigen/Eigenvalues>

#include <algorithm>
#include <cmath>

#include "core/quant.h"
#include "hydraopt/error.h"
#include "methods/structures.h"
#include "util/parallel.h"

namespace hydraopt {

using Eigen::Index;
using Eigen::MatrixXd;

namespace {

double rounding_variance(DType dtype) {
  int p = 53;
  switch (dtype) {
    case DType::F64: return 0;
    case DType::F32: p = 24; break;
    case DType::F16: p = 11; break;
    case DType::BF16: p = 8; break;
    case DType::U8: throw std::logic_error("rounding_variance: U8 is not a float dtype");
  }
  return 0.18 * std::ldexp(1.0, -2 * p);
}

// sum_{j < k} values_j^2
double captured(const Eigen::VectorXd& values, int64_t k) {
  return values.head(std::min<Index>(k, values.size())).squaredNorm();
}

// Stored matrices multiplied in one task's update.
int rounded_factors(const StructureSpec& s) {
  switch (s.family) {
    case Family::kSharedACore:
    case Family::kSharedBCore:
    case Family::kJdFull:
    case Family::kJdDiag: return 3;
    default: return 2;
  }
}

}  // namespace

double ModuleFitter::weighted_norm2() {
  if (!weighted_norm2_) {
    const std::vector<double> norms = update_norms2(p_);
    double sum = 0;
    for (size_t i = 0; i < norms.size(); ++i) sum += p_.weights[i] * norms[i];
    weighted_norm2_ = sum;
  }
  return *weighted_norm2_;
}

namespace {

// The Gram Z Z^T of the rows z_i (r_i x cols) stacked, in single precision
// (these sums are predictions; the measured errors are in double).
Eigen::MatrixXf stacked_gram(const std::vector<Eigen::MatrixXf>& z, Index cols) {
  Index rows = 0;
  for (auto& zi : z) rows += zi.rows();
  Eigen::MatrixXf stack(rows, cols);
  rows = 0;
  for (auto& zi : z) {
    stack.middleRows(rows, zi.rows()) = zi;
    rows += zi.rows();
  }
  Eigen::MatrixXf g = Eigen::MatrixXf::Zero(rows, rows);
  g.selfadjointView<Eigen::Lower>().rankUpdate(stack);
  return g.selfadjointView<Eigen::Lower>().toDenseMatrix();
}

// sum over the groups of `label` of the top-k eigenvalues of the Gram's
// block on the group's rows (task i owns rows at[i] .. at[i + 1]), each row
// and column scaled by `scale` (one per task) where given.
template <typename Gram>
double grouped_top_sum(const Gram& gram, const std::vector<Index>& at, const std::vector<int>& label, int64_t k,
                       const std::vector<double>* scale = nullptr) {
  const int groups = *std::max_element(label.begin(), label.end()) + 1;
  double sum = 0;
  for (int g = 0; g < groups; ++g) {
    std::vector<Index> idx;
    Eigen::VectorXd d;
    for (size_t i = 0; i < label.size(); ++i) {
      if (label[i] != g) continue;
      for (Index j = at[i]; j < at[i + 1]; ++j) idx.push_back(j);
      if (scale) {
        d.conservativeResize(static_cast<Index>(idx.size()));
        d.tail(at[i + 1] - at[i]).setConstant((*scale)[i]);
      }
    }
    if (idx.empty()) continue;
    const MatrixXd block = gram(idx, idx).template cast<double>();  // exact from single precision
    sum += scale ? linalg::top_eigen_sum(d.asDiagonal() * block * d.asDiagonal(), k) : linalg::top_eigen_sum(block, k);
  }
  return sum;
}

}  // namespace

std::vector<Index> ModuleFitter::task_offsets() const {
  std::vector<Index> at(p_.tasks() + 1, 0);
  for (size_t i = 0; i < p_.tasks(); ++i) at[i + 1] = at[i] + p_.loras[i].rank();
  return at;
}

double ModuleFitter::multi_bodies(int64_t k, int groups) {
  // T T^T = D (Z Z^T) D, D = sqrt(w_i) on task i's rows.
  const size_t n = p_.tasks();
  std::vector<double> d(n);
  for (size_t i = 0; i < n; ++i) d[i] = std::sqrt(p_.weights[i]);
  const double kept = grouped_top_sum(body_gram(), task_offsets(), body_groups(group_count(groups, n)), k, &d);
  return std::max(0.0, weighted_norm2() - kept);
}

double ModuleFitter::grouped_cores(int64_t k, int groups) {
  const size_t n = p_.tasks();
  if (core_gram_rank_ != k) {
    const MatrixXd v = right(k).basis.leftCols(k);
    std::vector<Eigen::MatrixXf> x(n);
    util::parallel_for(n, [&](size_t i) {
      const auto& l = p_.loras[i];
      if (l.rank() == 0) return;
      const MatrixXd r = linalg::left_core(MatrixXd(std::sqrt(p_.weights[i]) * (l.A * v).transpose()));
      x[i] = (p_.left(i) * r.transpose()).transpose().cast<float>();  // X_i^T, r x out
    });
    for (size_t i = 0; i < n; ++i) {
      if (x[i].size() == 0) x[i].resize(0, p_.out());
    }
    core_gram_ = stacked_gram(x, p_.out());
    core_gram_rank_ = k;
  }
  const double kept = grouped_top_sum(core_gram_, task_offsets(), head_groups(group_count(groups, n)), p_.max_rank());
  return std::max(0.0, weighted_norm2() - kept);
}

Prediction ModuleFitter::predict(const StructureSpec& s, DType dtype) {
  if (!spec_valid(s, shape())) throw Error("structure " + s.label() + " does not fit this module's shape");
  if (s.family == Family::kExact) throw std::logic_error("predict: the exact structure is measured, not predicted");
  Prediction pr{unrounded(s)};
  pr.error += rounded_factors(s) * rounding_variance(dtype) * std::max(0.0, weighted_norm2() - pr.error);
  return pr;
}

double ModuleFitter::quantization_kappa(const QuantFormat& f, bool heads) {
  const auto key = std::make_pair(f.name(), heads);
  auto it = kappa_.find(key);
  if (it != kappa_.end()) return it->second;
  // A few tasks' factors stand for the fitted ones: bodies are spans of
  // the A's rows, heads mixtures of the B's columns, grouped alike.
  double err = 0, norm = 0;
  for (size_t i = 0; i < std::min<size_t>(p_.tasks(), 4); ++i) {
    const MatrixXd& x = heads ? p_.loras[i].B : p_.loras[i].A;
    err += (x - round_to_format(x, f)).squaredNorm();
    norm += x.squaredNorm();
  }
  return kappa_[key] = norm > 0 ? err / norm : 0;
}

double ModuleFitter::unrounded(const StructureSpec& s) {
  const std::string key = s.label();
  if (auto it = unrounded_.find(key); it != unrounded_.end()) return it->second;
  return unrounded_[key] = predict_unrounded(s).error;
}

double ModuleFitter::own_factor_spread() {
  if (spread_) return *spread_;
  double spread = 0;
  for (size_t i = 0; i < p_.tasks(); ++i) {
    const auto& l = p_.loras[i];
    if (l.rank() > 0) spread += p_.weights[i] * l.scale * l.scale * l.A.squaredNorm() * l.B.squaredNorm() / l.rank();
  }
  return *(spread_ = weighted_norm2() > 0 ? spread / weighted_norm2() : 1.0);
}

Prediction ModuleFitter::predict(const StructureSpec& s, const Precision& precision, DType dtype) {
  if (precision.all_float()) return predict(s, dtype);
  if (!spec_valid(s, shape())) throw Error("structure " + s.label() + " does not fit this module's shape");
  Prediction pr{s.family == Family::kExact ? 0.0 : unrounded(s)};  // exact: nothing lost unstored
  const double kept = std::max(0.0, weighted_norm2() - pr.error);
  auto kappa = [&](const std::optional<QuantFormat>& f, bool heads) {
    return f ? quantization_kappa(*f, heads) : rounding_variance(dtype);
  };
  // Noise E on one factor of a product adds ||E||^2 ||rest||^2 / (inner
  // dimension) when uncorrelated with the rest: kappa ||dW_hat||^2 next to
  // a factor with orthonormal rows or columns (fitted bodies, heads in a
  // body's basis, jd's U and V), but kappa ||A||^2 ||s B||^2 / r for a
  // task's own factors, kept as read (exact; the own head of a core form
  // and its core), which trained adapters do not spread evenly over their
  // rank: rho = that over ||dW||^2, weighted over the tasks.
  const double kb = kappa(precision.bodies, false), kh = kappa(precision.heads, true);
  const double kc = rounded_factors(s) == 3 ? kappa(precision.cores, false) : 0.0;
  const double rho = own_factor_spread();
  switch (s.family) {
    case Family::kExact: pr.error += (kb + kh) * rho * kept; break;
    case Family::kSharedACore: pr.error += kb * kept + (kh + kc) * rho * kept; break;
    case Family::kSharedBCore: pr.error += kh * kept + (kb + kc) * rho * kept; break;
    default: pr.error += (kb + kh + kc) * kept; break;
  }
  return pr;
}

Prediction ModuleFitter::predict_unrounded(const StructureSpec& s) {
  if (shares_b(s.family)) {
    StructureSpec m = s;
    m.family = mirror(s.family);
    return mirrored().predict_unrounded(m);
  }
  const size_t n = p_.tasks();
  const double total = weighted_norm2();
  const bool per_task = group_count(s.groups, n) == static_cast<int>(n);
  auto tail = [&](int64_t k) { return std::max(0.0, total - captured(right(k).values, k)); };
  switch (s.family) {
    case Family::kMerged: {
      double wsum = 0;
      for (double w : p_.weights) wsum += w;
      return {std::max(0.0, total - wsum * captured(merged(s.rank).values, s.rank))};
    }
    case Family::kSharedA: return {per_task ? tail(s.rank) : grouped_heads(s.rank, s.groups)};
    case Family::kSharedACore: return {per_task ? tail(s.rank) : grouped_cores(s.rank, s.groups)};
    case Family::kMultiA: return {multi_bodies(s.rank, s.groups)};
    case Family::kJdFull:
    case Family::kJdDiag: {
      // U_k^T dW_i V_k is the leading k x k block of the widest core.
      const std::vector<MatrixXd>& cores = jd_cores(s.rank);
      std::vector<double> kept(n, 0.0);
      for (size_t i = 0; i < n; ++i) {
        const auto c = cores[i].topLeftCorner(s.rank, s.rank);
        kept[i] = s.family == Family::kJdDiag ? c.diagonal().squaredNorm() : c.squaredNorm();
      }
      double e = total;
      for (size_t i = 0; i < n; ++i) e -= p_.weights[i] * kept[i];
      return {std::max(0.0, e)};
    }
    default: break;
  }
  throw std::logic_error("predict: unhandled structure family");
}

const std::vector<MatrixXd>& ModuleFitter::jd_cores(int64_t k) {
  if (jd_cores_.empty() || jd_cores_[0].rows() < k) {
    // As wide as both sides' subspaces go: every jd width reads its block.
    const MatrixXd& v_all = right(k).basis;
    const MatrixXd& u_all = mirrored().right(k).basis;
    const Index width = std::min(v_all.cols(), u_all.cols());
    const MatrixXd v = v_all.leftCols(width), u = u_all.leftCols(width);
    jd_cores_.assign(p_.tasks(), MatrixXd());
    util::parallel_for(p_.tasks(), [&](size_t i) { jd_cores_[i] = (u.transpose() * p_.left(i)) * (p_.loras[i].A * v); });
  }
  return jd_cores_;
}

const MatrixXd& ModuleFitter::head_gram(int64_t k) {
  if (head_gram_rank_ != k) {
    // The heads themselves (out x k per task) are dropped once their Gram
    // is known; the clustering, when at this width, uses them first.
    const std::vector<MatrixXd> y = projections(right(k).basis.leftCols(k));
    const size_t n = y.size();
    head_gram_.resize(static_cast<Index>(n), static_cast<Index>(n));
    util::parallel_for(n, [&](size_t i) {
      for (size_t j = 0; j <= i; ++j) head_gram_(i, j) = head_gram_(j, i) = y[i].cwiseProduct(y[j]).sum();
    });
    head_gram_rank_ = k;
    if (!head_tree_ && o_.user_groups.empty() && k == head_cluster_width()) cluster_heads(y);
  }
  return head_gram_;
}

double ModuleFitter::grouped_heads(int64_t k, int groups) {
  // The start's heads are the groups' weighted mean heads in the
  // closed-form body's basis (fit_shared). The part outside the body plus
  // the scatter around the groups' means,
  //   sum_i w_i (||dW_i||^2 - ||y_i||^2) + sum_i w_i ||y_i||^2 - W_g ||ybar_g||^2,
  // with W_g^2 ||ybar_g||^2 = sum_{i, j in g} w_i w_j <y_i, y_j>.
  const size_t n = p_.tasks();
  const MatrixXd& h = head_gram(k);
  const std::vector<int> group = head_groups(group_count(groups, n));
  const int found = *std::max_element(group.begin(), group.end()) + 1;
  std::vector<double> sum2(found, 0.0), wg(found, 0.0);
  for (size_t i = 0; i < n; ++i) {
    wg[group[i]] += p_.weights[i];
    for (size_t j = 0; j < n; ++j) {
      if (group[j] == group[i]) sum2[group[i]] += p_.weights[i] * p_.weights[j] * h(i, j);
    }
  }
  double e = weighted_norm2();
  for (int g = 0; g < found; ++g) {
    if (wg[g] > 0) e -= sum2[g] / wg[g];
  }
  return std::max(0.0, e);
}

}  // namespace hydraopt
