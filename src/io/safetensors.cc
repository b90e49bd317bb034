#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "hydraopt/error.h"
#include "io/atomic_file.h"
#include "core/half.h"
#include "io/utf8.h"
#include "util/checked.h"

static_assert(std::endian::native == std::endian::little,
              "safetensors is little-endian; hydraopt reads it in place");

namespace hydraopt::io {

using nlohmann::json;

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n = util::mul_checked(n, d);
  return n;
}

namespace {

// Transposing between row-major bytes and column-major doubles goes through
// 16 x 128 tiles held in a buffer that stays in L1: one side is touched row
// by row, the other column by column (16 contiguous values each), about
// twice as fast as element by element into a strided destination.
constexpr Eigen::Index kTileRows = 16, kTileCols = 128;

// f(r0, rn, c0, cn) for each tile of a rows x cols matrix, the last ones partial.
template <typename F>
void for_each_tile(Eigen::Index rows, Eigen::Index cols, F&& f) {
  for (Eigen::Index r0 = 0; r0 < rows; r0 += kTileRows) {
    for (Eigen::Index c0 = 0; c0 < cols; c0 += kTileCols) {
      f(r0, std::min(kTileRows, rows - r0), c0, std::min(kTileCols, cols - c0));
    }
  }
}

// Calls f(T{}, cvt) with T the stored element type of `dtype` and cvt
// converting one T to double, so loops see one conversion, not a switch.
template <typename F>
void with_decoder(DType dtype, F&& f) {
  switch (dtype) {
    case DType::F64: return f(double{}, [](double x) { return x; });
    case DType::F32: return f(float{}, [](float x) { return double{x}; });
    case DType::BF16: return f(uint16_t{}, [](uint16_t h) { return double{bf16_to_float(h)}; });
    case DType::F16: return f(uint16_t{}, [](uint16_t h) { return double{f16_to_float(h)}; });
    case DType::U8: break;
  }
  throw std::logic_error("with_decoder: not a float dtype");
}

// Element i of the row-major array of T at p (possibly unaligned).
template <typename T>
T element(const std::byte* p, size_t i) {
  T x;
  std::memcpy(&x, p + i * sizeof(T), sizeof(T));
  return x;
}

// Row-major elements of type T at p (rows x cols) into column-major out,
// converted by cvt.
template <typename T, typename Cvt>
void to_column_major(const std::byte* p, Eigen::Index rows, Eigen::Index cols, double* out, Cvt cvt) {
  double tile[kTileRows * kTileCols];
  for_each_tile(rows, cols, [&](Eigen::Index r0, Eigen::Index rn, Eigen::Index c0, Eigen::Index cn) {
    for (Eigen::Index r = 0; r < rn; ++r) {
      for (Eigen::Index c = 0; c < cn; ++c) {
        tile[r * kTileCols + c] = cvt(element<T>(p, static_cast<size_t>((r0 + r) * cols + c0 + c)));
      }
    }
    for (Eigen::Index c = 0; c < cn; ++c) {
      double* dst = out + (c0 + c) * rows + r0;
      for (Eigen::Index r = 0; r < rn; ++r) dst[r] = tile[r * kTileCols + c];
    }
  });
}

}  // namespace

// Strict UTF-8 check (no overlongs, no surrogates, max U+10FFFF).
bool valid_utf8(std::span<const std::byte> s) {
  size_t i = 0, n = s.size();
  auto at = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  while (i < n) {
    unsigned c = at(i);
    if (c < 0x80) { ++i; continue; }
    size_t len;
    unsigned min;
    if ((c & 0xe0) == 0xc0) { len = 2; min = 0x80; c &= 0x1f; }
    else if ((c & 0xf0) == 0xe0) { len = 3; min = 0x800; c &= 0x0f; }
    else if ((c & 0xf8) == 0xf0) { len = 4; min = 0x10000; c &= 0x07; }
    else return false;
    if (i + len > n) return false;
    for (size_t k = 1; k < len; ++k) {
      unsigned cc = at(i + k);
      if ((cc & 0xc0) != 0x80) return false;
      c = (c << 6) | (cc & 0x3f);
    }
    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) return false;
    i += len;
  }
  return true;
}

