// Predicted errors (Predictor): what each structure's fit would leave, from
// two Grams per module, without fitting it.
//
// With T the weighted stack of a module's updates (rows sqrt(w_i) S_i A_i,
// S_i a core of s_i B_i: S_i^T S_i = s_i^2 B_i^T B_i; its right singular
// values theta_j, so theta_j^2 are captured energies, methods/structures.cc)
// and N = sum_i w_i ||dW_i||^2 = ||T||^2:
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
//       over the group's tasks, R_i a core of sqrt(w_i) (A_i V)^T, since
//       X_g X_g^T = sum_{i in g} w_i y_i y_i^T
//   multi-A(k) with G body groups (each group's own closed form):
//       N - sum_g (top-k eigenvalues of T_g T_g^T), T_g the group's rows of T
//   jd-full(k), jd-diag(k) (start: U^T dW_i V, or its diagonal, from the
//       two sides' subspaces): sum_i w_i (||dW_i||^2 - ||core_i||^2)
//   shared-B, ...: the same on the transposed problem.
// The groups are the fits' own clusterings.
//
// None of this needs the factors beyond two Grams, GA = A A^T and
// GB = B^T B of the stacked factors (A = [A_1; ...], B = [B_1 ...]; block
// (i, j) of GA is A_i A_j^T): S_i from GB's diagonal block, T T^T = D S GA
// S^T D (D = sqrt(w_i), S = diag(S_i)), whose top eigenpairs U, theta^2
// give V = T^T U / theta and so the heads' factors P_i = A_i V = (GA S^T D
// U / theta)_i; then <y_i, y_j> = s_i s_j tr(P_i^T GB_ij P_j), X^T X's block
// s_i s_j R_i GB_ij R_j^T, jd's cores s_i P'_i^T P_i (P' the other side's).
// The mirrored side swaps GA and GB. Each Gram costs (sum of ranks)^2 x
// (in or out) once; the rest is (sum of ranks)^2 x rank.
//
// Rounding every stored number to the dtype adds, for a matrix product of
// f rounded factors, about f * kappa * ||dW_hat||^2, with kappa the
// relative variance of rounding to nearest for values spread evenly over
// the binades: (ulp^2 / 12) E[1/x^2] over x in [1, 2) log-uniform =
// 0.18 * 2^-2p for p significand bits (bf16: 2.7e-6, f16: 4.3e-8). The
// fitted part's energy ||dW_hat||^2 summed over tasks is N minus the fit's
// error.
#include "methods/predict.h"

#include <Eigen/Cholesky>
#include <Eigen/Eigenvalues>

#include <algorithm>
#include <cmath>

#include "hydraopt/error.h"
#include "methods/fit_error.h"
#include "util/parallel.h"

