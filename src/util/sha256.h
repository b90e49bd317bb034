// SHA-256 of files and byte ranges (OpenSSL), as lowercase hex.
#pragma once

#include <cstddef>
#include <filesystem>
#include <span>
#include <string>

namespace hydraopt::util {

std::string sha256_hex(std::span<const std::byte> bytes);

/// Incremental SHA-256: update() with consecutive pieces, then hex().
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  /// A digest that goes on from `other`'s state (for inputs that share a prefix).
  Sha256(const Sha256& other);
  Sha256& operator=(const Sha256&) = delete;
  void update(std::span<const std::byte> bytes);
  std::string hex();

 private:
  void* ctx_;
};
std::string sha256_file(const std::filesystem::path& path);

}  // namespace hydraopt::util
