#include "io/gguf.h"

#include <fmt/format.h>

#include <cstring>
#include <set>
#include <type_traits>

#include "hydraopt/error.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"

namespace hydraopt::io {

namespace {

template <typename T>
void put(std::string* out, T v) {
  static_assert(std::is_trivially_copyable_v<T>);
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));  // the targets we build for are little-endian
  out->append(b, sizeof(T));
}

void put_string(std::string* out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out->append(s);
}

GgufKV kv(std::string key, GgufType type, std::string value) {
  return {std::move(key), type, std::move(value)};
}

template <typename T>
GgufKV kv_array(std::string key, GgufType elem, const std::vector<T>& v) {
  std::string s;
  put<uint32_t>(&s, static_cast<uint32_t>(elem));
  put<uint64_t>(&s, v.size());
  for (const T& x : v) put<T>(&s, x);
  return kv(std::move(key), GgufType::ARRAY, std::move(s));
}

constexpr int64_t kGgmlBlock = 32;  // QK8_0 = QK4_0 = QK4_1 in ggml-common.h

uint64_t align_up(uint64_t n) { return (n + kGgufAlignment - 1) / kGgufAlignment * kGgufAlignment; }

}  // namespace

GgufKV gguf_kv_string(std::string key, const std::string& v) {
  std::string s;
  put_string(&s, v);
  return kv(std::move(key), GgufType::STRING, std::move(s));
}

GgufKV gguf_kv_u32(std::string key, uint32_t v) {
  std::string s;
  put(&s, v);
  return kv(std::move(key), GgufType::U32, std::move(s));
}

GgufKV gguf_kv_f32(std::string key, float v) {
  std::string s;
  put(&s, v);
  return kv(std::move(key), GgufType::F32, std::move(s));
}

GgufKV gguf_kv_bool(std::string key, bool v) {
  return kv(std::move(key), GgufType::BOOL, std::string(1, v ? '\1' : '\0'));
}

GgufKV gguf_kv_strings(std::string key, const std::vector<std::string>& v) {
  std::string s;
  put<uint32_t>(&s, static_cast<uint32_t>(GgufType::STRING));
  put<uint64_t>(&s, v.size());
  for (const auto& x : v) put_string(&s, x);
  return kv(std::move(key), GgufType::ARRAY, std::move(s));
}

GgufKV gguf_kv_f32s(std::string key, const std::vector<float>& v) {
  return kv_array(std::move(key), GgufType::F32, v);
}

GgufKV gguf_kv_i32s(std::string key, const std::vector<int32_t>& v) {
  return kv_array(std::move(key), GgufType::I32, v);
}

const char* ggml_type_name(GgmlType t) {
  switch (t) {
    case GgmlType::F32:
      return "F32";
    case GgmlType::F16:
      return "F16";
    case GgmlType::Q4_0:
      return "Q4_0";
    case GgmlType::Q4_1:
      return "Q4_1";
    case GgmlType::Q8_0:
      return "Q8_0";
    case GgmlType::BF16:
      return "BF16";
  }
  throw std::logic_error("unknown ggml type");
}

int64_t ggml_block_elements(GgmlType t) {
  return t == GgmlType::Q4_0 || t == GgmlType::Q4_1 || t == GgmlType::Q8_0 ? kGgmlBlock : 1;
}

int64_t ggml_block_bytes(GgmlType t) {
  switch (t) {
    case GgmlType::F32:
      return 4;
    case GgmlType::F16:
    case GgmlType::BF16:
      return 2;
    case GgmlType::Q4_0:
      return 2 + kGgmlBlock / 2;
    case GgmlType::Q4_1:
      return 4 + kGgmlBlock / 2;
    case GgmlType::Q8_0:
      return 2 + kGgmlBlock;
  }
  throw std::logic_error("unknown ggml type");
}

GgmlType ggml_float_type(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return GgmlType::F32;
    case DType::F16:
      return GgmlType::F16;
    case DType::BF16:
      return GgmlType::BF16;
    case DType::F64:
    case DType::U8:
      break;
  }
  throw Error("GGUF tensors are written as F32, F16 or BF16, not " +
              std::string(dtype_name(dtype)));
}

