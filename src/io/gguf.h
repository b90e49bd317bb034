// GGUF writer: llama.cpp's single-file container, version 3.
//
// Byte layout (every integer and float little-endian, no padding between
// fields unless stated):
//
//   header      "GGUF" (4 bytes: 0x47 0x47 0x55 0x46)
//               u32 version (3)
//               u64 number of tensors
//               u64 number of key/value pairs
//   key/values  each: string key, u32 value type, value
//   tensor info each: string name, u32 n_dims, u64 ne[n_dims],
//               u32 ggml type, u64 offset of its bytes in the data section
//   padding     zero bytes up to the next multiple of the alignment
//   data        the tensors' bytes, each starting at a multiple of the
//               alignment (measured from the start of the data section),
//               zero bytes between them; the file ends after the last one
//
// A string is a u64 byte count followed by that many UTF-8 bytes (no NUL).
// Value types: 0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32, 7 bool (one
// byte, 0 or 1), 8 string, 9 array, 10 u64, 11 i64, 12 f64. An array is a
// u32 element type, a u64 element count, then the elements back to back
// (we write arrays of strings, f32 and i32 only; never nested arrays).
//
// Dimensions are listed fastest-varying first: ne[0] is the number of
// elements in one row of the row-major (C order) data, so a PyTorch or
// safetensors matrix of shape (rows, cols) is ne = {cols, rows}. The
// alignment is the u32 key "general.alignment" if present, else 32; we
// always write it (32). llama.cpp keeps tensor names under 64 bytes, at
// most 4 dimensions, and unique keys and names: the writer checks these.
//
// ggml element types we write (ids of ggml.h's enum ggml_type), each
// row of ne[0] elements stored as consecutive blocks:
//   0  F32   one f32 per element
//   1  F16   one f16 per element
//   30 BF16  one bf16 per element
//   8  Q8_0  blocks of 32 elements, 34 bytes: f16 d, then 32 int8 q;
//            x = d q (our symmetric int8 uses q = -128; ggml's own
//            quantizer stops at -127, its CPU dot products take any int8,
//            as tests/llama_cpp/run.sh shows)
//   2  Q4_0  blocks of 32, 18 bytes: f16 d, then 16 bytes whose low
//            nibbles are elements 0-15 and high nibbles elements 16-31;
//            x = d (nibble - 8)
//   3  Q4_1  blocks of 32, 20 bytes: f16 d, f16 m, then 16 bytes of
//            nibbles as Q4_0's; x = d nibble + m
// (block_q8_0, block_q4_0, block_q4_1 in ggml/src/ggml-common.h and
// dequantize_row_q8_0/q4_0/q4_1 in ggml/src/ggml-quants.c). A block type
// needs ne[0] to be a multiple of 32; llama.cpp's reader rejects it
// otherwise.
//
// What the keys mean (general.architecture, general.type, adapter.*, the
// tokenizer.ggml.* vocabulary and <arch>.* hyper-parameters) is up to the
// caller; gguf_export.h writes llama.cpp LoRA adapters and base models.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "core/quant.h"
#include "hydraopt/dtype.h"