namespace hydraopt {

using Eigen::Index;
using Eigen::MatrixXd;
using Eigen::VectorXd;

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

// A factor F of a symmetric positive semi-definite G (r x r): F^T F = G.
MatrixXd factor(const MatrixXd& g) {
  if (g.size() == 0) return g;  // a task without the module (LAPACKE's potrf would read a null pointer)
  Eigen::LLT<MatrixXd> llt(g);
  if (llt.info() == Eigen::Success) return llt.matrixU();
  Eigen::SelfAdjointEigenSolver<MatrixXd> eig(g);
  return eig.eigenvalues().cwiseMax(0).cwiseSqrt().asDiagonal() * eig.eigenvectors().transpose();
}

// X G Y^T for block-diagonal X = diag(x_i), Y = diag(y_i) (task i's block
// at rows and columns at[i] .. at[i + 1]).
MatrixXd block_sandwich(const std::vector<MatrixXd>& x, const MatrixXd& g, const std::vector<MatrixXd>& y,
                        const std::vector<Index>& at) {
  const size_t n = x.size();
  MatrixXd left(g.rows(), g.cols()), out(g.rows(), g.cols());
  util::parallel_for(n, [&](size_t i) {
    const Index r = at[i + 1] - at[i];
    if (r > 0) left.middleRows(at[i], r).noalias() = x[i] * g.middleRows(at[i], r);
  });
  util::parallel_for(n, [&](size_t j) {
    const Index r = at[j + 1] - at[j];
    if (r > 0) out.middleCols(at[j], r).noalias() = left.middleCols(at[j], r) * y[j].transpose();
  });
  return out;
}

// Top-k eigenvalue sums of a Gram's blocks, by the tasks a block holds:
// the cuts of one dendrogram at several group counts share the groups a
// finer cut does not split.
using BlockSums = std::map<std::pair<std::vector<size_t>, int64_t>, double>;

// sum over the groups of `label` of the top-k eigenvalues of the Gram's
// block on the group's rows (task i owns rows at[i] .. at[i + 1]), each row
// and column scaled by `scale` (one per task) where given.
double grouped_top_sum(const MatrixXd& gram, const std::vector<Index>& at, const std::vector<int>& label, int64_t k,
                       BlockSums* known, const std::vector<double>* scale = nullptr) {
  const int groups = *std::max_element(label.begin(), label.end()) + 1;
  double sum = 0;
  for (int g = 0; g < groups; ++g) {
    std::pair<std::vector<size_t>, int64_t> key{{}, k};
    for (size_t i = 0; i < label.size(); ++i) {
      if (label[i] == g) key.first.push_back(i);
    }
    if (auto found = known->find(key); found != known->end()) {
      sum += found->second;
      continue;
    }
    std::vector<Index> idx;
    VectorXd d;
    for (size_t i : key.first) {
      for (Index j = at[i]; j < at[i + 1]; ++j) idx.push_back(j);
      if (scale) {
        d.conservativeResize(static_cast<Index>(idx.size()));
        d.tail(at[i + 1] - at[i]).setConstant((*scale)[i]);
      }
    }
    double top = 0;
    if (!idx.empty()) {
      const MatrixXd block = gram(idx, idx);
      top = scale ? linalg::top_eigen_sum(d.asDiagonal() * block * d.asDiagonal(), k) : linalg::top_eigen_sum(block, k);
    }
    sum += (*known)[key] = top;
  }
  return sum;
}

// The Gram of the stacked rows x_i(task) (r_i x width each; `Scalar` the
// precision of the sums), as doubles.
template <typename Scalar, typename Rows>
MatrixXd stacked_gram(const std::vector<Index>& at, Index width, const Rows& rows) {
  using M = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  const size_t n = at.size() - 1;
  M stack(at.back(), width);
  util::parallel_for(n, [&](size_t i) {
    if (at[i + 1] > at[i]) stack.middleRows(at[i], at[i + 1] - at[i]) = rows(i).template cast<Scalar>();
  });
  M g = M::Zero(at.back(), at.back());
  g.template selfadjointView<Eigen::Lower>().rankUpdate(stack);
  return g.template selfadjointView<Eigen::Lower>().toDenseMatrix().template cast<double>();
}

}  // namespace

// One side's quantities: side A shares the A's (gin = GA, gout = GB), side
// B the B's (gin = GB, gout = GA).
struct Predictor::Side {
  const MatrixXd* gin = nullptr;
  const MatrixXd* gout = nullptr;
  Index dim = 0;               ///< the shared factors' width (in for side A)
  std::vector<MatrixXd> core;  ///< S_i, S_i^T S_i = s_i^2 gout_ii
  MatrixXd zz;                 ///< S gin S^T: the unweighted stack's Gram
  VectorXd energy;             ///< theta_j^2, descending
  MatrixXd p;                  ///< rows of task i: A_i V (side A), as wide as energy
  std::map<int64_t, MatrixXd> head_gram;  ///< <y_i, y_j> by width
  std::optional<Dendrogram> head_tree, body_tree;
  MatrixXd core_gram;  ///< X^T X for grouped cores of rank core_gram_rank
  int64_t core_gram_rank = -1;
  BlockSums body_sums, core_sums;  ///< grouped_top_sum's blocks of zz and core_gram
};

