// Overflow-checked size arithmetic.
#pragma once

#include <stdexcept>
#include <type_traits>

namespace hydraopt::util {

template <typename T>
T mul_checked(T a, T b) {
  static_assert(std::is_integral_v<T>);
  T r;
  if (__builtin_mul_overflow(a, b, &r)) throw std::overflow_error("size arithmetic overflow");
  return r;
}

template <typename T>
T add_checked(T a, T b) {
  static_assert(std::is_integral_v<T>);
  T r;
  if (__builtin_add_overflow(a, b, &r)) throw std::overflow_error("size arithmetic overflow");
  return r;
}

}  // namespace hydraopt::util