std::optional<GgmlType> ggml_block_type(const QuantFormat& f) {
  if (f.bits == 8) return f.symmetric ? std::optional(GgmlType::Q8_0) : std::nullopt;
  if (f.bits >= 2 && f.bits <= 4) return f.symmetric ? GgmlType::Q4_0 : GgmlType::Q4_1;
  return std::nullopt;
}

GgufTensor gguf_block_tensor(std::string name, const QuantizedMatrix& q) {
  const QuantFormat& f = q.format;
  const std::optional<GgmlType> type = ggml_block_type(f);
  if (!type || q.cols < q.rows || q.cols % kGgmlBlock != 0 || f.group % kGgmlBlock != 0) {
    throw std::logic_error("gguf_block_tensor: " + f.name() + " on " + std::to_string(q.rows) +
                           " x " + std::to_string(q.cols) + " does not cut into ggml row blocks");
  }
  // Row lines (cols >= rows): codes are in row-major order, each row's
  // groups at g = row * groups_per_row + col / group.
  const std::vector<uint8_t> codes = unpack_codes(q.codes, f.bits, q.rows * q.cols);
  const int64_t groups_per_row = (q.cols + f.group - 1) / f.group;
  const int half = (1 << f.bits) / 2;
  const int64_t block_bytes = ggml_block_bytes(*type);
  std::vector<std::byte> out(static_cast<size_t>(q.rows * q.cols / kGgmlBlock * block_bytes));
  std::byte* p = out.data();
  auto put16 = [&p](uint16_t v) {
    std::memcpy(p, &v, 2);  // little-endian targets, as put()
    p += 2;
  };
  for (int64_t r = 0; r < q.rows; ++r) {
    for (int64_t c0 = 0; c0 < q.cols; c0 += kGgmlBlock) {
      const size_t g = static_cast<size_t>(r * groups_per_row + c0 / f.group);
      const uint8_t* u = codes.data() + r * q.cols + c0;  // unsigned codes of the block
      put16(q.scales[g]);
      if (*type == GgmlType::Q8_0) {
        for (int64_t j = 0; j < kGgmlBlock; ++j) {
          const int8_t v = static_cast<int8_t>(int(u[j]) - half);  // q in -128..127
          std::memcpy(p++, &v, 1);
        }
        continue;
      }
      if (*type == GgmlType::Q4_1) put16(q.minima[g]);
      // Q4_0 stores q + 8 (our symmetric codes are q + half); Q4_1 stores q.
      const int shift = *type == GgmlType::Q4_0 ? 8 - half : 0;
      for (int64_t j = 0; j < kGgmlBlock / 2; ++j) {
        const int lo = u[j] + shift, hi = u[j + kGgmlBlock / 2] + shift;
        *p++ = static_cast<std::byte>(lo | (hi << 4));
      }
    }
  }
  return {std::move(name), {q.cols, q.rows}, *type, std::move(out)};
}

GgufTensor gguf_tensor(std::string name, const Eigen::MatrixXd& m, DType dtype) {
  const GgmlType type = ggml_float_type(dtype);
  TensorData t = tensor_from_matrix(name, m, dtype);  // row-major: ne = {cols, rows}
  return {std::move(name), {m.cols(), m.rows()}, type, std::move(t.bytes)};
}

GgufTensor gguf_tensor(std::string name, const Eigen::VectorXd& v, DType dtype) {
  const GgmlType type = ggml_float_type(dtype);
  TensorData t = tensor_from_vector(name, v, dtype);
  return {std::move(name), {v.size()}, type, std::move(t.bytes)};
}

