// Storing a fit in a precision: the float dtype, or group-wise integers
// per role (issue 17).
#pragma once

#include "core/fit.h"
#include "core/storage.h"
#include "methods/whitening.h"

namespace hydraopt {

/// The fit as stored in `precision`, quantization-aware: the matrices
/// shared by several tasks are stored first, and the others are then
/// solved, in closed form, against what is stored before being stored
/// themselves. In the fit's orientation with the shared side as bodies
/// (the transposed problem when only heads are shared):
///   1. bodies stored (quantized or rounded to `dtype`);
///   2. heads solved given the stored bodies and the cores (ALS's head step,
///      methods/als.cc: a least-squares solution that also carries the
///      tasks' scales), then stored;
///   3. cores solved given the stored heads and bodies, then stored.
/// With every role in the float dtype this is fit.rounded(dtype), as
/// today: no solve. The errors of the result are measured as for any fit.
///
/// Calibrated (`w` given): `p` and `fit` are whitened (methods/whitening.h)
/// and so is the result, but every input-side factor is stored as it will
/// be read, unwhitened: rounded through R -> R C^{-1/2} -> stored -> C^{1/2},
/// so the solves see what is stored, in the calibrated metric. unwhitened()
/// of the result is the stored fit (stored_values() makes it exact).
ModuleFit store_in_precision(const ModuleProblem& p, ModuleFit fit, const Precision& precision, DType dtype,
                             const Whitening* w = nullptr);
/// Every matrix rounded again to its role's stored values (idempotent on a
/// stored fit; removes the rounding of unwhitening's round trip).
ModuleFit stored_values(ModuleFit fit, const Precision& precision, DType dtype);

}  // namespace hydraopt