Predictor::Predictor(const ModuleProblem& p, const FitOptions& o)
    : o_(o), shape_(shape_of(p)), weights_(p.weights), at_(task_offsets(shape_)) {
  const size_t n = p.tasks();
  for (const ModuleLora& l : p.loras) scales_.push_back(l.scale);
  auto a_rows = [&](size_t i) -> const MatrixXd& { return p.loras[i].A; };
  auto b_rows = [&](size_t i) { return p.loras[i].B.transpose(); };
  if (o_.estimate) {
    ga_ = stacked_gram<float>(at_, p.in(), a_rows);
    gb_ = stacked_gram<float>(at_, p.out(), b_rows);
  } else {
    ga_ = stacked_gram<double>(at_, p.in(), a_rows);
    gb_ = stacked_gram<double>(at_, p.out(), b_rows);
    // The merged update's leading values (2r, the widest merged candidate)
    // from its factors; wider ones would come from the Grams (merged()).
    MatrixXd l, r;
    mean_update(p, &l, &r);
    merged_ = linalg::top_right_subspace_of_product(l, r, 2 * shape_.max_rank()).values;
  }
  // N = sum_i w_i ||dW_i||^2, and the tasks' own factors' spread (below).
  const std::vector<double> norms = update_norms2(p);
  double spread = 0;
  norm2_ = 0;
  for (size_t i = 0; i < n; ++i) {
    const auto& l = p.loras[i];
    norm2_ += weights_[i] * norms[i];
    if (l.rank() > 0) spread += weights_[i] * l.scale * l.scale * l.A.squaredNorm() * l.B.squaredNorm() / l.rank();
  }
  spread_ = norm2_ > 0 ? spread / norm2_ : 1.0;
  // A few tasks' factors stand for the fitted ones in quantization_kappa:
  // a quarter of the lines (quant.h) of the first four tasks' A and B.
  auto some_lines = [](const MatrixXd& x) { return first_lines(x, (quant_lines(x.rows(), x.cols()) + 3) / 4); };
  for (size_t i = 0; i < std::min<size_t>(n, 4); ++i) {
    sample_.push_back({some_lines(p.loras[i].A), some_lines(p.loras[i].B), p.loras[i].scale});
  }
}

Predictor::~Predictor() = default;

const MatrixXd& Predictor::zz_of(Side& sd) const {
  if (sd.zz.size() == 0 && at_.back() > 0) sd.zz = block_sandwich(sd.core, *sd.gin, sd.core, at_);
  return sd.zz;
}

