#include "methods/baselines.h"

#include <Eigen/SVD>
#include <algorithm>
#include <cassert>
#include <cmath>
#include <functional>
#include <limits>

#include "hydraopt/error.h"
#include "linalg/dense_svd.h"
#include "linalg/factored.h"
#include "methods/whitening.h"
#include "util/random.h"

namespace hydraopt {

using Eigen::Index;
using Eigen::MatrixXd;
using Eigen::VectorXd;

namespace {

// ---------------------------------------------------------------- the table

enum class Space { kFactors, kFactored, kDense, kAligned, kTaskSingular, kRegression };
enum class Sparsify { kNone, kMagnitude, kDare };
enum class Consensus { kSum, kTies };
enum class DefaultLambda { kMean, kOne };  // 1/N, or 1

struct MergeMethod {
  const char* name;
  Space space;
  Sparsify sparsify;
  Consensus consensus;
  DefaultLambda default_lambda;
  const char* summary;
  const char* reference;
};

// Only the entrywise spaces (dense, aligned) take a sparsify step or a ties
// consensus; the others are sums by construction.
//
// PEFT (add_weighted_adapter, PEFT 0.x). For the "*_svd" combination types
// PEFT merges get_delta_weight(i) = s_i B_i A_i, which already carries the
// LoRA scaling s_i = alpha_i / r_i, with weights weights[i] * s_i: the
// scaling is applied twice. We apply it once (lambda sum_i s_i B_i A_i for
// ta), so each dense row below equals
//   add_weighted_adapter(adapters, weights=[lambda / s_1, .., lambda / s_N],
//                        adapter_name, combination_type=T, svd_rank=k,
//                        svd_clamp=None, density=density,
//                        majority_sign_method=sign_method)
// up to rounding, with T in the row's comment (PEFT's merged adapter has
// lora_alpha = r, scaling 1; with use_rslora it is sqrt(k) larger). Its
// pieces (merge_utils) are the ones here: magnitude_based_pruning keeps
// int(density * n) entries, the sign election elects + on a zero measure,
// disjoint_merge averages the entries with the elected sign. DARE's mask
// is ours (counter-based, below), PEFT's torch.bernoulli: same law, other
// draws. PEFT's non-svd "ties", "dare_*" and "magnitude_prune" merge the
// A's and the B's separately; no row here does.
constexpr MergeMethod kMethods[] = {
    // = PEFT combination_type="linear" with weights lambda (the scaling
    // once there: sqrt(lambda s_i) on A_i and on B_i).
    {"linear", Space::kFactors, Sparsify::kNone, Consensus::kSum, DefaultLambda::kMean,
     "PEFT linear: A's and B's merged separately with weights sqrt(w s)",
     "PEFT add_weighted_adapter(combination_type='linear')"},
    // = PEFT "svd", weights lambda / s_i.
    {"ta", Space::kFactored, Sparsify::kNone, Consensus::kSum, DefaultLambda::kMean,
     "task arithmetic on dW, then truncated SVD to rank r", "Ilharco et al., 2023, arXiv:2212.04089"},
    // = PEFT "ties_svd", weights lambda / s_i.
    {"ties", Space::kDense, Sparsify::kMagnitude, Consensus::kTies, DefaultLambda::kOne,
     "trim, elect sign, disjoint mean on dW, then SVD to rank r", "Yadav et al., 2023, arXiv:2306.01708"},
    // = PEFT "dare_linear_svd", weights lambda / s_i (our mask).
    {"dare-linear", Space::kDense, Sparsify::kDare, Consensus::kSum, DefaultLambda::kMean,
     "random drop and rescale on dW, weighted sum, then SVD", "Yu et al., 2024, arXiv:2311.03099"},
    // = PEFT "dare_ties_svd", weights lambda / s_i (our mask).
    {"dare-ties", Space::kDense, Sparsify::kDare, Consensus::kTies, DefaultLambda::kOne,
     "random drop and rescale, TIES sign election and disjoint mean, then SVD", "Yu et al., 2024, arXiv:2311.03099"},
    // = PEFT "magnitude_prune_svd", weights lambda / s_i.
    {"magnitude-prune", Space::kDense, Sparsify::kMagnitude, Consensus::kSum, DefaultLambda::kMean,
     "magnitude trim per task, weighted sum, then SVD",
     "PEFT add_weighted_adapter(combination_type='magnitude_prune_svd')"},
    // knots-ta equals ta up to rounding: U U^T fixes every dW_i, so
    // U (sum_i U^T dW_i) = sum_i dW_i. Kept as the aligned space's plain row.
    // The aligned rows and tsv have no PEFT counterpart.
    {"knots-ta", Space::kAligned, Sparsify::kNone, Consensus::kSum, DefaultLambda::kMean,
     "SVD-align the task updates, task arithmetic on the aligned coordinates", "Stoica et al., 2024, arXiv:2410.19735"},
    {"knots-ties", Space::kAligned, Sparsify::kMagnitude, Consensus::kTies, DefaultLambda::kOne,
     "SVD-align the task updates, TIES on the aligned coordinates", "Stoica et al., 2024, arXiv:2410.19735"},
    {"tsv", Space::kTaskSingular, Sparsify::kNone, Consensus::kSum, DefaultLambda::kOne,
     "task singular vectors: per-task top singular vectors, whitened and summed",
     "Gargiulo et al., 2025, arXiv:2412.00081"},
    // RegMean's merge of dW_i (the regularisation is the calibration's
    // shrinkage towards the scaled identity, where RegMean scales the
    // Grams' off-diagonal entries); without calibration it is ta.
    {"regmean", Space::kRegression, Sparsify::kNone, Consensus::kSum, DefaultLambda::kMean,
     "RegMean: the least-squares merge on each task's inputs (merge --calibration), then SVD to rank r",
     "Jin et al., 2023, arXiv:2212.09849"},
};

// A method's parameters follow from its pieces: a sparsify step takes a
// density (and DARE a seed), a ties consensus a sign method; every method
// takes a scaling and an output rank.
std::vector<ParamSpec> params_of(const MergeMethod& m) {
  std::vector<ParamSpec> out;
  if (m.sparsify != Sparsify::kNone) {
    out.push_back(real_param("density", "0.2", "fraction of entries kept (magnitude trim / DARE keep rate)", 0, 1, true));
  }
  if (m.consensus == Consensus::kTies) {
    out.push_back(choice_param("sign_method", "total", "sign election: total (sign of the sum) or frequency",
                               {"total", "frequency"}));
  }
  if (m.sparsify == Sparsify::kDare) out.push_back(integer_param("seed", "0", "DARE drop-mask seed"));
  ParamSpec lambda = real_param("lambda", m.default_lambda == DefaultLambda::kMean ? "1/N" : "1",
                                "scaling of the merged update", -std::numeric_limits<double>::infinity(),
                                std::numeric_limits<double>::infinity());
  lambda.words = {"1/N"};
  out.push_back(std::move(lambda));
  out.push_back(integer_param("rank", "0", "rank of the merged adapter (0: the inputs' largest rank)"));
  return out;
}

const MergeMethod* find_method(const std::string& name) {
  for (const auto& m : kMethods) {
    if (name == m.name) return &m;
  }
  return nullptr;
}

enum class SignMethod { kTotal, kFrequency };

// ------------------------------------------------------------ random bits

// DARE mask, counter-based so it depends on nothing but its coordinates
// (util/random.h: finalize = splitmix_finalize, x_j = splitmix_at):
//   key  = finalize(finalize(finalize(seed) ^ module_index) ^ task)
//   u_j  = unit_double(x_j) of SplitMix64 from state key
//        = unit_double(finalize(key + (j + 1) * gamma))
// where j is the entry's column-major linear index; entry j survives iff
// u_j < density.
uint64_t dare_key(uint64_t seed, uint64_t module_index, uint64_t task) {
  using util::splitmix_finalize;
  return splitmix_finalize(splitmix_finalize(splitmix_finalize(seed) ^ module_index) ^ task);
}

// --------------------------------------------------------------- sparsify

// PEFT's magnitude_based_pruning: keeps the int(density * n) entries of
// largest |x| (n = x.size(); the double product truncated, as Python's
// int(): 409 of 2048 at density 0.2), zeroes the rest; density >= 1 keeps
// all (PEFT's prune). torch.topk leaves open which of equal |x| it keeps;
// here ties at the threshold go to the lower column-major index, i.e. the
// order is (|x| descending, index ascending). One n-sized scratch.
void trim_by_magnitude(MatrixXd* x, double density) {
  const Index n = x->size();
  const Index product = static_cast<Index>(density * static_cast<double>(n));  // truncated
  const Index keep = density >= 1 ? n : std::clamp<Index>(product, 0, n);
  if (keep >= n) return;
  if (keep == 0) {
    x->setZero();
    return;
  }
  double* d = x->data();
  std::vector<double> mag(n);
  for (Index j = 0; j < n; ++j) mag[j] = std::abs(d[j]);
  std::nth_element(mag.begin(), mag.begin() + (keep - 1), mag.end(), std::greater<double>());
  const double threshold = mag[keep - 1];
  mag = {};
  Index above = 0;
  for (Index j = 0; j < n; ++j) above += std::abs(d[j]) > threshold;
  Index ties_left = keep - above;
  for (Index j = 0; j < n; ++j) {
    const double a = std::abs(d[j]);
    if (a > threshold) continue;
    if (a == threshold && ties_left > 0) {
      --ties_left;
      continue;
    }
    d[j] = 0;
  }
}

void drop_and_rescale(MatrixXd* x, double density, uint64_t key) {
  if (density >= 1) return;
  if (density <= 0) {
    x->setZero();
    return;
  }
  const double rescale = 1 / density;
  double* d = x->data();
  for (Index j = 0; j < x->size(); ++j) {
    const double u = util::unit_double(util::splitmix_at(key, static_cast<uint64_t>(j)));
    d[j] = u < density ? d[j] * rescale : 0.0;
  }
}

void sparsify(Sparsify how, const MergeParams& params, uint64_t module_index, uint64_t task,
              MatrixXd* x) {
  switch (how) {
    case Sparsify::kNone:
      return;
    case Sparsify::kMagnitude:
      trim_by_magnitude(x, params.density);
      return;
    case Sparsify::kDare:
      drop_and_rescale(x, params.density, dare_key(params.seed, module_index, task));
      return;
  }
}

// -------------------------------------------------------------- consensus

// Sums kept per sign so that one pass over the tasks suffices for both the
// election and the disjoint mean (a two-pass scheme would rebuild and
// re-sparsify every dW_i). Memory: two double and two int matrices.
class TiesAccumulator {
 public:
  TiesAccumulator(Index rows, Index cols)
      : pos_sum_(MatrixXd::Zero(rows, cols)),
        neg_sum_(MatrixXd::Zero(rows, cols)),
        pos_n_(Eigen::MatrixXi::Zero(rows, cols)),
        neg_n_(Eigen::MatrixXi::Zero(rows, cols)) {}