namespace hydraopt::io {

inline constexpr uint32_t kGgufVersion = 3;
inline constexpr uint32_t kGgufAlignment = 32;
inline constexpr size_t kGgufMaxName = 63;  ///< bytes; llama.cpp's limit is 64 with the NUL

enum class GgufType : uint32_t {
  U8 = 0,
  I8 = 1,
  U16 = 2,
  I16 = 3,
  U32 = 4,
  I32 = 5,
  F32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  U64 = 10,
  I64 = 11,
  F64 = 12,
};

/// One metadata entry, its value already encoded (type tag excluded).
struct GgufKV {
  std::string key;
  GgufType type = GgufType::U8;
  std::string value;  ///< encoded bytes of the value
};

GgufKV gguf_kv_string(std::string key, const std::string& v);
GgufKV gguf_kv_u32(std::string key, uint32_t v);
GgufKV gguf_kv_f32(std::string key, float v);
GgufKV gguf_kv_bool(std::string key, bool v);
GgufKV gguf_kv_strings(std::string key, const std::vector<std::string>& v);
GgufKV gguf_kv_f32s(std::string key, const std::vector<float>& v);
GgufKV gguf_kv_i32s(std::string key, const std::vector<int32_t>& v);

/// The ggml tensor types we write; the values are ggml's type ids.
enum class GgmlType : uint32_t { F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q8_0 = 8, BF16 = 30 };

/// "F32", "Q4_0", ...: ggml's names.
const char* ggml_type_name(GgmlType t);
/// Elements per block: 1 for the float types, 32 for the block types.
int64_t ggml_block_elements(GgmlType t);
/// Bytes per block: 4, 2, 2 (F32, F16, BF16), 18 (Q4_0), 20 (Q4_1), 34 (Q8_0).
int64_t ggml_block_bytes(GgmlType t);

/// One tensor: ne fastest-varying first, bytes in that order.
struct GgufTensor {
  std::string name;
  std::vector<int64_t> ne;
  GgmlType type = GgmlType::F32;
  std::vector<std::byte> bytes;
};

/// The ggml type of a float `dtype` (F32, F16, BF16); throws for F64.
GgmlType ggml_float_type(DType dtype);

/// The ggml block type that holds every value of format `f` exactly, its
/// groups cut into blocks of 32: Q8_0 for int8 symmetric (q in -128..127
/// is an int8), Q4_0 for int4, int3 and int2 symmetric (q + 8 in 0..15),
/// Q4_1 for int4, int3 and int2 asymmetric (m = our minimum, q in 0..15);
/// none for int8 asymmetric (no 8-bit ggml type has a minimum: Q8_0 and
/// Q8_1 are x = d q).
std::optional<GgmlType> ggml_block_type(const QuantFormat& f);

/// `q` (rows x cols) as a GGUF tensor ne = {cols, rows} of
/// ggml_block_type(q.format): each group of 32, 64 or 128 elements becomes
/// 1, 2 or 4 blocks carrying its scale (and minimum), the codes re-packed,
/// so the tensor holds exactly dequantize(q). Throws std::logic_error
/// unless the format has a block type, q's groups run along its rows
/// (cols >= rows) and cols is a multiple of 32.
GgufTensor gguf_block_tensor(std::string name, const QuantizedMatrix& q);

/// A matrix (rows x cols) as a GGUF tensor ne = {cols, rows}, rounded to
/// `dtype`.
GgufTensor gguf_tensor(std::string name, const Eigen::MatrixXd& m, DType dtype);
/// A vector as a 1-D GGUF tensor.
GgufTensor gguf_tensor(std::string name, const Eigen::VectorXd& v, DType dtype);

/// The whole file image. Throws hydraopt::Error (naming `label` and the
/// tensor) on a duplicate key or name, a name longer than kGgufMaxName,
/// more than 4 or non-positive dimensions, a block type whose ne[0] is not
/// a multiple of its block, or bytes that do not match ne and the type.
std::vector<std::byte> gguf_serialize(const std::vector<GgufKV>& kvs,
                                      const std::vector<GgufTensor>& tensors,
                                      const std::string& label = "gguf");

/// Writes the file atomically (temporary file beside it, fsync, rename).
void gguf_write(const std::filesystem::path& path, const std::vector<GgufKV>& kvs,
                const std::vector<GgufTensor>& tensors);

/// The row order llama.cpp's converter gives LLaMA's q_proj / k_proj
/// outputs: HF checkpoints rotate the two halves of each head
/// (rotate_half), llama.cpp rotates adjacent pairs, so within each head of
/// `head_dim` rows, new row 2j + i is old row i * head_dim/2 + j
/// (i in {0, 1}, j < head_dim/2). Returns, for each new row, its old row.
std::vector<int64_t> llama_rope_row_order(int64_t heads, int64_t head_dim);

/// `m` with its rows reordered: row r of the result is row order[r] of m.
Eigen::MatrixXd permute_rows(const Eigen::MatrixXd& m, const std::vector<int64_t>& order);

}  // namespace hydraopt::io
