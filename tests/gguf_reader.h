// An independent GGUF v3 reader for the tests, written from the format
// (io/gguf.h's comment, llama.cpp's gguf.cpp and ggml-common.h), sharing
// no code with io/gguf.cc: tensors back as matrices in double, the block
// types decoded with ggml's own formulas (dequantize_row_q8_0, _q4_0,
// _q4_1 in ggml/src/ggml-quants.c) in exact arithmetic.
#pragma once

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "test_util.h"

namespace hydraopt::test {

/// An IEEE binary16 value, decoded by hand (no conversion of ours).
inline double f16_value(uint16_t h) {
  const int exponent = (h >> 10) & 31, mantissa = h & 1023;
  if (exponent == 31) return mantissa ? NAN : (h >> 15 ? -INFINITY : INFINITY);
  const double v =
      exponent == 0 ? std::ldexp(mantissa, -24) : std::ldexp(1024 + mantissa, exponent - 25);
  return h >> 15 ? -v : v;
}

/// ggml's blocks of 32 (ggml-common.h): bytes per block by type id.
inline int64_t ggml_test_block_bytes(uint32_t type) {
  switch (type) {
    case 2:
      return 18;  // Q4_0: f16 d, 16 bytes of nibbles
    case 3:
      return 20;  // Q4_1: f16 d, f16 m, 16 bytes of nibbles
    case 8:
      return 34;  // Q8_0: f16 d, 32 int8
    default:
      throw std::runtime_error("not a block type: " + std::to_string(type));
  }
}

/// One row of `n` elements of block type `type` at `p`, as ggml's
/// dequantize_row_* computes it (in double, so exactly).
inline std::vector<double> ggml_test_dequantize_row(uint32_t type, const char* p, int64_t n) {
  if (n % 32 != 0) throw std::runtime_error("a row of blocks must hold a multiple of 32 elements");
  std::vector<double> y(static_cast<size_t>(n));
  for (int64_t b = 0; b < n / 32; ++b, p += ggml_test_block_bytes(type)) {
    uint16_t dh, mh = 0;
    std::memcpy(&dh, p, 2);
    const double d = f16_value(dh);
    double* out = y.data() + 32 * b;
    if (type == 8) {  // x = d * q
      for (int j = 0; j < 32; ++j) out[j] = d * static_cast<int8_t>(p[2 + j]);
      continue;
    }
    if (type == 3) std::memcpy(&mh, p + 2, 2);
    const unsigned char* qs = reinterpret_cast<const unsigned char*>(p + (type == 3 ? 4 : 2));
    for (int j = 0; j < 16;
         ++j) {  // element j: low nibble of byte j; element j + 16: its high nibble
      const int x0 = qs[j] & 0x0F, x1 = qs[j] >> 4;
      if (type == 2) {  // Q4_0: x = d * (nibble - 8)
        out[j] = d * (x0 - 8);
        out[j + 16] = d * (x1 - 8);
      } else {  // Q4_1: x = d * nibble + m
        out[j] = d * x0 + f16_value(mh);
        out[j + 16] = d * x1 + f16_value(mh);
      }
    }
  }
  return y;
}

// A GGUF v3 reader written from the spec, independent of io/gguf.cc.
struct Parsed {
  uint32_t version = 0;
  std::map<std::string, std::pair<uint32_t, std::string>> kv;  // type, raw value bytes
  struct T {
    std::vector<uint64_t> ne;
    uint32_t type = 0;
    uint64_t offset = 0;
  };
  std::map<std::string, T> tensors;
  std::vector<std::string> order;
  uint64_t data_start = 0, file_size = 0;
  std::string bytes;

  template <typename V>
  V at(uint64_t* p) const {
    if (*p + sizeof(V) > bytes.size()) throw std::runtime_error("truncated");
    V v;
    std::memcpy(&v, bytes.data() + *p, sizeof(V));
    *p += sizeof(V);
    return v;
  }
  std::string str(uint64_t* p) const {
    const uint64_t n = at<uint64_t>(p);
    if (*p + n > bytes.size()) throw std::runtime_error("truncated string");
    std::string s = bytes.substr(*p, n);
    *p += n;
    return s;
  }
  // Skips a value of type t, returning its raw bytes.
  std::string value(uint32_t t, uint64_t* p) const {
    const uint64_t begin = *p;
    static const std::map<uint32_t, int> size = {{0, 1}, {1, 1}, {2, 2},  {3, 2},  {4, 4}, {5, 4},
                                                 {6, 4}, {7, 1}, {10, 8}, {11, 8}, {12, 8}};
    if (t == 8) {
      str(p);
    } else if (t == 9) {
      const uint32_t et = at<uint32_t>(p);
      const uint64_t n = at<uint64_t>(p);
      for (uint64_t i = 0; i < n; ++i) value(et, p);
    } else {
      *p += size.at(t);
    }
    return bytes.substr(begin, *p - begin);
  }

