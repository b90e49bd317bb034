// Element types of stored tensors.
#pragma once

#include "hydraopt/error.h"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace hydraopt {

/// The float types hold factors; U8 holds the packed integer codes of a
/// quantized factor in a bundle (core/quant.h) and is never a storage
/// dtype a user chooses.
enum class DType : uint8_t { F64, F32, BF16, F16, U8 };

/// Whether `t` holds real numbers (every type but U8).
inline bool is_float(DType t) { return t != DType::U8; }

/// Bytes per element.
inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::F64: return 8;
    case DType::F32: return 4;
    case DType::BF16:
    case DType::F16: return 2;
    case DType::U8: return 1;
  }
  return 0;
}

/// The safetensors spelling ("F32", "BF16", ...).
inline std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::F64: return "F64";
    case DType::F32: return "F32";
    case DType::BF16: return "BF16";
    case DType::F16: return "F16";
    case DType::U8: return "U8";
  }
  return "?";
}

/// Parses a safetensors dtype name; nullopt if unknown or unsupported.
inline std::optional<DType> dtype_from_name(std::string_view s) {
  if (s == "F64") return DType::F64;
  if (s == "F32") return DType::F32;
  if (s == "BF16") return DType::BF16;
  if (s == "F16") return DType::F16;
  if (s == "U8") return DType::U8;
  return std::nullopt;
}

/// A storage dtype as users name it (f32, f16 or bf16, either case); an
/// Error naming `what` (the option) otherwise.
inline DType parse_storage_dtype(std::string_view s, const std::string& what) {
  std::string upper(s);
  for (char& c : upper) c = static_cast<char>(c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c);
  if (auto d = dtype_from_name(upper); d && *d != DType::F64 && *d != DType::U8) return *d;
  throw Error(what + " must be f32, f16 or bf16, not '" + std::string(s) + "'");
}

/// The wider of two dtypes in the sense of "can hold the other's values":
/// F64 > F32 > {BF16, F16}; BF16 and F16 together widen to F32.
inline DType dtype_widest(DType a, DType b) {
  if (a == b) return a;
  if (a == DType::F64 || b == DType::F64) return DType::F64;
  return DType::F32;
}

}  // namespace hydraopt
