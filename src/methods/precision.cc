#include "methods/precision.h"

#include <algorithm>

#include "core/rounding.h"
#include "methods/structures.h"

namespace hydraopt {

namespace {

bool shared(const std::vector<int>& owner) {
  std::vector<int> sorted = owner;
  std::sort(sorted.begin(), sorted.end());
  return std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end();
}

void store(std::vector<Eigen::MatrixXd>* ms, const std::optional<QuantFormat>& format, DType dtype) {
  for (auto& m : *ms) m = format ? round_to_format(m, *format) : round_to_dtype(m, dtype);
}

}  // namespace

ModuleFit store_in_precision(const ModuleProblem& p, ModuleFit fit, const Precision& precision, DType dtype) {
  if (precision.all_float()) return std::move(fit).rounded(dtype);
  if (shared(fit.head_of) && !shared(fit.body_of)) {
    // Heads are the shared side: store them first, on the transposed problem.
    const Precision swapped{precision.heads, precision.bodies, precision.cores};
    return store_in_precision(p.transposed(), fit.transposed(), swapped, dtype).transposed();
  }
  store(&fit.bodies, precision.bodies, dtype);
  // A head is solved for its tasks of non-zero weight, and then carries
  // their scales; a head with none stays as fitted.
  std::vector<bool> solved(fit.heads.size(), false);
  for (size_t i = 0; i < p.tasks(); ++i) solved[fit.head_of[i]] = solved[fit.head_of[i]] || p.weights[i] > 0;
  solve_heads(p, &fit);
  for (size_t i = 0; i < p.tasks(); ++i) {
    if (solved[fit.head_of[i]]) fit.scale[i] = 1.0;
  }
  store(&fit.heads, precision.heads, dtype);
  solve_cores(p, &fit);
  for (size_t i = 0; i < p.tasks(); ++i) {  // the core step solves for scale 1
    if (fit.core_of[i] >= 0 && fit.scale[i] != 1.0 && fit.scale[i] != 0.0) fit.cores[fit.core_of[i]] /= fit.scale[i];
  }
  store(&fit.cores, precision.cores, dtype);
  return fit;
}

}  // namespace hydraopt