bool valid_utf8(std::string_view s) { return valid_utf8(std::as_bytes(std::span(s.data(), s.size()))); }

namespace {

uint64_t get_u64(const json& v, const std::string& file, const std::string& tensor,
                 const char* what) {
  if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<int64_t>() >= 0)) {
    throw Error(file, tensor, std::string(what) + " must be a non-negative integer");
  }
  return v.get<uint64_t>();
}

}  // namespace

SafetensorsFile::SafetensorsFile(SafetensorsFile&& o) noexcept { *this = std::move(o); }

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& o) noexcept {
  if (this != &o) {
    if (map_) ::munmap(map_, map_size_);
    label_ = std::move(o.label_);
    metadata_ = std::move(o.metadata_);
    tensors_ = std::move(o.tensors_);
    image_ = o.image_;
    data_ = o.data_;
    map_ = o.map_;
    map_size_ = o.map_size_;
    o.map_ = nullptr;
    o.data_ = nullptr;
    o.image_ = {};
    o.map_size_ = 0;
  }
  return *this;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, map_size_);
}

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path) {
  SafetensorsFile f;
  f.label_ = path.string();
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(f.label_, "", std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(f.label_, "", "not a regular file");
  }
  size_t size = static_cast<size_t>(st.st_size);
  if (size > 0) {
    void* m = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      throw Error(f.label_, "", std::string("cannot map file: ") + std::strerror(err));
    }
    f.map_ = m;
    f.map_size_ = size;
  }
  ::close(fd);
  f.validate({static_cast<const std::byte*>(f.map_), size});
  f.release();  // reading the header mapped pages (whole large folios): drop them
  return f;
}

SafetensorsFile SafetensorsFile::parse(std::span<const std::byte> file, std::string label) {
  SafetensorsFile f;
  f.label_ = std::move(label);
  f.validate(file);
  return f;
}

