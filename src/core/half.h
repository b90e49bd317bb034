// Conversions between float and the 16-bit float formats.
//
// bf16 is the top half of an IEEE float; rounding is to nearest, ties to
// even, and NaN stays NaN. f16 goes through Eigen::half, which implements
// IEEE binary16 rounding (subnormals included).
#pragma once

#include <cstdint>
#include <cstring>

#include <Eigen/Core>

namespace hydraopt {

inline float bf16_to_float(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  // Both results, then a select: no branch, so loops over it vectorise.
  const uint32_t quiet_nan = (bits >> 16) | 0x40;  // sign and payload kept
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>((bits & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

inline float f16_to_float(uint16_t h) {
  return static_cast<float>(Eigen::numext::bit_cast<Eigen::half>(h));
}

inline uint16_t float_to_f16(float f) {
  return Eigen::numext::bit_cast<uint16_t>(Eigen::half(f));
}

}  // namespace hydraopt