  static Parsed read(const fs::path& file) {
    Parsed g;
    g.bytes = test::read_text(file);
    g.file_size = g.bytes.size();
    if (g.bytes.substr(0, 4) != "GGUF") throw std::runtime_error("bad magic");
    uint64_t p = 4;
    g.version = g.at<uint32_t>(&p);
    const uint64_t nt = g.at<uint64_t>(&p), nkv = g.at<uint64_t>(&p);
    for (uint64_t i = 0; i < nkv; ++i) {
      std::string k = g.str(&p);
      const uint32_t t = g.at<uint32_t>(&p);
      g.kv[k] = {t, g.value(t, &p)};
    }
    for (uint64_t i = 0; i < nt; ++i) {
      std::string name = g.str(&p);
      T t;
      const uint32_t nd = g.at<uint32_t>(&p);
      for (uint32_t d = 0; d < nd; ++d) t.ne.push_back(g.at<uint64_t>(&p));
      t.type = g.at<uint32_t>(&p);
      t.offset = g.at<uint64_t>(&p);
      g.order.push_back(name);
      g.tensors[name] = t;
    }
    g.data_start = (p + 31) / 32 * 32;
    return g;
  }
  std::string string_kv(const std::string& k) const {
    auto& [t, raw] = kv.at(k);
    EXPECT_EQ(t, 8u) << k;
    return raw.substr(8);
  }
  // A scalar value of GGUF type `type`, read as T.
  template <typename T>
  T scalar_kv(const std::string& k, uint32_t type) const {
    auto& [t, raw] = kv.at(k);
    EXPECT_EQ(t, type) << k;
    T v;
    std::memcpy(&v, raw.data(), sizeof(T));
    return v;
  }
  float f32_kv(const std::string& k) const { return scalar_kv<float>(k, 6); }
  uint32_t u32_kv(const std::string& k) const { return scalar_kv<uint32_t>(k, 4); }
  // An F32 tensor with ne = {cols, rows} as a rows x cols matrix.
  Eigen::MatrixXd matrix(const std::string& name) const {
    const T& t = tensors.at(name);
    EXPECT_EQ(t.type, 0u);
    const uint64_t cols = t.ne[0], rows = t.ne.size() > 1 ? t.ne[1] : 1;
    Eigen::MatrixXd m(rows, cols);
    const char* d = bytes.data() + data_start + t.offset;
    for (uint64_t r = 0; r < rows; ++r) {
      for (uint64_t c = 0; c < cols; ++c) {
        float f;
        std::memcpy(&f, d + 4 * (r * cols + c), 4);
        m(r, c) = f;
      }
    }
    return m;
  }
  // A tensor of type F32, F16, Q8_0, Q4_0 or Q4_1 with ne = {cols, rows}
  // as a rows x cols matrix of the values llama.cpp reads from it.
  Eigen::MatrixXd values(const std::string& name) const {
    const T& t = tensors.at(name);
    const int64_t cols = static_cast<int64_t>(t.ne[0]),
                  rows = t.ne.size() > 1 ? static_cast<int64_t>(t.ne[1]) : 1;
    Eigen::MatrixXd m(rows, cols);
    const char* d = bytes.data() + data_start + t.offset;
    for (int64_t r = 0; r < rows; ++r) {
      if (t.type == 0 || t.type == 1) {
        for (int64_t c = 0; c < cols; ++c) {
          if (t.type == 0) {
            float f;
            std::memcpy(&f, d + 4 * (r * cols + c), 4);
            m(r, c) = f;
          } else {
            uint16_t h;
            std::memcpy(&h, d + 2 * (r * cols + c), 2);
            m(r, c) = f16_value(h);
          }
        }
        continue;
      }
      const int64_t row_bytes = cols / 32 * ggml_test_block_bytes(t.type);
      const std::vector<double> y = ggml_test_dequantize_row(t.type, d + r * row_bytes, cols);
      for (int64_t c = 0; c < cols; ++c) m(r, c) = y[static_cast<size_t>(c)];
    }
    return m;
  }
};

}  // namespace hydraopt::test
