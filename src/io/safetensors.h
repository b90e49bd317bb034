// safetensors reader and writer.
//
// File layout (all integers little-endian):
//
//   bytes [0, 8)        N: u64, length of the JSON header in bytes
//   bytes [8, 8+N)      header: UTF-8 JSON object
//   bytes [8+N, end)    data buffer: the tensors' raw bytes
//
// The header maps each tensor name to
//   {"dtype": "F32", "shape": [d0, d1, ...], "data_offsets": [begin, end]}
// where begin/end are byte offsets into the data buffer (not the file), and
// the bytes are the tensor in row-major (C) order, little-endian. An
// optional "__metadata__" key maps to an object of string -> string.
//
// The reader validates like the reference implementation and rejects:
//   - a file shorter than 8 bytes, N > 100 MB, or 8+N past the end;
//   - a header that is not UTF-8, not JSON, or not a JSON object;
//   - a tensor entry without dtype/shape/data_offsets, or with negative or
//     non-integer dimensions or offsets;
//   - a dtype that is unknown, or known but not one we read (F64, F32,
//     F16, BF16, and U8 for a bundle's packed integer codes; matrix()
//     reads the float types only);
//   - shape product x element size != end - begin (overflow-checked);
//   - entries that, sorted by begin, are not contiguous from 0 (a gap or
//     an overlap), or whose last end is not exactly the data buffer size
//     (trailing bytes or truncation);
//   - a __metadata__ that is not a string -> string object.
//
// The writer emits tensors sorted by name, with offsets in that order, and
// pads the header with spaces to a multiple of 8 bytes so that the data
// buffer is aligned. It writes through io::AtomicFile (temp + rename).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "hydraopt/dtype.h"

namespace hydraopt::io {

inline constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  ///< offset of the first byte in the data buffer
  uint64_t end = 0;    ///< one past the last byte

  uint64_t nbytes() const { return end - begin; }
  int64_t numel() const;
};

/// A validated, memory-mapped safetensors file.
class SafetensorsFile {
 public:
  /// Opens and validates `path`; throws hydraopt::Error naming the file.
  static SafetensorsFile open(const std::filesystem::path& path);
  /// Validates a whole file image held in memory (used by tests and fuzzers).
  /// `label` names the source in error messages. The bytes must outlive the
  /// returned object.
  static SafetensorsFile parse(std::span<const std::byte> file, std::string label);

  SafetensorsFile() = default;  ///< an empty, unopened file
  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
  ~SafetensorsFile();

  const std::string& path() const { return label_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  /// All tensors, sorted by name.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  /// nullptr if absent.
  const TensorInfo* find(const std::string& name) const;
  /// Raw bytes of a tensor, row-major little-endian.
  std::span<const std::byte> bytes(const TensorInfo& t) const;
  /// A 2-D tensor converted to double, same orientation as stored.
  Eigen::MatrixXd matrix(const TensorInfo& t) const;
  /// Its transpose, read in file order (about twice as fast as matrix()).
  Eigen::MatrixXd matrix_transposed(const TensorInfo& t) const;
  /// Unmaps the file's pages from this process (they stay in the page
  /// cache); later reads fault them in again.
  void release() const;
  /// The whole file's bytes (header included), and where the data buffer
  /// (TensorInfo::begin 0) starts in them.
  std::span<const std::byte> image() const { return image_; }
  size_t data_offset() const { return static_cast<size_t>(data_ - image_.data()); }

 private:
  /// Throws unless t is 2-D.
  void require_2d(const TensorInfo& t) const;
  void validate(std::span<const std::byte> file);

  std::string label_;
  std::map<std::string, std::string> metadata_;
  std::vector<TensorInfo> tensors_;
  std::span<const std::byte> image_;  ///< the whole file
  const std::byte* data_ = nullptr;  ///< start of the data buffer
  void* map_ = nullptr;              ///< mmap base, if we own a mapping
  size_t map_size_ = 0;
};

/// A tensor to write: name, dtype, shape and its bytes (row-major).
struct TensorData {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  std::vector<std::byte> bytes;
};

/// Rounds `m` (row-major order) to `dtype` and packs it.
TensorData tensor_from_matrix(std::string name, const Eigen::MatrixXd& m, DType dtype);
TensorData tensor_from_vector(std::string name, const Eigen::VectorXd& v, DType dtype);

/// Where a tensor's bytes lie in the data buffer.
struct TensorSlot {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;
};

/// The bytes before the data buffer: the 8-byte header length and the JSON
/// header (metadata first, then the slots sorted by name), padded with
/// spaces (as the format allows) so that the data starts at a multiple of
/// `align` bytes (8 by default; a multiple of 8). Throws on a reserved name
/// or a slot whose size does not match its shape and dtype.
std::string safetensors_header(std::vector<TensorSlot> slots, const std::map<std::string, std::string>& metadata,
                               uint64_t align = 8);

/// Serialises to bytes (header + data); data and header in name order.
std::vector<std::byte> safetensors_serialize(std::vector<TensorData> tensors,
                                             const std::map<std::string, std::string>& metadata);

/// Writes a safetensors file atomically (temporary file, fsync, rename).
void safetensors_write(const std::filesystem::path& path, std::vector<TensorData> tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace hydraopt::io