void SafetensorsFile::validate(std::span<const std::byte> file) {
  const std::string& L = label_;
  image_ = file;
  if (file.size() < 8) {
    throw Error(L, "", "file is " + std::to_string(file.size()) + " bytes, shorter than the 8-byte header length");
  }
  uint64_t n = 0;
  std::memcpy(&n, file.data(), 8);
  if (n > kMaxHeaderBytes) {
    throw Error(L, "", "header length " + std::to_string(n) + " exceeds the 100 MB limit");
  }
  if (n > file.size() - 8) {
    throw Error(L, "", "header length " + std::to_string(n) + " runs past the end of the " +
                           std::to_string(file.size()) + "-byte file (truncated?)");
  }
  auto header = file.subspan(8, n);
  if (!valid_utf8(header)) throw Error(L, "", "header is not valid UTF-8");
  json j;
  try {
    j = json::parse(reinterpret_cast<const char*>(header.data()),
                    reinterpret_cast<const char*>(header.data()) + header.size());
  } catch (const json::exception& e) {
    throw Error(L, "", std::string("header is not valid JSON: ") + e.what());
  }
  if (!j.is_object()) throw Error(L, "", "header is not a JSON object");

  tensors_.clear();
  metadata_.clear();
  for (auto& [key, v] : j.items()) {
    if (key == "__metadata__") {
      if (!v.is_object()) throw Error(L, "", "__metadata__ is not an object");
      for (auto& [mk, mv] : v.items()) {
        if (!mv.is_string()) throw Error(L, "", "__metadata__ value of '" + mk + "' is not a string");
        metadata_[mk] = mv.get<std::string>();
      }
      continue;
    }
    if (!v.is_object()) throw Error(L, key, "entry is not an object");
    for (const char* field : {"dtype", "shape", "data_offsets"}) {
      if (!v.contains(field)) throw Error(L, key, std::string("missing '") + field + "'");
    }
    TensorInfo t;
    t.name = key;
    const json& dt = v["dtype"];
    if (!dt.is_string()) throw Error(L, key, "dtype is not a string");
    auto name = dt.get<std::string>();
    auto parsed = dtype_from_name(name);
    if (!parsed) {
      static const char* kOther[] = {"F8_E4M3", "F8_E5M2", "I64", "I32", "I16", "I8",
                                     "U64",     "U32",     "U16", "BOOL", "C64"};
      bool known = std::find(std::begin(kOther), std::end(kOther), name) != std::end(kOther);
      throw Error(L, key, known ? "dtype " + name + " is not supported (need F64, F32, F16, BF16 or U8)"
                                : "unknown dtype '" + name + "'");
    }
    t.dtype = *parsed;
    const json& sh = v["shape"];
    if (!sh.is_array()) throw Error(L, key, "shape is not an array");
    for (const json& d : sh) {
      uint64_t x = get_u64(d, L, key, "shape dimension");
      if (x > static_cast<uint64_t>(INT64_MAX)) throw Error(L, key, "shape dimension too large");
      t.shape.push_back(static_cast<int64_t>(x));
    }
    const json& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2) throw Error(L, key, "data_offsets is not [begin, end]");
    t.begin = get_u64(off[0], L, key, "data_offsets begin");
    t.end = get_u64(off[1], L, key, "data_offsets end");
    if (t.end < t.begin) throw Error(L, key, "data_offsets end precedes begin");
    uint64_t expected;
    try {
      expected = util::mul_checked(static_cast<uint64_t>(t.numel()), dtype_size(t.dtype));
    } catch (const std::overflow_error&) {
      throw Error(L, key, "shape x dtype size overflows 64 bits");
    }
    if (expected != t.nbytes()) {
      throw Error(L, key, "shape and dtype need " + std::to_string(expected) +
                              " bytes but data_offsets span " + std::to_string(t.nbytes()));
    }
    tensors_.push_back(std::move(t));
  }

  // Contiguity: sorted by offset, each tensor starts where the previous ends.
  std::vector<const TensorInfo*> order;
  for (auto& t : tensors_) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](auto* a, auto* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t pos = 0;
  for (auto* t : order) {
    if (t->begin > pos) throw Error(L, t->name, "gap in the data buffer before this tensor");
    if (t->begin < pos) throw Error(L, t->name, "overlaps the previous tensor's bytes");
    pos = t->end;
  }
  uint64_t buffer = file.size() - 8 - n;
  if (pos != buffer) {
    throw Error(L, "", "tensors cover " + std::to_string(pos) + " bytes but the data buffer has " +
                           std::to_string(buffer) + (pos > buffer ? " (truncated file)" : " (trailing bytes)"));
  }
  std::sort(tensors_.begin(), tensors_.end(),
            [](const TensorInfo& a, const TensorInfo& b) { return a.name < b.name; });
  data_ = file.data() + 8 + n;
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                             [](const TensorInfo& t, const std::string& n) { return t.name < n; });
  return it != tensors_.end() && it->name == name ? &*it : nullptr;
}

std::span<const std::byte> SafetensorsFile::bytes(const TensorInfo& t) const {
  return {data_ + t.begin, static_cast<size_t>(t.nbytes())};
}

void SafetensorsFile::require_2d(const TensorInfo& t) const {
  if (!is_float(t.dtype)) {
    throw Error(label_, t.name, "holds " + std::string(dtype_name(t.dtype)) + " integer codes, not a float matrix");
  }
  if (t.shape.size() != 2) {
    throw Error(label_, t.name, "expected a 2-D tensor, got " + std::to_string(t.shape.size()) + "-D");
  }
}

Eigen::MatrixXd SafetensorsFile::matrix(const TensorInfo& t) const {
  require_2d(t);
  const Eigen::Index rows = t.shape[0], cols = t.shape[1];
  Eigen::MatrixXd m(rows, cols);
  with_decoder(t.dtype, [&](auto tag, auto cvt) {
    to_column_major<decltype(tag)>(data_ + t.begin, rows, cols, m.data(), cvt);
  });
  return m;
}

