// Group-wise integer storage of a factor matrix (issue 17: precision as a
// planner axis).
//
// A matrix is cut into lines along its longer side (its rows when
// cols >= rows, else its columns), each line into groups of `group`
// consecutive elements (the last group of a line may be shorter). Each
// group stores b-bit integer codes and an f16 scale d:
//   symmetric  x = d q,       q in [-2^(b-1), 2^(b-1) - 1]; d = f16(m / -2^(b-1))
//              for m the group's element of largest magnitude (the first
//              on ties), so m itself is stored exactly up to d's rounding
//              and all 2^b levels are used (llama.cpp's Q4_0 rule);
//   asymmetric x = lo + d q,  q in [0, 2^b - 1]; lo = f16(min), d =
//              f16((max - lo) / (2^b - 1)), one more f16 per group.
// Codes are q rounded to nearest (ties away from zero) with the rounded
// d (and lo), clamped to the range; a group whose d is 0 stores q = 0.
// Storage: the codes as one little-endian bit stream (symmetric codes
// offset by 2^(b-1) to be unsigned), group after group, line after line,
// the last byte padded with zero bits; then the scales (and minima).
//
// For symmetric formats b bits' grid is a subset of b + 1 bits' (d halves
// exactly), so more bits never move an element further from its value.
#pragma once

#include <Eigen/Core>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace hydraopt {

struct QuantFormat {
  int bits = 4;        ///< 2, 3, 4 or 8
  int group = 32;      ///< elements per scale: 32, 64 or 128
  bool symmetric = true;

  /// "int4-g32-sym", "int3-g128-asym": what parse_quant_format reads.
  std::string name() const;
  bool operator==(const QuantFormat&) const = default;
};

/// Parses "intB[-gG][-sym|-asym]" (defaults: groups of 32, symmetric); an
/// Error naming `what` (the option or file) and the accepted values otherwise.
QuantFormat parse_quant_format(std::string_view s, const std::string& what);

/// Every format the planner may choose: bits {8, 4, 3, 2} x groups
/// {32, 64, 128} x {symmetric, asymmetric}.
std::vector<QuantFormat> all_quant_formats();

/// Groups of a rows x cols matrix: lines x ceil(line length / group).
int64_t quant_groups(int64_t rows, int64_t cols, const QuantFormat& f);

/// The lines of a rows x cols matrix (along its longer side, as above).
int64_t quant_lines(int64_t rows, int64_t cols);

/// m's first `count` lines: a matrix cut into groups as m's own lines are.
Eigen::MatrixXd first_lines(const Eigen::MatrixXd& m, int64_t count);

/// Bytes a rows x cols matrix takes in `f`: the packed codes
/// (ceil(rows cols bits / 8)) and 2 bytes per group per f16 stored.
int64_t quant_bytes(int64_t rows, int64_t cols, const QuantFormat& f);

struct QuantizedMatrix {
  int64_t rows = 0, cols = 0;
  QuantFormat format;
  std::vector<uint8_t> codes;     ///< packed bit stream
  std::vector<uint16_t> scales;   ///< f16 bits, one per group
  std::vector<uint16_t> minima;   ///< f16 bits, one per group (asymmetric only)
};

/// Stores m in `f`. Throws Error if a value is not finite or a scale or
/// minimum overflows f16.
QuantizedMatrix quantize(const Eigen::MatrixXd& m, const QuantFormat& f);

/// The stored values. Throws Error naming the inconsistency (codes, scales
/// or minima of the wrong size, a format outside the supported set,
/// non-zero padding bits, a scale that is not finite) for input read from
/// a file.
Eigen::MatrixXd dequantize(const QuantizedMatrix& q);

/// dequantize(quantize(m, f)): what storing m in f keeps.
Eigen::MatrixXd round_to_format(const Eigen::MatrixXd& m, const QuantFormat& f);

/// Packs n codes of `bits` bits each (every code < 2^bits) little-endian,
/// ceil(n bits / 8) bytes, unused high bits of the last byte zero; and back.
std::vector<uint8_t> pack_codes(const std::vector<uint8_t>& codes, int bits);
std::vector<uint8_t> unpack_codes(const std::vector<uint8_t>& packed, int bits, int64_t n);

}  // namespace hydraopt
