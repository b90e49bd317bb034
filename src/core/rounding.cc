#include "core/rounding.h"

#include <stdexcept>

#include "core/half.h"

namespace hydraopt {

Eigen::MatrixXd round_to_dtype(const Eigen::MatrixXd& m, DType dtype) {
  switch (dtype) {
    case DType::F64: return m;
    case DType::F32: return m.cast<float>().cast<double>();
    case DType::BF16: {  // a plain loop over the data, which vectorises (unaryExpr's does not)
      Eigen::MatrixXd out(m.rows(), m.cols());
      for (Eigen::Index i = 0; i < m.size(); ++i) out.data()[i] = bf16_to_float(float_to_bf16(static_cast<float>(m.data()[i])));
      return out;
    }
    case DType::F16:
      return m.unaryExpr([](double x) { return double(f16_to_float(float_to_f16(float(x)))); });
    case DType::U8: break;
  }
  throw std::logic_error("round_to_dtype: U8 is not a float dtype");
  return m;
}

bool kept_by_dtype(const Eigen::MatrixXd& m, DType dtype) {
  auto all = [&](auto&& same) {
    for (Eigen::Index i = 0; i < m.size(); ++i) {
      if (!same(m.data()[i])) return false;
    }
    return true;
  };
  switch (dtype) {
    case DType::F64: return true;
    case DType::F32: return all([](double x) { return double(float(x)) == x; });
    case DType::BF16: return all([](double x) { return double(bf16_to_float(float_to_bf16(float(x)))) == x; });
    case DType::F16: return all([](double x) { return double(f16_to_float(float_to_f16(float(x)))) == x; });
    case DType::U8: break;
  }
  throw std::logic_error("kept_by_dtype: U8 is not a float dtype");
}

}  // namespace hydraopt