Predictor::Side& Predictor::side(bool b, int64_t k) {
  std::unique_ptr<Side>& s = sides_[b ? 1 : 0];
  const size_t n = at_.size() - 1;
  // The candidates come one side after the other (candidate_specs): the
  // other side's (sum of ranks)^2 Grams go (what is known of their
  // eigenvalue sums stays; its spectrum and heads too, which jd reads),
  // and come back (zz_of) if a candidate of that side is asked again.
  if (std::unique_ptr<Side>& other = sides_[b ? 0 : 1]) {
    other->zz = MatrixXd();
    other->core_gram = MatrixXd();
    other->core_gram_rank = -1;
  }
  if (!s) {
    s = std::make_unique<Side>();
    s->gin = b ? &gb_ : &ga_;
    s->gout = b ? &ga_ : &gb_;
    s->dim = b ? shape_.out : shape_.in;
    s->core.resize(n);
    util::parallel_for(n, [&](size_t i) {
      const Index r = at_[i + 1] - at_[i];
      s->core[i] = r > 0 ? MatrixXd(std::abs(scales_[i]) * factor(s->gout->block(at_[i], at_[i], r, r)))
                         : MatrixXd(0, 0);
    });
  }
  // The spectrum of T T^T = D zz D, as wide as the widest body (4r) or k.
  const Index most = std::min<Index>(at_.back(), s->dim);
  const Index cols = std::min<Index>(most, std::max<Index>({1, k, o_.body_width * shape_.max_rank()}));
  if (s->p.size() > 0 && s->p.cols() >= std::min<Index>(k, most)) return *s;
  MatrixXd t2 = zz_of(*s);
  for (size_t i = 0; i < n; ++i) {
    const double d = std::sqrt(weights_[i]);
    t2.middleRows(at_[i], at_[i + 1] - at_[i]) *= d;
    t2.middleCols(at_[i], at_[i + 1] - at_[i]) *= d;
  }
  const linalg::Subspace sub =
      o_.estimate ? linalg::estimate_top_eigen_subspace(t2, cols) : linalg::top_eigen_subspace(t2, cols);
  s->energy = sub.values.cwiseAbs2();
  // P = gin S^T D U / theta (columns of no energy: V there is orthogonal
  // to every A_i, so they are 0).
  MatrixXd w(at_.back(), sub.basis.cols());
  for (size_t i = 0; i < n; ++i) {
    const Index r = at_[i + 1] - at_[i];
    if (r > 0) {
      w.middleRows(at_[i], r).noalias() =
          std::sqrt(weights_[i]) * s->core[i].transpose() * sub.basis.middleRows(at_[i], r);
    }
  }
  s->p.noalias() = *s->gin * w;
  const double cut = 1e-12 * (s->energy.size() > 0 ? s->energy(0) : 0.0);
  for (Index j = 0; j < s->p.cols(); ++j) s->p.col(j) *= s->energy(j) > cut ? 1.0 / sub.values(j) : 0.0;
  s->head_gram.clear();
  s->core_gram_rank = -1;
  s->core_sums.clear();
  return *s;
}

const VectorXd& Predictor::merged(int64_t k) {
  const Index most = std::min<Index>(at_.back(), std::min(shape_.in, shape_.out));
  if (!merged_ || merged_->size() < std::min<Index>(k, most)) {
    // The mean update is B E A, E = diag(w_i s_i / W): its Grams are
    // E GB E and GA. The leading values serve every smaller rank: solve
    // once for 2r.
    double wsum = 0;
    for (double w : weights_) wsum += w;
    VectorXd e(at_.back());
    for (size_t i = 0; i + 1 < at_.size(); ++i) {
      e.segment(at_[i], at_[i + 1] - at_[i]).setConstant(wsum > 0 ? weights_[i] * scales_[i] / wsum : 0.0);
    }
    const Index want = std::min<Index>(most, std::max(k, 2 * shape_.max_rank()));
    merged_ = linalg::estimate_product_values(e.asDiagonal() * gb_ * e.asDiagonal(), ga_, want);
  }
  return *merged_;
}

Prediction Predictor::predict(const StructureSpec& s, DType dtype) {
  if (!spec_valid(s, shape_)) throw Error("structure " + s.label() + " does not fit this module's shape");
  if (s.family == Family::kExact) throw std::logic_error("predict: the exact structure is measured, not predicted");
  Prediction pr{unrounded(s)};
  pr.error += rounded_factors(s) * rounding_variance(dtype) * std::max(0.0, norm2_ - pr.error);
  return pr;
}

double Predictor::quantization_kappa(const QuantFormat& f, bool heads) {
  const auto key = std::make_pair(f.name(), heads);
  auto it = kappa_.find(key);
  if (it != kappa_.end()) return it->second;
  // The sample's factors stand for the fitted ones: bodies are spans of
  // the A's rows, heads mixtures of the B's columns, grouped alike.
  double err = 0, norm = 0;
  for (const ModuleLora& l : sample_) {
    const MatrixXd& x = heads ? l.B : l.A;
    err += (x - round_to_format(x, f)).squaredNorm();
    norm += x.squaredNorm();
  }
  return kappa_[key] = norm > 0 ? err / norm : 0;
}

