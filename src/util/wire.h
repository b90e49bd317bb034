// A minimal binary encoding for messages between the processes of one run
// (MPI ranks of one job, same binary and byte order): fixed-width integers
// and doubles copied bit for bit, so values travel exactly.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace hydraopt::util {

class WireWriter {
 public:
  explicit WireWriter(std::string& out) : out_(out) {}

  template <typename T>
    requires std::is_arithmetic_v<T>
  void put(T v) {
    out_.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  void put(const std::string& s) {
    put<uint64_t>(s.size());
    out_.append(s);
  }
  template <typename T>
    requires std::is_arithmetic_v<T>
  void put(const std::vector<T>& v) {
    put<uint64_t>(v.size());
    out_.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
  }

 private:
  std::string& out_;
};

class WireReader {
 public:
  explicit WireReader(std::string_view in) : in_(in) {}

  template <typename T>
    requires std::is_arithmetic_v<T>
  T get() {
    T v;
    std::memcpy(&v, take(sizeof v), sizeof v);
    return v;
  }
  std::string get_string() {
    const uint64_t n = get<uint64_t>();
    return std::string(take(n), n);
  }
  template <typename T>
    requires std::is_arithmetic_v<T>
  std::vector<T> get_vector() {
    const uint64_t n = get<uint64_t>();
    if (n > (in_.size() - pos_) / sizeof(T)) throw std::runtime_error("truncated message");
    std::vector<T> v(n);
    if (n) std::memcpy(v.data(), take(n * sizeof(T)), n * sizeof(T));
    return v;
  }
  /// The next n bytes, in place.
  const char* take(uint64_t n) {
    if (n > in_.size() - pos_) throw std::runtime_error("truncated message");
    const char* p = in_.data() + pos_;
    pos_ += n;
    return p;
  }
  size_t position() const { return pos_; }
  bool done() const { return pos_ == in_.size(); }

 private:
  std::string_view in_;
  size_t pos_ = 0;
};

}  // namespace hydraopt::util
