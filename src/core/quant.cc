#include "core/quant.h"

#include <algorithm>
#include <cmath>

#include "core/half.h"
#include "hydraopt/error.h"

namespace hydraopt {

namespace {

bool supported(const QuantFormat& f) {
  return (f.bits == 2 || f.bits == 3 || f.bits == 4 || f.bits == 8) &&
         (f.group == 32 || f.group == 64 || f.group == 128);
}

// The lines of a rows x cols matrix along its longer side: line j's
// element i is m(j, i) for row lines, m(i, j) for column lines.
struct Lines {
  bool rows_are_lines;
  int64_t count, length;
  Lines(int64_t rows, int64_t cols)
      : rows_are_lines(cols >= rows), count(cols >= rows ? rows : cols), length(cols >= rows ? cols : rows) {}
  int64_t groups_per_line(int group) const { return (length + group - 1) / group; }
};

// f(line, start, end, index of the group) for every group, in storage order.
template <typename F>
void for_each_group(const Lines& lines, int group, F&& f) {
  int64_t g = 0;
  for (int64_t line = 0; line < (lines.length ? lines.count : 0); ++line) {
    for (int64_t start = 0; start < lines.length; start += group) f(line, start, std::min<int64_t>(start + group, lines.length), g++);
  }
}

double to_f16(double x) { return f16_to_float(float_to_f16(static_cast<float>(x))); }

}  // namespace

std::string QuantFormat::name() const {
  return "int" + std::to_string(bits) + "-g" + std::to_string(group) + (symmetric ? "-sym" : "-asym");
}

QuantFormat parse_quant_format(std::string_view s, const std::string& what) {
  auto fail = [&]() -> QuantFormat {
    throw Error(what + ": '" + std::string(s) +
                "' is not a quantized format: intB[-gG][-sym|-asym] with B 2, 3, 4 or 8 and G 32, 64 or 128");
  };
  QuantFormat f;
  std::string_view rest = s;
  auto number = [&](std::string_view prefix, int* out) {
    if (rest.substr(0, prefix.size()) != prefix) return false;
    rest.remove_prefix(prefix.size());
    size_t digits = 0;
    while (digits < rest.size() && digits < 4 && rest[digits] >= '0' && rest[digits] <= '9') ++digits;
    if (digits == 0) return false;
    *out = std::stoi(std::string(rest.substr(0, digits)));
    rest.remove_prefix(digits);
    return true;
  };
  if (!number("int", &f.bits)) return fail();
  if (rest.substr(0, 2) == "-g" && !number("-g", &f.group)) return fail();
  if (rest == "-sym") rest = {};
  else if (rest == "-asym") f.symmetric = false, rest = {};
  if (!rest.empty() || !supported(f)) return fail();
  return f;
}

std::vector<QuantFormat> all_quant_formats() {
  std::vector<QuantFormat> out;
  for (int bits : {8, 4, 3, 2}) {
    for (int group : {32, 64, 128}) {
      for (bool sym : {true, false}) out.push_back({bits, group, sym});
    }
  }
  return out;
}

int64_t quant_groups(int64_t rows, int64_t cols, const QuantFormat& f) {
  const Lines lines(rows, cols);
  return lines.count * lines.groups_per_line(f.group);  // no lines when rows or cols is 0
}

int64_t quant_lines(int64_t rows, int64_t cols) { return Lines(rows, cols).count; }

Eigen::MatrixXd first_lines(const Eigen::MatrixXd& m, int64_t count) {
  const Lines lines(m.rows(), m.cols());
  count = std::min(count, lines.count);
  return lines.rows_are_lines ? Eigen::MatrixXd(m.topRows(count)) : Eigen::MatrixXd(m.leftCols(count));
}

int64_t quant_bytes(int64_t rows, int64_t cols, const QuantFormat& f) {
  const int64_t per_group = f.symmetric ? 2 : 4;
  return (rows * cols * f.bits + 7) / 8 + per_group * quant_groups(rows, cols, f);
}

std::vector<uint8_t> pack_codes(const std::vector<uint8_t>& codes, int bits) {
  std::vector<uint8_t> out((codes.size() * bits + 7) / 8, 0);
  uint64_t bit = 0;
  for (uint8_t c : codes) {
    if (bits < 8 && c >> bits) throw std::logic_error("pack_codes: a code wider than its bits");
    const uint32_t shifted = static_cast<uint32_t>(c) << (bit % 8);
    out[bit / 8] |= static_cast<uint8_t>(shifted);
    if ((bit % 8) + bits > 8) out[bit / 8 + 1] |= static_cast<uint8_t>(shifted >> 8);
    bit += bits;
  }
  return out;
}

std::vector<uint8_t> unpack_codes(const std::vector<uint8_t>& packed, int bits, int64_t n) {
  const uint64_t expected = (static_cast<uint64_t>(std::max<int64_t>(n, 0)) * bits + 7) / 8;
  if (n < 0 || packed.size() != expected) {
    throw Error("quantized codes: " + std::to_string(packed.size()) + " bytes, " + std::to_string(expected) +
                " expected for " + std::to_string(n) + " codes of " + std::to_string(bits) + " bits");
  }
  std::vector<uint8_t> out(static_cast<size_t>(n));
  const uint32_t mask = (1u << bits) - 1;
  uint64_t bit = 0;
  for (int64_t i = 0; i < n; ++i, bit += bits) {
    uint32_t word = packed[bit / 8];
    if ((bit % 8) + bits > 8) word |= static_cast<uint32_t>(packed[bit / 8 + 1]) << 8;
    out[static_cast<size_t>(i)] = static_cast<uint8_t>((word >> (bit % 8)) & mask);
  }
  const uint64_t used = static_cast<uint64_t>(n) * bits;
  if (used % 8 && packed.back() >> (used % 8)) throw Error("quantized codes: padding bits are not zero");
  return out;
}

QuantizedMatrix quantize(const Eigen::MatrixXd& m, const QuantFormat& f) {
  if (!supported(f)) throw Error("unsupported quantized format " + f.name());
  QuantizedMatrix q;
  q.rows = m.rows();
  q.cols = m.cols();
  q.format = f;
  const Lines lines(m.rows(), m.cols());
  auto at = [&](int64_t line, int64_t i) { return lines.rows_are_lines ? m(line, i) : m(i, line); };
  const int levels = 1 << f.bits, half = levels / 2;
  std::vector<uint8_t> codes;
  codes.reserve(static_cast<size_t>(m.size()));
  for_each_group(lines, f.group, [&](int64_t line, int64_t start, int64_t end, int64_t) {
    double lo = INFINITY, hi = -INFINITY, big = 0;
    for (int64_t i = start; i < end; ++i) {
      const double x = at(line, i);
      if (!std::isfinite(x)) throw Error("cannot quantize a value that is not finite (" + std::to_string(x) + ")");
      lo = std::min(lo, x);
      hi = std::max(hi, x);
      if (std::abs(x) > std::abs(big)) big = x;
    }
    double d, base = 0;
    if (f.symmetric) {
      d = to_f16(big / -half);
    } else {
      base = to_f16(lo);
      d = to_f16((hi - base) / (levels - 1));
      if (!std::isfinite(base)) throw Error("a group's minimum " + std::to_string(lo) + " overflows f16");
    }
    if (!std::isfinite(d)) throw Error("a group's scale overflows f16 (values up to " + std::to_string(hi) + ")");
    q.scales.push_back(float_to_f16(static_cast<float>(d)));
    if (!f.symmetric) q.minima.push_back(float_to_f16(static_cast<float>(base)));
    for (int64_t i = start; i < end; ++i) {
      double level = d != 0 ? std::round((at(line, i) - base) / d) : 0;
      if (f.symmetric) level = std::clamp(level, double(-half), double(half - 1)) + half;
      else level = std::clamp(level, 0.0, double(levels - 1));
      codes.push_back(static_cast<uint8_t>(level));
    }
  });
  q.codes = pack_codes(codes, f.bits);
  return q;
}

Eigen::MatrixXd dequantize(const QuantizedMatrix& q) {
  const QuantFormat& f = q.format;
  if (!supported(f)) {
    throw Error("unsupported quantized format: " + std::to_string(f.bits) + " bits, groups of " +
                std::to_string(f.group));
  }
  if (q.rows < 0 || q.cols < 0) throw Error("quantized matrix: negative shape");
  const int64_t groups = quant_groups(q.rows, q.cols, f);
  if (static_cast<int64_t>(q.scales.size()) != groups) {
    throw Error("quantized matrix " + std::to_string(q.rows) + " x " + std::to_string(q.cols) + " in " + f.name() +
                ": " + std::to_string(q.scales.size()) + " scales, " + std::to_string(groups) + " groups");
  }
  if (static_cast<int64_t>(q.minima.size()) != (f.symmetric ? 0 : groups)) {
    throw Error("quantized matrix in " + f.name() + ": " + std::to_string(q.minima.size()) + " minima, " +
                std::to_string(f.symmetric ? 0 : groups) + " expected");
  }
  const std::vector<uint8_t> codes = unpack_codes(q.codes, f.bits, q.rows * q.cols);
  Eigen::MatrixXd m(q.rows, q.cols);
  const Lines lines(q.rows, q.cols);
  const int half = (1 << f.bits) / 2;
  size_t c = 0;
  for_each_group(lines, f.group, [&](int64_t line, int64_t start, int64_t end, int64_t g) {
    const double d = f16_to_float(q.scales[g]);
    const double base = f.symmetric ? 0.0 : f16_to_float(q.minima[g]);
    if (!std::isfinite(d) || !std::isfinite(base)) throw Error("quantized matrix: a scale or minimum is not finite");
    for (int64_t i = start; i < end; ++i, ++c) {
      const double level = f.symmetric ? double(int(codes[c]) - half) : double(codes[c]);
      (lines.rows_are_lines ? m(line, i) : m(i, line)) = base + d * level;
    }
  });
  return m;
}

Eigen::MatrixXd round_to_format(const Eigen::MatrixXd& m, const QuantFormat& f) { return dequantize(quantize(m, f)); }

}  // namespace hydraopt
