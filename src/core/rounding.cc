#include "core/rounding.h"

#include <stdexcept>
#include <string>

#include "core/half.h"

namespace hydraopt {

namespace {

// f(round) with round(x) the value x takes in `dtype`: one rule for both
// functions below. Plain loops over the data vectorise (unaryExpr's does not).
template <typename F>
auto with_rounding(DType dtype, const char* what, F&& f) {
  switch (dtype) {
    case DType::F64: return f([](double x) { return x; });
    case DType::F32: return f([](double x) { return double(float(x)); });
    case DType::BF16: return f([](double x) { return double(bf16_to_float(float_to_bf16(float(x)))); });
    case DType::F16: return f([](double x) { return double(f16_to_float(float_to_f16(float(x)))); });
    case DType::U8: break;
  }
  throw std::logic_error(std::string(what) + ": U8 is not a float dtype");
}

}  // namespace

Eigen::MatrixXd round_to_dtype(const Eigen::MatrixXd& m, DType dtype) {
  return with_rounding(dtype, "round_to_dtype", [&](auto round) {
    Eigen::MatrixXd out(m.rows(), m.cols());
    for (Eigen::Index i = 0; i < m.size(); ++i) out.data()[i] = round(m.data()[i]);
    return out;
  });
}

bool kept_by_dtype(const Eigen::MatrixXd& m, DType dtype) {
  return with_rounding(dtype, "kept_by_dtype", [&](auto round) {
    for (Eigen::Index i = 0; i < m.size(); ++i) {
      if (round(m.data()[i]) != m.data()[i]) return false;
    }
    return true;
  });
}

}  // namespace hydraopt
