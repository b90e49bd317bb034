// SHA-256 of files and byte ranges (OpenSSL), as lowercase hex.
#pragma once

#include <cstddef>
#include <filesystem>
#include <span>
#include <string>

namespace hydraopt::util {

std::string sha256_hex(std::span<const std::byte> bytes);
std::string sha256_file(const std::filesystem::path& path);

}  // namespace hydraopt::util