Eigen::MatrixXd SafetensorsFile::matrix_transposed(const TensorInfo& t) const {
  require_2d(t);
  // Row-major rows x cols is column-major cols x rows: convert in order.
  Eigen::MatrixXd m(t.shape[1], t.shape[0]);
  with_decoder(t.dtype, [&](auto tag, auto cvt) {
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = cvt(element<decltype(tag)>(data_ + t.begin, static_cast<size_t>(i)));
  });
  return m;
}

void SafetensorsFile::release() const {
  // Reading a tensor also maps pages around it: a fault maps a window of
  // page-cache pages (fault_around_bytes) and whole large folios, which
  // belong to other tensors. Only dropping the whole mapping bounds what
  // stays resident; a tensor another thread is still reading just faults
  // its pages in again from the page cache.
  if (map_) ::madvise(map_, map_size_, MADV_DONTNEED);
}

namespace {

// Calls f(cvt) with cvt converting a double to dtype's stored bits (a
// double, float or uint16_t), so loops see one conversion, not a switch.
template <typename F>
void with_encoder(DType dtype, F&& f) {
  switch (dtype) {
    case DType::F64: return f([](double x) { return x; });
    case DType::F32: return f([](double x) { return static_cast<float>(x); });
    case DType::BF16: return f([](double x) { return float_to_bf16(static_cast<float>(x)); });
    case DType::F16: return f([](double x) { return float_to_f16(static_cast<float>(x)); });
    case DType::U8: break;
  }
  throw std::logic_error("with_encoder: not a float dtype");
}

void pack(const double* src, size_t n, DType dtype, std::byte* dst) {
  with_encoder(dtype, [&](auto cvt) {
    for (size_t i = 0; i < n; ++i) {
      const auto x = cvt(src[i]);
      std::memcpy(dst + i * sizeof(x), &x, sizeof(x));
    }
  });
}

}  // namespace

TensorData tensor_from_matrix(std::string name, const Eigen::MatrixXd& m, DType dtype) {
  TensorData t{std::move(name), dtype, {m.rows(), m.cols()}, {}};
  t.bytes.resize(static_cast<size_t>(m.size()) * dtype_size(dtype));
  with_encoder(dtype, [&](auto cvt) {
    using T = decltype(cvt(0.0));
    // Encoded in m's (column-major) order, a loop that vectorises; then
    // laid out row-major. Narrow matrices (heads: out x k) row by row, their
    // few columns read as parallel streams; wide ones through tiles as in
    // to_column_major: columns read contiguously into the tile, rows copied
    // out of it. (About 0.8 ns a value either way, was 1.8.)
    std::vector<T> enc(static_cast<size_t>(m.size()));
    for (size_t i = 0; i < enc.size(); ++i) enc[i] = cvt(m.data()[i]);
    T* out = reinterpret_cast<T*>(t.bytes.data());  // (operator new's storage: aligned for T)
    if (m.cols() <= 64) {
      for (Eigen::Index r = 0; r < m.rows(); ++r) {
        for (Eigen::Index c = 0; c < m.cols(); ++c) out[r * m.cols() + c] = enc[c * m.rows() + r];
      }
      return;
    }
    T tile[kTileRows * kTileCols];
    for_each_tile(m.rows(), m.cols(), [&](Eigen::Index r0, Eigen::Index rn, Eigen::Index c0, Eigen::Index cn) {
      for (Eigen::Index c = 0; c < cn; ++c) {
        const T* col = enc.data() + (c0 + c) * m.rows() + r0;
        for (Eigen::Index r = 0; r < rn; ++r) tile[r * kTileCols + c] = col[r];
      }
      for (Eigen::Index r = 0; r < rn; ++r) {
        std::memcpy(t.bytes.data() + static_cast<size_t>((r0 + r) * m.cols() + c0) * sizeof(T), tile + r * kTileCols,
                    static_cast<size_t>(cn) * sizeof(T));
      }
    });
  });
  return t;
}

