// The method registry: one table of descriptors that drives `hydraopt
// methods`, option validation and dispatch.
#include <mutex>

#include "hydraopt/merge.h"

namespace hydraopt {

namespace {

std::vector<MethodInfo> build() {
  const MethodParam iters{"max_iters", "30", "alternating least squares iterations at most"};
  const MethodParam tol{"tol", "1e-4", "stop ALS when the objective improves by less, relatively"};
  const MethodParam rank{"rank", "0", "rank of the merged adapter (0: the inputs' largest rank)"};
  const MethodParam density{"density", "0.2", "fraction of entries kept (magnitude trim / DARE keep rate)"};
  const MethodParam sign{"sign_method", "total", "sign election: total (sign of the sum) or frequency"};
  const MethodParam seed{"seed", "0", "DARE drop-mask seed"};
  auto lambda = [](const char* d) { return MethodParam{"lambda", d, "scaling of the merged update"}; };
  return {
      {"hydraopt", false, true,
       "plans a structure per module (shared A/B bodies or heads, cores, clusters, exact) "
       "to minimise the task-weighted error within the budget",
       "this project (docs/methods.md)", {iters, tol}},
      {"hydra", false, false,
       "the hydra point: one optimal shared A of rank r per module, a head per task (closed form)",
       "this project (docs/methods.md); the fixed structure hydraopt's planner starts from", {}},
      {"hydra-avg", false, false, "naive hydra: the mean of the A's shared, each task's B kept",
       "HydraLoRA-style sharing (Tian et al., 2024), without optimisation", {}},
      {"jd-full", false, true, "shared U, V with a full k x k core per task (Tucker/HOOI); k fills the budget",
       "De Lathauwer et al., 2000 (HOOI)", {iters, tol}},
      {"jd-diag", false, true, "shared U, V with a diagonal core per task (ALS); k fills the budget",
       "joint diagonalisation / INDSCAL (Carroll & Chang, 1970)", {iters, tol}},
      {"linear", true, false, "PEFT linear: A's and B's merged separately with weights sqrt(w s)",
       "PEFT add_weighted_adapter(combination_type='linear')", {lambda("1/N"), rank}},
      {"ta", true, false, "task arithmetic on dW, then truncated SVD to rank r",
       "Ilharco et al., 2023, arXiv:2212.04089", {lambda("1/N"), rank}},
      {"ties", true, false, "trim, elect sign, disjoint mean on dW, then SVD to rank r",
       "Yadav et al., 2023, arXiv:2306.01708", {density, sign, lambda("1"), rank}},
      {"dare-linear", true, false, "random drop and rescale on dW, weighted sum, then SVD",
       "Yu et al., 2024, arXiv:2311.03099", {density, seed, lambda("1/N"), rank}},
      {"dare-ties", true, false, "random drop and rescale, TIES sign election and disjoint mean, then SVD",
       "Yu et al., 2024, arXiv:2311.03099", {density, sign, seed, lambda("1"), rank}},
      {"magnitude-prune", true, false, "magnitude trim per task, weighted sum, then SVD",
       "PEFT add_weighted_adapter(combination_type='magnitude_prune_svd')", {density, lambda("1/N"), rank}},
      {"knots-ta", true, false, "SVD-align the task updates, task arithmetic on the aligned coordinates",
       "Stoica et al., 2024, arXiv:2410.19735", {lambda("1/N"), rank}},
      {"knots-ties", true, false, "SVD-align the task updates, TIES on the aligned coordinates",
       "Stoica et al., 2024, arXiv:2410.19735", {density, sign, lambda("1"), rank}},
      {"tsv", true, false, "task singular vectors: per-task top singular vectors, whitened and summed",
       "Gargiulo et al., 2025, arXiv:2412.00081", {lambda("1"), rank}},
  };
}

}  // namespace

const std::vector<MethodInfo>& methods() {
  static std::once_flag once;
  static std::vector<MethodInfo> table;
  std::call_once(once, [] { table = build(); });
  return table;
}

const MethodInfo* find_method(const std::string& name) {
  for (const auto& m : methods()) {
    if (m.name == name) return &m;
  }
  return nullptr;
}

}  // namespace hydraopt
