// Strict UTF-8 validation (safetensors headers, names written into JSON).
#pragma once

#include <cstddef>
#include <span>
#include <string_view>

namespace hydraopt::io {

/// No overlong forms, no surrogates, at most U+10FFFF.
bool valid_utf8(std::span<const std::byte> s);
bool valid_utf8(std::string_view s);

}  // namespace hydraopt::io