TensorData tensor_from_vector(std::string name, const Eigen::VectorXd& v, DType dtype) {
  TensorData t{std::move(name), dtype, {v.size()}, {}};
  t.bytes.resize(static_cast<size_t>(v.size()) * dtype_size(dtype));
  pack(v.data(), static_cast<size_t>(v.size()), dtype, t.bytes.data());
  return t;
}

std::string safetensors_header(std::vector<TensorSlot> slots, const std::map<std::string, std::string>& metadata,
                               uint64_t align) {
  if (align == 0 || align % 8 != 0) throw std::logic_error("safetensors_header: alignment must be a multiple of 8");
  std::sort(slots.begin(), slots.end(), [](const TensorSlot& a, const TensorSlot& b) { return a.name < b.name; });
  // Written entry by entry, in this order: an ordered_json object would
  // look every key up linearly (quadratic in the tensor count, minutes for
  // the 64,000 tensors of 1,000 tasks).
  for (auto& [k, v] : metadata) {
    if (!valid_utf8(k) || !valid_utf8(v)) throw Error("", "", "metadata '" + k + "' is not valid UTF-8");
  }
  std::string json = "{";
  auto key = [&](const std::string& k) {
    if (!valid_utf8(k)) throw Error("", k, "tensor name is not valid UTF-8");
    if (json.size() > 1) json += ',';
    json += nlohmann::json(k).dump();
    json += ':';
  };
  if (!metadata.empty()) {
    nlohmann::ordered_json md = nlohmann::ordered_json::object();
    for (auto& [k, v] : metadata) md[k] = v;
    key("__metadata__");
    json += md.dump();
  }
  for (size_t i = 0; i < slots.size(); ++i) {
    const TensorSlot& t = slots[i];
    if (t.name == "__metadata__") throw Error("", t.name, "reserved tensor name");
    if (i > 0 && t.name == slots[i - 1].name) throw Error("", t.name, "duplicate tensor name");
    int64_t numel = 1;
    for (auto d : t.shape) numel = util::mul_checked(numel, d);
    if (t.end < t.begin || static_cast<uint64_t>(numel) * dtype_size(t.dtype) != t.end - t.begin) {
      throw Error("", t.name, "byte size does not match shape and dtype");
    }
    key(t.name);
    json += nlohmann::ordered_json{{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {t.begin, t.end}}}
                .dump();
  }
  json += '}';
  json.append((align - (8 + json.size()) % align) % align, ' ');
  const uint64_t n = json.size();
  std::string out(8, '\0');
  std::memcpy(out.data(), &n, 8);
  return out + json;
}

std::vector<std::byte> safetensors_serialize(std::vector<TensorData> tensors,
                                             const std::map<std::string, std::string>& metadata) {
  std::sort(tensors.begin(), tensors.end(),
            [](const TensorData& a, const TensorData& b) { return a.name < b.name; });
  std::vector<TensorSlot> slots;
  uint64_t offset = 0;
  for (auto& t : tensors) {
    slots.push_back({t.name, t.dtype, t.shape, offset, offset + t.bytes.size()});
    offset += t.bytes.size();
  }
  const std::string header = safetensors_header(std::move(slots), metadata);
  std::vector<std::byte> out(header.size() + offset);
  std::memcpy(out.data(), header.data(), header.size());
  std::byte* p = out.data() + header.size();
  for (auto& t : tensors) {
    if (!t.bytes.empty()) std::memcpy(p, t.bytes.data(), t.bytes.size());
    p += t.bytes.size();
  }
  return out;
}

void safetensors_write(const std::filesystem::path& path, std::vector<TensorData> tensors,
                       const std::map<std::string, std::string>& metadata) {
  auto bytes = safetensors_serialize(std::move(tensors), metadata);
  AtomicFile f(path);
  f.write(bytes);
  f.commit();
}

}  // namespace hydraopt::io
