#include "util/sha256.h"

#include <openssl/evp.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>

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
Sha256::Sha256(const Sha256& other) : ctx_(new Digest) {
  if (EVP_MD_CTX_copy_ex(static_cast<Digest*>(ctx_)->ctx.get(), static_cast<const Digest*>(other.ctx_)->ctx.get()) != 1) {
    delete static_cast<Digest*>(ctx_);
    throw std::runtime_error("sha256 copy");
  }
}
Sha256::~Sha256() { delete static_cast<Digest*>(ctx_); }
void Sha256::update(std::span<const std::byte> bytes) { static_cast<Digest*>(ctx_)->update(bytes.data(), bytes.size()); }
std::string Sha256::hex() { return static_cast<Digest*>(ctx_)->hex(); }

std::string sha256_hex(std::span<const std::byte> bytes) {
  Digest d;
  d.update(bytes.data(), bytes.size());
  return d.hex();
}

std::string sha256_file(const std::filesystem::path& path) {
  // Mapped rather than read: the file is usually in the page cache (verify
  // has just read it), and mapping spares copying it. Hashed in 1 MiB
  // steps, each unmapped after use so the resident set stays small.
  // (Like every mapped read, a file truncated by another process meanwhile
  // would raise SIGBUS; the adapters are read the same way.)
  struct Fd {
    int fd;
    ~Fd() {
      if (fd >= 0) ::close(fd);
    }
  } f{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  auto fail = [&](const char* what) {
    throw Error(path.string(), "", std::string("cannot ") + what + " for hashing: " + std::strerror(errno));
  };
  if (f.fd < 0) fail("open");
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) fail("stat");
  if (!S_ISREG(st.st_mode)) throw Error(path.string(), "", "cannot hash: not a regular file");
  Digest d;
  constexpr off_t kStep = off_t{1} << 20;  // a multiple of the page size
  for (off_t at = 0; at < st.st_size; at += kStep) {
    const size_t n = static_cast<size_t>(std::min<off_t>(kStep, st.st_size - at));
    void* p = ::mmap(nullptr, n, PROT_READ, MAP_PRIVATE, f.fd, at);
    if (p == MAP_FAILED) fail("map");
    ::madvise(p, n, MADV_SEQUENTIAL);
    d.update(p, n);
    ::munmap(p, n);
  }
  return d.hex();
}

}  // namespace hydraopt::util
