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

Eigen::MatrixXd round(const Eigen::MatrixXd& m, const std::optional<QuantFormat>& format, DType dtype) {
  return format ? round_to_format(m, *format) : round_to_dtype(m, dtype);
}

void store(std::vector<Eigen::MatrixXd>* ms, const std::optional<QuantFormat>& format, DType dtype) {
  for (auto& m : *ms) m = round(m, format, dtype);
}

// The input side's matrices, whitened, stored as read: unwhitened rows
// (or, transposed, columns) rounded, then whitened again.
void store_whitened(std::vector<Eigen::MatrixXd>* ms, const std::optional<QuantFormat>& format, DType dtype,
                    const Whitening& w, bool columns) {
  for (auto& m : *ms) {
    m = columns ? Eigen::MatrixXd(w.whiten(round(w.unwhiten(m.transpose()), format, dtype)).transpose())
                : w.whiten(round(w.unwhiten(m), format, dtype));
  }
}

// `input_heads`: the fit is transposed, so its heads are the input side.
ModuleFit store_oriented(const ModuleProblem& p, ModuleFit fit, const Precision& precision, DType dtype,
                         const Whitening* w, bool input_heads) {
  auto put = [&](std::vector<Eigen::MatrixXd>* ms, const std::optional<QuantFormat>& format, bool input) {
    if (w && input) store_whitened(ms, format, dtype, *w, input_heads);
    else store(ms, format, dtype);
  };
  put(&fit.bodies, precision.bodies, !input_heads);
  // A head is solved for its tasks of non-zero weight, and then carries
  // their scales; a head with none stays as fitted.
  std::vector<bool> solved(fit.heads.size(), false);
  for (size_t i = 0; i < p.tasks(); ++i) solved[fit.head_of[i]] = solved[fit.head_of[i]] || p.weights[i] > 0;
  solve_heads(p, &fit);
  for (size_t i = 0; i < p.tasks(); ++i) {
    if (solved[fit.head_of[i]]) fit.scale[i] = 1.0;
  }
  put(&fit.heads, precision.heads, input_heads);
  solve_cores(p, &fit);
  for (size_t i = 0; i < p.tasks(); ++i) {  // the core step solves for scale 1
    if (fit.core_of[i] >= 0 && fit.scale[i] != 1.0 && fit.scale[i] != 0.0) fit.cores[fit.core_of[i]] /= fit.scale[i];
  }
  store(&fit.cores, precision.cores, dtype);
  return fit;
}

}  // namespace

ModuleFit store_in_precision(const ModuleProblem& p, ModuleFit fit, const Precision& precision, DType dtype,
                             const Whitening* w) {
  if (precision.all_float()) {  // rounded as is, no solve
    if (!w) return std::move(fit).rounded(dtype);
    return whitened(unwhitened(std::move(fit), *w).rounded(dtype), *w);
  }
  if (shared(fit.head_of) && !shared(fit.body_of)) {
    // Heads are the shared side: store them first, on the transposed problem.
    const Precision swapped{precision.heads, precision.bodies, precision.cores};
    return store_oriented(p.transposed(), fit.transposed(), swapped, dtype, w, true).transposed();
  }
  return store_oriented(p, std::move(fit), precision, dtype, w, false);
}

ModuleFit stored_values(ModuleFit fit, const Precision& precision, DType dtype) {
  store(&fit.bodies, precision.bodies, dtype);
  store(&fit.heads, precision.heads, dtype);
  store(&fit.cores, precision.cores, dtype);
  return fit;
}

}  // namespace hydraopt
