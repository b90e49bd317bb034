#include "util/sha256.h"

#include <openssl/evp.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <vector>

#include "hydraopt/error.h"

namespace hydraopt::util {

namespace {

struct Digest {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx{EVP_MD_CTX_new(), &EVP_MD_CTX_free};
  Digest() {
    if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) throw std::runtime_error("sha256 init");
  }
  void update(const void* p, size_t n) { EVP_DigestUpdate(ctx.get(), p, n); }
  std::string hex() {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned len = 0;
    EVP_DigestFinal_ex(ctx.get(), md, &len);
    std::string s(2 * len, '0');
    static const char* digits = "0123456789abcdef";
    for (unsigned i = 0; i < len; ++i) {
      s[2 * i] = digits[md[i] >> 4];
      s[2 * i + 1] = digits[md[i] & 15];
    }
    return s;
  }
};

}  // namespace

Sha256::Sha256() : ctx_(new Digest) {}
Sha256::~Sha256() { delete static_cast<Digest*>(ctx_); }
void Sha256::update(std::span<const std::byte> bytes) { static_cast<Digest*>(ctx_)->update(bytes.data(), bytes.size()); }
std::string Sha256::hex() { return static_cast<Digest*>(ctx_)->hex(); }

std::string sha256_hex(std::span<const std::byte> bytes) {
  Digest d;
  d.update(bytes.data(), bytes.size());
  return d.hex();
}

std::string sha256_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path.string(), "", "cannot open for hashing");
  Digest d;
  std::vector<char> buf(1 << 20);
  while (in.read(buf.data(), static_cast<std::streamsize>(buf.size())) || in.gcount() > 0) {
    d.update(buf.data(), static_cast<size_t>(in.gcount()));
  }
  return d.hex();
}

}  // namespace hydraopt::util