  void add(const MatrixXd& t) {
    pos_sum_ += t.cwiseMax(0.0);
    neg_sum_ += t.cwiseMin(0.0);
    pos_n_ += (t.array() > 0).cast<int>().matrix();
    neg_n_ += (t.array() < 0).cast<int>().matrix();
  }

  // PEFT's calculate_majority_sign_mask and disjoint_merge. Elected sign
  // per entry: + iff the measure is >= 0, the measure being the sum of the
  // (sparsified) values for "total" (taken as sum of positives + sum of
  // negatives: the sum up to rounding) and #positive - #negative for
  // "frequency"; so a zero sum or tied counts elect + (as PEFT and
  // mergekit). Result: mean of the entries with the elected sign (zeros
  // never count; 0 if none agree).
  MatrixXd disjoint_mean(SignMethod method) && {
    MatrixXd& out = pos_sum_;
    double* ps = pos_sum_.data();
    const double* ns = neg_sum_.data();
    const int* pn = pos_n_.data();
    const int* nn = neg_n_.data();
    for (Index j = 0; j < pos_sum_.size(); ++j) {
      const bool plus = method == SignMethod::kFrequency ? pn[j] >= nn[j] : !(ps[j] + ns[j] < 0);
      if (plus) {
        ps[j] = pn[j] > 0 ? ps[j] / pn[j] : 0.0;
      } else {
        ps[j] = nn[j] > 0 ? ns[j] / nn[j] : 0.0;
      }
    }
    neg_sum_ = {};
    return std::move(out);
  }

