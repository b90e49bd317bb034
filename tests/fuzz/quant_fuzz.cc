// libFuzzer target: stored integer factors (core/quant.h), as a bundle
// will hold them: codes, scales and minima read from a file.
// Input: bits selector, group selector, symmetry, rows, cols (one byte
// each), the code bytes' count and the scales' count (uint16 LE each),
// then the code bytes, the scales (f16 LE), and the rest as minima.
// dequantize must either throw hydraopt::Error or give finite values whose
// codes re-pack to the same bytes.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "core/quant.h"
#include "hydraopt/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace hydraopt;
  if (size < 9) return 0;
  static const int kBits[] = {2, 3, 4, 8, 5};  // 5: unsupported, must be rejected
  static const int kGroups[] = {32, 64, 128, 48};
  QuantizedMatrix q;
  q.format = {kBits[data[0] % 5], kGroups[data[1] % 4], (data[2] & 1) != 0};
  q.rows = data[3];
  q.cols = data[4];
  const size_t code_bytes = data[5] | (size_t{data[6]} << 8), scales = data[7] | (size_t{data[8]} << 8);
  size_t at = 9;
  if (size - at < code_bytes) return 0;
  q.codes.assign(data + at, data + at + code_bytes);
  at += code_bytes;
  auto halves = [&](size_t count, std::vector<uint16_t>* out) {
    for (size_t i = 0; i < count && at + 1 < size; ++i, at += 2) out->push_back(static_cast<uint16_t>(data[at] | (data[at + 1] << 8)));
  };
  halves(scales, &q.scales);
  halves(size, &q.minima);
  Eigen::MatrixXd m;
  try {
    m = dequantize(q);
  } catch (const Error&) {
    return 0;
  }
  if (m.rows() != q.rows || m.cols() != q.cols || !m.allFinite()) std::abort();
  const std::vector<uint8_t> codes = unpack_codes(q.codes, q.format.bits, q.rows * q.cols);
  if (pack_codes(codes, q.format.bits) != q.codes) std::abort();
  return 0;
}