double Predictor::unrounded(const StructureSpec& s) {
  const std::string key = s.label();
  if (auto it = unrounded_.find(key); it != unrounded_.end()) return it->second;
  return unrounded_[key] = predict_unrounded(s);
}

Prediction Predictor::predict(const StructureSpec& s, const Precision& precision, DType dtype) {
  if (precision.all_float()) return predict(s, dtype);
  if (!spec_valid(s, shape_)) throw Error("structure " + s.label() + " does not fit this module's shape");
  Prediction pr{s.family == Family::kExact ? 0.0 : unrounded(s)};  // exact: nothing lost unstored
  const double kept = std::max(0.0, norm2_ - pr.error);
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
  const double rho = spread_;
  switch (s.family) {
    case Family::kExact: pr.error += (kb + kh) * rho * kept; break;
    case Family::kSharedACore: pr.error += kb * kept + (kh + kc) * rho * kept; break;
    case Family::kSharedBCore: pr.error += kh * kept + (kb + kc) * rho * kept; break;
    default: pr.error += (kb + kh + kc) * kept; break;
  }
  return pr;
}

const MatrixXd& Predictor::head_gram(Side& sd, int64_t k) {
  k = std::min<int64_t>(k, sd.p.cols());
  auto found = sd.head_gram.find(k);
  if (found != sd.head_gram.end()) return found->second;
  // <y_i, y_j> = s_i s_j tr(P_i^T gout_ij P_j), P_i task i's rows of P (k columns).
  const size_t n = at_.size() - 1;
  MatrixXd h(n, n);
  util::parallel_for(n, [&](size_t j) {
    const Index rj = at_[j + 1] - at_[j];
    const MatrixXd q = sd.gout->middleCols(at_[j], rj) * sd.p.block(at_[j], 0, rj, k);
    for (size_t i = 0; i < n; ++i) {
      const Index ri = at_[i + 1] - at_[i];
      h(i, j) = scales_[i] * scales_[j] * sd.p.block(at_[i], 0, ri, k).cwiseProduct(q.middleRows(at_[i], ri)).sum();
    }
  });
  return sd.head_gram[k] = (h + h.transpose()) / 2;
}

std::vector<int> Predictor::head_groups(Side& sd, int groups) {
  if (!o_.user_groups.empty()) return canonical_labels(o_.user_groups);
  if (!sd.head_tree) {
    // Distances between the heads in the body's leading max-rank columns.
    const MatrixXd& h = head_gram(sd, std::min<Index>(shape_.max_rank(), sd.energy.size()));
    const Index n = h.rows();
    MatrixXd d2(n, n);
    for (Index i = 0; i < n; ++i) {
      for (Index j = 0; j < n; ++j) d2(i, j) = std::max(0.0, h(i, i) + h(j, j) - 2 * h(i, j));
    }
    sd.head_tree.emplace(d2, weights_);
  }
  return sd.head_tree->cut(groups);
}

std::vector<int> Predictor::body_groups(Side& sd, int groups) {
  if (!o_.user_groups.empty()) return canonical_labels(o_.user_groups);
  if (!sd.body_tree) sd.body_tree.emplace(body_distances(zz_of(sd), at_), std::vector<double>(at_.size() - 1, 1.0));
  return sd.body_tree->cut(groups);
}

double Predictor::tail(const Side& sd, int64_t k) const {
  return std::max(0.0, norm2_ - sd.energy.head(std::min<Index>(k, sd.energy.size())).sum());
}