 private:
  MatrixXd pos_sum_, neg_sum_;
  Eigen::MatrixXi pos_n_, neg_n_;
};

/// lambda * consensus_i(sparsify(task(i))) over i < n; task(i) returns an
/// empty matrix for a zero update (skipped: it adds nothing to a sum and
/// has no nonzero entry to vote or average with).
MatrixXd merge_entrywise(Index rows, Index cols, size_t n,
                         const std::function<MatrixXd(size_t)>& task, const MergeMethod& method,
                         const MergeParams& params, SignMethod sign_method, uint64_t module_index,
                         double lambda) {
  if (method.consensus == Consensus::kSum) {
    MatrixXd acc = MatrixXd::Zero(rows, cols);
    for (size_t i = 0; i < n; ++i) {
      MatrixXd t = task(i);
      if (t.size() == 0) continue;
      sparsify(method.sparsify, params, module_index, i, &t);
      acc += t;
    }
    acc *= lambda;
    return acc;
  }
  TiesAccumulator acc(rows, cols);
  for (size_t i = 0; i < n; ++i) {
    MatrixXd t = task(i);
    if (t.size() == 0) continue;
    sparsify(method.sparsify, params, module_index, i, &t);
    acc.add(t);
  }
  MatrixXd merged = std::move(acc).disjoint_mean(sign_method);
  merged *= lambda;
  return merged;
}

// ------------------------------------------------------------- refactorise

/// One head, one body for every task; zero-padded to rank k.
ModuleFit single_fit(const MatrixXd& u, const MatrixXd& vt, Index k, size_t tasks) {
  assert(u.cols() == vt.rows() && u.cols() <= k);
  ModuleFit f;
  MatrixXd head = MatrixXd::Zero(u.rows(), k), body = MatrixXd::Zero(k, vt.cols());
  head.leftCols(u.cols()) = u;
  body.topRows(vt.rows()) = vt;
  f.heads.push_back(std::move(head));
  f.bodies.push_back(std::move(body));
  f.head_of.assign(tasks, 0);
  f.body_of.assign(tasks, 0);
  f.core_of.assign(tasks, -1);
  f.scale.assign(tasks, 1.0);
  return f;
}

ModuleFit factored_fit(const MatrixXd& l, const MatrixXd& r, Index k, size_t tasks) {
  MatrixXd u, vt;
  linalg::factored_svd(l, r, k, &u, &vt);
  return single_fit(u, vt, k, tasks);
}

// ------------------------------------------------------------------ spaces

// PEFT add_weighted_adapter(combination_type="linear"): A_m = sum_i c_i A_i,
// B_m = sum_i c_i' B_i with c_i = sqrt(|lambda s_i|), c_i' = sign(lambda s_i)
// c_i (PEFT takes sqrt(lambda s_i); the sign keeps negative scalings
// meaningful). Cross terms B_i A_j stay, as in PEFT. Ranks below the
// largest are zero-padded at the end.
ModuleFit merge_factors(const ModuleProblem& p, double lambda, Index k) {
  const Index r = p.max_rank();
  MatrixXd bm = MatrixXd::Zero(p.out(), r), am = MatrixXd::Zero(r, p.in());
  for (size_t i = 0; i < p.tasks(); ++i) {
    const auto& lora = p.loras[i];
    if (lora.rank() == 0) continue;
    const double w = lambda * lora.scale;
    const double c = std::sqrt(std::abs(w));
    am.topRows(lora.rank()) += c * lora.A;
    bm.leftCols(lora.rank()) += (w < 0 ? -c : c) * lora.B;
  }
  if (k >= r) return single_fit(bm, am, k, p.tasks());
  return factored_fit(bm, am, k, p.tasks());
}

// lambda sum_i s_i B_i A_i = (lambda [s_1 B_1 .. s_N B_N]) [A_1; ..; A_N].
ModuleFit merge_factored(const ModuleProblem& p, double lambda, Index k) {
  Index total = 0;
  for (const auto& l : p.loras) total += l.rank();
  MatrixXd lcat(p.out(), total), rcat(total, p.in());
  Index at = 0;
  for (size_t i = 0; i < p.tasks(); ++i) {
    const Index r = p.loras[i].rank();
    lcat.middleCols(at, r) = lambda * p.left(i);
    rcat.middleRows(at, r) = p.loras[i].A;
    at += r;
  }
  return factored_fit(lcat, rcat, k, p.tasks());
}

ModuleFit merge_dense(const ModuleProblem& p, const MergeMethod& method, const MergeParams& params,
                      SignMethod sign_method, uint64_t module_index, double lambda, Index k) {
  auto task = [&](size_t i) -> MatrixXd {
    if (p.loras[i].rank() == 0) return MatrixXd();
    return p.left(i) * p.loras[i].A;
  };
  const MatrixXd merged = merge_entrywise(p.out(), p.in(), p.tasks(), task, method, params,
                                          sign_method, module_index, lambda);
  MatrixXd u, vt;
  const uint64_t seed = util::splitmix_finalize(module_index ^ 0x5bd1e995ULL);
  linalg::dense_truncated_svd(merged, k, seed, &u, &vt);
  return single_fit(u, vt, k, p.tasks());
}

// KnOTS: [dW_1 .. dW_N] = U S [V_1^T .. V_N^T]. U comes from the factored
// form: with A_i A_i^T = C_i^T C_i (C_i = left_core(A_i^T)), the columns
// M_i = s_i B_i C_i^T give M M^T = sum_i dW_i dW_i^T, so M = [M_1 .. M_N]
// (out x total rank) has the same left singular vectors. U keeps all
// min(out, M.cols()) thin columns (R); task coordinates X_i = U^T dW_i =
// S V_i^T (R x in) are merged entrywise and the update is U X_merged.
// Each column of U is signed so that its largest |entry| (the first of
// equals) is positive: the TIES election elects + on a zero measure
// (tied counts, a zero sum), so it is not invariant under flipping a row
// of every X_i, and the SVD's arbitrary signs would otherwise decide it.
ModuleFit merge_aligned(const ModuleProblem& p, const MergeMethod& method,
                        const MergeParams& params, SignMethod sign_method, uint64_t module_index,
                        double lambda, Index k) {
  std::vector<MatrixXd> parts;
  Index cols = 0;
  for (size_t i = 0; i < p.tasks(); ++i) {
    if (p.loras[i].rank() == 0) continue;
    const MatrixXd c = linalg::left_core(p.loras[i].A.transpose());
    parts.push_back(p.left(i) * c.transpose());
    cols += parts.back().cols();
  }
  MatrixXd m(p.out(), cols);
  Index at = 0;
  for (auto& part : parts) {
    m.middleCols(at, part.cols()) = part;
    at += part.cols();
  }
  parts.clear();
  MatrixXd u(p.out(), 0);
  if (m.size() > 0) {
    Eigen::BDCSVD<MatrixXd> svd(m, Eigen::ComputeThinU);
    u = svd.matrixU();
  }
  for (Index j = 0; j < u.cols(); ++j) {
    Index top = 0;
    u.col(j).cwiseAbs().maxCoeff(&top);
    if (u(top, j) < 0) u.col(j) = -u.col(j);
  }
  const MatrixXd ut = u.transpose();
  auto task = [&](size_t i) -> MatrixXd {
    if (p.loras[i].rank() == 0) return MatrixXd();
    return (ut * p.left(i)) * p.loras[i].A;
  };
  const MatrixXd x = merge_entrywise(u.cols(), p.in(), p.tasks(), task, method, params, sign_method,
                                     module_index, lambda);
  return factored_fit(u, x, k, p.tasks());
}

// TSV-M (Gargiulo et al. 2025): each task keeps its top k_i = max(1,
// ceil(k / N)) singular triplets (components with a zero singular value,
// e.g. a missing module, are dropped); U_cat and V_cat are replaced by
// their polar factors (P Q^T of their thin SVD P S Q^T), and the update is
// lambda U_perp diag(sigma_cat) V_perp^T, truncated to rank k.
ModuleFit merge_task_singular(const ModuleProblem& p, double lambda, Index k) {
  const Index n = static_cast<Index>(p.tasks());
  const Index ki = std::max<Index>(1, (k + n - 1) / n);
  std::vector<VectorXd> us, vs;
  std::vector<double> sigmas;
  for (size_t i = 0; i < p.tasks(); ++i) {
    if (p.loras[i].rank() == 0) continue;
    MatrixXd u, vt;
    linalg::factored_svd(p.left(i), p.loras[i].A, ki, &u, &vt);
    for (Index j = 0; j < u.cols(); ++j) {
      const double s = u.col(j).norm();
      if (!(s > 0)) continue;
      us.push_back(u.col(j) / s);
      vs.push_back(vt.row(j).transpose());
      sigmas.push_back(s);
    }
  }
  const Index total = static_cast<Index>(sigmas.size());
  if (total == 0) return single_fit(MatrixXd(p.out(), 0), MatrixXd(0, p.in()), k, p.tasks());
  MatrixXd ucat(p.out(), total), vcat(p.in(), total);
  for (Index j = 0; j < total; ++j) {
    ucat.col(j) = us[j];
    vcat.col(j) = vs[j];
  }
  auto polar = [](const MatrixXd& x) -> MatrixXd {
    Eigen::JacobiSVD<MatrixXd> svd(x, Eigen::ComputeThinU | Eigen::ComputeThinV);
    return svd.matrixU() * svd.matrixV().transpose();
  };
  const MatrixXd uperp = polar(ucat), vperp = polar(vcat);
  const VectorXd sig = lambda * Eigen::Map<const VectorXd>(sigmas.data(), total);
  return factored_fit(uperp * sig.asDiagonal(), vperp.transpose(), k, p.tasks());
}

void check_params(const MergeParams& params) {
  if (!(params.density >= 0 && params.density <= 1)) {
    throw Error("merge density must be in [0, 1], got " + std::to_string(params.density));
  }
  if (params.sign_method != "total" && params.sign_method != "frequency") {
    throw Error("unknown sign method '" + params.sign_method + "' (expected total or frequency)");
  }
  if (!std::isfinite(params.lambda)) throw Error("merge lambda must be finite");
  if (params.rank < 0) throw Error("merge rank must be >= 0");
}

}  // namespace

const std::vector<SingleMerge>& single_merges() {
  static const std::vector<SingleMerge> table = [] {
    std::vector<SingleMerge> v;
    for (const auto& m : kMethods) v.push_back({m.name, m.summary, m.reference, params_of(m)});
    return v;
  }();
  return table;
}

MergeParams merge_params(const Params& params) {
  MergeParams mp;
  if (params.has("density")) mp.density = params.real("density");
  if (params.has("sign_method")) mp.sign_method = params.text("sign_method");
  if (params.has("seed")) mp.seed = static_cast<uint64_t>(params.integer("seed"));
  if (params.has("lambda") && params.text("lambda") != "1/N") mp.lambda = params.real("lambda");
  if (params.has("rank")) mp.rank = params.integer("rank");
  return mp;
}

ModuleFit merge_single(const std::string& name, const ModuleProblem& p, const MergeParams& params,
                       uint64_t module_index, const ModuleMetric* metric) {
  const MergeMethod* method = find_method(name);
  if (!method) throw Error("unknown single-merge method '" + name + "'");
  check_params(params);
  if (p.tasks() == 0) throw Error("merge '" + name + "': no tasks");
  const SignMethod sign_method =
      params.sign_method == "frequency" ? SignMethod::kFrequency : SignMethod::kTotal;
  const Index k = params.rank > 0 ? params.rank : p.max_rank();
  double lambda = params.lambda;
  if (lambda == 0) {
    lambda =
        method->default_lambda == DefaultLambda::kMean ? 1.0 / static_cast<double>(p.tasks()) : 1.0;
  }
  switch (method->space) {
    case Space::kFactors:
      return merge_factors(p, lambda, k);
    case Space::kFactored:
      return merge_factored(p, lambda, k);
    case Space::kDense:
      return merge_dense(p, *method, params, sign_method, module_index, lambda, k);
    case Space::kAligned:
      return merge_aligned(p, *method, params, sign_method, module_index, lambda, k);
    case Space::kTaskSingular:
      return merge_task_singular(p, lambda, k);
    case Space::kRegression:
      if (!metric) return merge_factored(p, lambda, k);
      return unwhitened(merge_factored(regressed(p, *metric), lambda, k), *metric->mean);
  }
  throw Error("merge '" + name + "': unhandled method");  // unreachable
}

}  // namespace hydraopt
