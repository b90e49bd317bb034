// Integer fields of untrusted JSON (bundle metadata, plan files). json's
// get<int>() converts a float such as 1e300 with undefined behaviour and
// wraps large integers; this checks the type and the range instead.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "hydraopt/error.h"

namespace hydraopt::io {

/// v as an integer in lo..hi, or an Error "<what> must be an integer in
/// lo..hi" naming `file` and `tensor`.
template <typename Json>
int64_t int_field(const Json& v, int64_t lo, int64_t hi, const std::string& file, const std::string& tensor,
                  const std::string& what) {
  bool ok = v.is_number_integer();
  if (ok && v.is_number_unsigned()) ok = v.template get<uint64_t>() <= static_cast<uint64_t>(hi);
  else if (ok) ok = v.template get<int64_t>() >= lo && v.template get<int64_t>() <= hi;
  if (!ok) throw Error(file, tensor, what + " must be an integer in " + std::to_string(lo) + ".." + std::to_string(hi));
  return v.is_number_unsigned() ? static_cast<int64_t>(v.template get<uint64_t>()) : v.template get<int64_t>();
}

}  // namespace hydraopt::io