double Predictor::predict_unrounded(const StructureSpec& spec) {
  const size_t n = at_.size() - 1;
  const double total = norm2_;
  const bool b = shares_b(spec.family);
  StructureSpec s = spec;
  if (b) s.family = mirror(s.family);
  const int groups = group_count(s.groups, n);
  const bool per_task = groups == static_cast<int>(n);
  switch (s.family) {
    case Family::kMerged: {
      double wsum = 0;
      for (double w : weights_) wsum += w;
      const VectorXd& sigma = merged(s.rank);
      return std::max(0.0, total - wsum * sigma.head(std::min<Index>(s.rank, sigma.size())).squaredNorm());
    }
    case Family::kSharedA: {
      Side& sd = side(b, s.rank);
      if (per_task) return tail(sd, s.rank);
      // The groups' weighted mean heads in the closed-form body's basis:
      // sum_i w_i ||y_i||^2 - W_g ||ybar_g||^2 lost beyond the body's tail,
      // with W_g^2 ||ybar_g||^2 = sum_{i, j in g} w_i w_j <y_i, y_j>.
      const MatrixXd& h = head_gram(sd, s.rank);
      const std::vector<int> group = head_groups(sd, groups);
      const int found = *std::max_element(group.begin(), group.end()) + 1;
      std::vector<double> sum2(found, 0.0), wg(found, 0.0);
      for (size_t i = 0; i < n; ++i) {
        wg[group[i]] += weights_[i];
        for (size_t j = 0; j < n; ++j) {
          if (group[j] == group[i]) sum2[group[i]] += weights_[i] * weights_[j] * h(i, j);
        }
      }
      double e = total;
      for (int g = 0; g < found; ++g) {
        if (wg[g] > 0) e -= sum2[g] / wg[g];
      }
      return std::max(0.0, e);
    }
    case Family::kSharedACore: {
      Side& sd = side(b, s.rank);
      if (per_task) return tail(sd, s.rank);
      if (sd.core_gram_rank != s.rank) {
        // X^T X's block (i, j): s_i s_j R_i gout_ij R_j^T, R_i^T R_i = w_i P_i P_i^T.
        std::vector<MatrixXd> rs(n);
        util::parallel_for(n, [&](size_t i) {
          const Index ri = at_[i + 1] - at_[i];
          const MatrixXd pi = sd.p.block(at_[i], 0, ri, std::min<Index>(s.rank, sd.p.cols()));
          rs[i] = scales_[i] * factor(weights_[i] * pi * pi.transpose());
        });
        sd.core_gram = block_sandwich(rs, *sd.gout, rs, at_);
        sd.core_gram_rank = s.rank;
        sd.core_sums.clear();
      }
      const double kept = grouped_top_sum(sd.core_gram, at_, head_groups(sd, groups), shape_.max_rank(), &sd.core_sums);
      return std::max(0.0, total - kept);
    }
    case Family::kMultiA: {
      Side& sd = side(b, s.rank);
      std::vector<double> d(n);
      for (size_t i = 0; i < n; ++i) d[i] = std::sqrt(weights_[i]);
      return std::max(0.0, total - grouped_top_sum(zz_of(sd), at_, body_groups(sd, groups), s.rank, &sd.body_sums, &d));
    }
    case Family::kJdFull:
    case Family::kJdDiag: {
      // U^T dW_i V = s_i P'_i^T P_i, its leading k x k block at width k.
      Side &va = side(false, s.rank), &ub = side(true, s.rank);
      const Index k = std::min<Index>({s.rank, va.p.cols(), ub.p.cols()});
      double e = total;
      for (size_t i = 0; i < n; ++i) {
        const Index ri = at_[i + 1] - at_[i];
        const MatrixXd c =
            scales_[i] * ub.p.block(at_[i], 0, ri, k).transpose() * va.p.block(at_[i], 0, ri, k);
        e -= weights_[i] * (s.family == Family::kJdDiag ? c.diagonal().squaredNorm() : c.squaredNorm());
      }
      return std::max(0.0, e);
    }
    default: break;
  }
  throw std::logic_error("predict: unhandled structure family");
}

}  // namespace hydraopt