std::vector<std::byte> gguf_serialize(const std::vector<GgufKV>& kvs,
                                      const std::vector<GgufTensor>& tensors,
                                      const std::string& label) {
  std::string head = "GGUF";
  put<uint32_t>(&head, kGgufVersion);
  put<uint64_t>(&head, tensors.size());
  bool has_alignment = false;
  for (const auto& k : kvs) has_alignment = has_alignment || k.key == "general.alignment";
  put<uint64_t>(&head, kvs.size() + (has_alignment ? 0 : 1));
  std::set<std::string> seen;
  auto write_kv = [&](const GgufKV& k) {
    if (!seen.insert(k.key).second) throw Error(label, "", "duplicate GGUF key '" + k.key + "'");
    put_string(&head, k.key);
    put<uint32_t>(&head, static_cast<uint32_t>(k.type));
    head += k.value;
  };
  for (const auto& k : kvs) {
    if (k.key == "general.alignment" && (k.type != GgufType::U32 || k.value.size() != 4 ||
                                         std::memcmp(k.value.data(), "\x20\0\0\0", 4) != 0)) {
      throw Error(label, "", "general.alignment must be the u32 32");
    }
    write_kv(k);
  }
  if (!has_alignment) write_kv(gguf_kv_u32("general.alignment", kGgufAlignment));

  std::set<std::string> names;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    if (t.name.empty() || t.name.size() > kGgufMaxName) {
      throw Error(label, t.name,
                  "tensor name must be 1 to " + std::to_string(kGgufMaxName) + " bytes");
    }
    if (!names.insert(t.name).second) throw Error(label, t.name, "duplicate tensor name");
    if (t.ne.empty() || t.ne.size() > 4)
      throw Error(label, t.name, "a GGUF tensor has 1 to 4 dimensions");
    uint64_t numel = 1;
    for (int64_t d : t.ne) {
      if (d <= 0 || numel > (uint64_t{1} << 48) / static_cast<uint64_t>(d)) {
        throw Error(label, t.name, "dimensions must be positive and their product below 2^48");
      }
      numel *= static_cast<uint64_t>(d);
    }
    const uint64_t block = static_cast<uint64_t>(ggml_block_elements(t.type));
    if (static_cast<uint64_t>(t.ne[0]) % block != 0) {
      throw Error(label, t.name,
                  fmt::format("{} rows of {} elements are not whole blocks of {}",
                              ggml_type_name(t.type), t.ne[0], block));
    }
    if (numel / block * static_cast<uint64_t>(ggml_block_bytes(t.type)) != t.bytes.size()) {
      throw Error(label, t.name, "byte count does not match its dimensions and type");
    }
    put_string(&head, t.name);
    put<uint32_t>(&head, static_cast<uint32_t>(t.ne.size()));
    for (int64_t d : t.ne) put<uint64_t>(&head, static_cast<uint64_t>(d));
    put<uint32_t>(&head, static_cast<uint32_t>(t.type));
    put<uint64_t>(&head, offset);
    offset = align_up(offset + t.bytes.size());
  }
  const uint64_t data_start = align_up(head.size());
  std::vector<std::byte> out(data_start + (tensors.empty() ? 0 : offset), std::byte{0});
  std::memcpy(out.data(), head.data(), head.size());
  uint64_t at = data_start;
  for (const auto& t : tensors) {
    std::memcpy(out.data() + at, t.bytes.data(), t.bytes.size());
    at += align_up(t.bytes.size());
  }
  // The last tensor's trailing padding is kept: readers (llama.cpp's
  // gguf.cpp) expect the data section to be a multiple of the alignment.
  return out;
}

void gguf_write(const std::filesystem::path& path, const std::vector<GgufKV>& kvs,
                const std::vector<GgufTensor>& tensors) {
  std::vector<std::byte> bytes = gguf_serialize(kvs, tensors, path.string());
  AtomicFile f(path);
  f.write(bytes);
  f.commit();
}

std::vector<int64_t> llama_rope_row_order(int64_t heads, int64_t head_dim) {
  if (heads <= 0 || head_dim <= 0 || head_dim % 2 != 0) {
    throw Error("rotary row order needs a positive head count and an even head_dim");
  }
  const int64_t half = head_dim / 2;
  std::vector<int64_t> order(static_cast<size_t>(heads * head_dim));
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t j = 0; j < half; ++j) {
      for (int64_t i = 0; i < 2; ++i) {
        order[static_cast<size_t>(h * head_dim + 2 * j + i)] = h * head_dim + i * half + j;
      }
    }
  }
  return order;
}

Eigen::MatrixXd permute_rows(const Eigen::MatrixXd& m, const std::vector<int64_t>& order) {
  if (static_cast<int64_t>(order.size()) != m.rows())
    throw std::logic_error("row order size differs from rows");
  Eigen::MatrixXd out(m.rows(), m.cols());
  for (Eigen::Index r = 0; r < m.rows(); ++r) out.row(r) = m.row(order[static_cast<size_t>(r)]);
  return out;
}

}  // namespace hydraopt::io
