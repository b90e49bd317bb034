// The storage structures one module can take, and how each is fitted.
//
// Families (k = shared rank, G = number of groups; G = 0 means one per task):
//   exact          every task's own A and B, bit for bit
//   merged(k)      one head, one body for all tasks (best rank-k fit of the
//                  weighted mean update; closed form)
//   shared-A(k,G)  one body (k x in), heads per task (closed form: body =
//                  top-k right singular vectors of the weighted stack of
//                  the dW_i, heads by projection) or per task group (ALS)
//   shared-A+core(k',G)  one wide body (k' x in, k' > r), a small core per
//                  task (r x k'), heads per task (closed form: the task's
//                  own s B_i and core A_i Ahat^T) or per group (ALS)
//   multi-A(k,G)   G bodies, each shared by a task group, heads per task
//                  (closed form per group)
//   shared-B / shared-B+core / multi-B   the mirrored forms (transpose)
//   jd-full(k)     U C_i V^T, shared U, V and a full k x k core per task
//                  (HOOI alternation from the closed-form subspaces)
//   jd-diag(k)     U diag(c_i) V^T (alternating least squares)
//   avg-A          body = mean of the A's, heads = s_i B_i (naive reference)
// Every iterative fit starts from a closed form and alternates exact block
// minimisations, so its objective sum_i w_i ||dW_i - dW_hat_i||^2 never rises.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/structure.h"
#include "linalg/factored.h"
#include "methods/cluster.h"
#include "methods/fit_error.h"
#include "methods/precision.h"

namespace hydraopt {

struct FitOptions {
  int max_iters = 30;    ///< ALS iterations at most
  double tol = 1e-4;     ///< stop when the objective improves by less, relatively
  /// Optional user grouping (label per task) for the grouped families.
  std::vector<int> user_groups;
  /// Columns of the shared-body subspace to compute up front, in units of
  /// the module's rank r: the planner's widest candidate body (4r); 1 when
  /// only known structures are fitted (wider ones widen it on demand).
  int64_t body_width = 4;
  /// Predicted errors only (Predictor, methods/predict.h): Grams and
  /// spectra in single precision. Fits ignore it.
  bool estimate = false;
};

struct FitStats {
  int iterations = 0;
  std::vector<double> objective;  ///< weighted error after the start and each iteration
};

/// Fits structures on one module; caches what several structures share
/// (singular subspaces, clusterings) across calls.
class ModuleFitter {
 public:
  ModuleFitter(const ModuleProblem& p, FitOptions o);
  ~ModuleFitter();
  ModuleFit fit(const StructureSpec& s, FitStats* stats = nullptr);
  ModuleShape shape() const;

 private:
  /// Top right singular subspace of the stacked weighted updates, with at
  /// least k columns (computed lazily, widened on demand).
  const linalg::Subspace& right(int64_t k);
  /// min(sum of ranks, in): the most columns right() can give.
  int64_t right_rank() const;
  std::vector<int> head_groups(int groups);
  int64_t head_cluster_width() const;
  std::vector<int> body_groups(int groups);
  ModuleFitter& mirrored();
  /// dW_i V = s_i B_i (A_i V) for every task: the heads in a body's basis.
  std::vector<Eigen::MatrixXd> projections(const Eigen::MatrixXd& v) const;
  /// A fit whose only body is V^T, shared by every task.
  ModuleFit shared_body(const Eigen::MatrixXd& v) const;

  ModuleFit fit_exact() const;
  ModuleFit fit_merged(int64_t k);
  ModuleFit fit_shared(int64_t k, int groups, FitStats* stats);
  ModuleFit fit_shared_core(int64_t k, int groups, FitStats* stats);
  ModuleFit fit_multi(int64_t k, int groups);
  ModuleFit fit_jd(int64_t k, bool diagonal, FitStats* stats);
  ModuleFit fit_avg() const;

  /// Top right subspace of the weighted mean update, at least k columns
  /// (from its factors L R when given, as fit_merged has them).
  const linalg::Subspace& merged(int64_t k, const Eigen::MatrixXd* l = nullptr, const Eigen::MatrixXd* r = nullptr);

  const ModuleProblem& p_;
  FitOptions o_;
  /// right()'s subspaces by the width solved for (body_columns).
  std::map<int64_t, linalg::Subspace> right_;
  /// Top right subspace of the weighted mean update (merged structures).
  std::optional<linalg::Subspace> merged_;
  std::optional<Dendrogram> head_tree_, body_tree_;
  std::unique_ptr<ModuleProblem> transposed_problem_;
  std::unique_ptr<ModuleFitter> mirror_;
  ModuleFitter* origin_ = nullptr;  ///< set on a mirror: the fitter it mirrors
};


/// The module's shape: in, out and each task's rank.
ModuleShape shape_of(const ModuleProblem& p);

/// First row of each task in a stack of the tasks' factors (r_i rows
/// each), and one past the last.
std::vector<Eigen::Index> task_offsets(const ModuleShape& m);

/// (sum_i w_i dW_i) / W = L R, the weighted mean update, in factored form:
/// L = [w_i s_i B_i / W ...] (out x sum of ranks), R = [A_1; ...].
void mean_update(const ModuleProblem& p, Eigen::MatrixXd* l, Eigen::MatrixXd* r);

/// Squared distances between the tasks' normalised right Grams
/// dW_i^T dW_i / ||dW_i||^2, what a shared body must capture, from the
/// Gram zz of the stacked S_i A_i (S_i a core of s_i B_i; task i's rows at
/// at[i] .. at[i + 1]): tr(G_i G_j) = ||zz_ij||^2 / (n_i n_j). The body
/// groups' clustering.
Eigen::MatrixXd body_distances(const Eigen::MatrixXd& zz, const std::vector<Eigen::Index>& at);

/// For the problem p of `shape` and `weights` whose task i's factors are
/// read(i) (transposed, as stored): ModuleFitter(p, o).fit(s).rounded(dtype)
/// and its fit_errors2 (into `err2`, from `norms` = update_norms2(p)) for a per_task_heads
/// structure, bit for bit, without holding the module's factors: each task
/// is read once for the body (twice when the range finder needs the stack
/// in double) and once for its head and error, and dropped after each.
ModuleFit fit_shared_heads(const ModuleShape& shape, const std::vector<double>& weights,
                           const std::function<ModuleLoraT(size_t)>& read, const StructureSpec& s, const FitOptions& o,
                           DType dtype, const std::vector<double>& norms, std::vector<double>* err2);

/// Alternating least squares on a fit's stored matrices with its sharing
/// pattern fixed: heads, then cores, then bodies, each an exact minimiser.
/// Requires scale == 1 for every task.
void als_refine(const ModuleProblem& p, ModuleFit* f, const FitOptions& o, FitStats* stats);

/// ALS's exact block minimisations, once: every head given the cores and
/// bodies (a group's head for its tasks' weighted sum), and every core given
/// the heads and bodies. The new heads carry the tasks' scales: set
/// scale = 1 for the tasks whose heads were solved.
void solve_heads(const ModuleProblem& p, ModuleFit* f);
void solve_cores(const ModuleProblem& p, ModuleFit* f);

}  // namespace hydraopt
