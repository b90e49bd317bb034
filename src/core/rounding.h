// What a stored number becomes: rounding to a storage dtype and back.
#pragma once

#include <Eigen/Core>

#include "hydraopt/dtype.h"

namespace hydraopt {

/// The value a double takes after rounding to `dtype` (to nearest, ties to
/// even) and back.
Eigen::MatrixXd round_to_dtype(const Eigen::MatrixXd& m, DType dtype);

/// Whether round_to_dtype(m, dtype) == m: every value is one of dtype's.
bool kept_by_dtype(const Eigen::MatrixXd& m, DType dtype);

}  // namespace hydraopt
