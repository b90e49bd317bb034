// Group-wise integer storage (core/quant.h): packing, the stored values
// against a brute-force nearest-level reference, invariants and rejection.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/half.h"
#include "core/quant.h"
#include "test_util.h"

namespace hydraopt {
namespace {

using Eigen::MatrixXd;

double f16(double x) { return f16_to_float(float_to_f16(static_cast<float>(x))); }

TEST(QuantPack, EveryWidthRoundTripsBitExactlyWithZeroPadding) {
  std::mt19937 rng(5);
  for (int bits : {2, 3, 4, 8}) {
    for (int n : {0, 1, 2, 3, 7, 8, 9, 33, 1001}) {
      std::vector<uint8_t> codes(n);
      for (auto& c : codes) c = static_cast<uint8_t>(rng() & ((1u << bits) - 1));
      const std::vector<uint8_t> packed = pack_codes(codes, bits);
      SCOPED_TRACE("bits " + std::to_string(bits) + ", n " + std::to_string(n));
      ASSERT_EQ(packed.size(), (static_cast<size_t>(n) * bits + 7) / 8);
      // Code i sits at bits [i b, (i + 1) b) of the little-endian stream.
      for (int i = 0; i < n; ++i) {
        uint32_t v = 0;
        for (int j = 0; j < bits; ++j) {
          const size_t bit = static_cast<size_t>(i) * bits + j;
          v |= ((packed[bit / 8] >> (bit % 8)) & 1u) << j;
        }
        ASSERT_EQ(v, codes[i]) << "code " << i;
      }
      if (n * bits % 8) EXPECT_EQ(packed.back() >> (n * bits % 8), 0);
      EXPECT_EQ(unpack_codes(packed, bits, n), codes);
    }
  }
}

TEST(QuantPack, RejectsWrongSizesAndDirtyPadding) {
  const std::vector<uint8_t> packed = pack_codes({1, 2, 3}, 3);  // 9 bits: 2 bytes
  EXPECT_NE(test::error_of([&] { unpack_codes(packed, 3, 2); }).find("2 bytes, 1 expected"), std::string::npos);
  EXPECT_NE(test::error_of([&] { unpack_codes(packed, 3, 6); }).find("3 expected"), std::string::npos);
  std::vector<uint8_t> dirty = packed;
  dirty.back() |= 0x80;
  EXPECT_NE(test::error_of([&] { unpack_codes(dirty, 3, 3); }).find("padding"), std::string::npos);
}

// The documented rule, by brute force: the group's scale (and minimum),
// then every element the nearest of the 2^b levels.
MatrixXd reference(const MatrixXd& m, const QuantFormat& f) {
  MatrixXd out(m.rows(), m.cols());
  const bool rows_are_lines = m.cols() >= m.rows();
  const MatrixXd lines = rows_are_lines ? m : MatrixXd(m.transpose());  // each row a line
  MatrixXd stored(lines.rows(), lines.cols());
  const int levels = 1 << f.bits;
  for (Eigen::Index line = 0; line < lines.rows(); ++line) {
    for (Eigen::Index start = 0; start < lines.cols(); start += f.group) {
      const Eigen::Index len = std::min<Eigen::Index>(f.group, lines.cols() - start);
      const Eigen::VectorXd g = lines.row(line).segment(start, len).transpose();
      std::vector<double> grid;
      if (f.symmetric) {
        Eigen::Index big = 0;
        for (Eigen::Index i = 1; i < len; ++i) {
          if (std::abs(g(i)) > std::abs(g(big))) big = i;
        }
        const double d = f16(g(big) / -(levels / 2));
        for (int q = -levels / 2; q < levels / 2; ++q) grid.push_back(d * q);
      } else {
        const double lo = f16(g.minCoeff()), d = f16((g.maxCoeff() - lo) / (levels - 1));
        for (int q = 0; q < levels; ++q) grid.push_back(lo + d * q);
      }
      for (Eigen::Index i = 0; i < len; ++i) {
        double best = grid[0];
        for (double v : grid) {
          if (std::abs(v - g(i)) < std::abs(best - g(i))) best = v;
        }
        stored(line, start + i) = best;
      }
    }
  }
  return rows_are_lines ? stored : MatrixXd(stored.transpose());
}

TEST(Quantize, StoresTheNearestLevelOfEveryGroupInEveryFormat) {
  // Short last groups (37, 131 long lines), both orientations, a single row.
  const std::vector<std::pair<int, int>> shapes = {{5, 37}, {131, 3}, {1, 70}, {8, 128}, {64, 64}};
  for (const QuantFormat& f : all_quant_formats()) {
    for (auto [rows, cols] : shapes) {
      const MatrixXd m = 0.05 * test::random_matrix(rows, cols, 40 + rows);
      const QuantizedMatrix q = quantize(m, f);
      SCOPED_TRACE(f.name() + " " + std::to_string(rows) + " x " + std::to_string(cols));
      EXPECT_EQ(static_cast<int64_t>(q.scales.size()), quant_groups(rows, cols, f));
      EXPECT_EQ(static_cast<int64_t>(q.codes.size() + 2 * (q.scales.size() + q.minima.size())),
                quant_bytes(rows, cols, f));
      const MatrixXd got = dequantize(q), want = reference(m, f);
      // Ties (none in random data) aside, the same level; equal to rounding.
      EXPECT_LE((got - want).cwiseAbs().maxCoeff(), 1e-12 * m.cwiseAbs().maxCoeff()) << f.name();
    }
  }
}

TEST(Quantize, ValuesOnTheGridAreStoredExactly) {
  // Groups already on their grid (levels times an f16 step, each group's
  // largest magnitude at -2^(b-1) steps; a negative step in row 1) come
  // back bit for bit.
  for (int bits : {2, 3, 4, 8}) {
    const QuantFormat f{bits, 32, true};
    const int half = (1 << bits) / 2;
    MatrixXd m(2, 70);
    for (Eigen::Index r = 0; r < 2; ++r) {
      const double d = r == 0 ? 0.0078125 : -0.00390625;  // 2^-7, -2^-8
      for (Eigen::Index j = 0; j < m.cols(); ++j) {
        m(r, j) = j % 32 == 0 ? -half * d : d * static_cast<double>((j * 7 + r) % (2 * half - 1) - (half - 1));
      }
    }
    EXPECT_EQ(round_to_format(m, f), m) << f.name();
  }
}

TEST(Quantize, MoreBitsNeverMoveASymmetricElementFurther) {
  const MatrixXd m = 0.02 * test::random_matrix(48, 200, 9);
  for (int group : {32, 64, 128}) {
    MatrixXd prev_err;
    for (int bits : {2, 3, 4, 8}) {
      const MatrixXd err = (round_to_format(m, {bits, group, true}) - m).cwiseAbs();
      if (prev_err.size()) {
        EXPECT_TRUE((err.array() <= prev_err.array()).all()) << bits << " bits, groups of " << group;
        EXPECT_LT(err.squaredNorm(), prev_err.squaredNorm());
      }
      prev_err = err;
    }
  }
}

// What is stored quantizes back to itself bit for bit (the bundle writer
// and the GGUF export re-encode stored values).
TEST(Quantize, StoredValuesQuantizeBackToThemselves) {
  const MatrixXd m = 0.03 * test::random_matrix(40, 300, 17);
  for (const QuantFormat& f : all_quant_formats()) {
    const MatrixXd once = round_to_format(m, f);
    EXPECT_EQ(round_to_format(once, f), once) << f.name();
    EXPECT_EQ(round_to_format(MatrixXd(once.transpose()), f), MatrixXd(once.transpose())) << f.name();
  }
}

TEST(Quantize, ParsesAndNamesFormats) {
  EXPECT_EQ(parse_quant_format("int4", "--x"), (QuantFormat{4, 32, true}));
  EXPECT_EQ(parse_quant_format("int3-g128-asym", "--x"), (QuantFormat{3, 128, false}));
  EXPECT_EQ(parse_quant_format("int8-g64-sym", "--x"), (QuantFormat{8, 64, true}));
  for (const QuantFormat& f : all_quant_formats()) EXPECT_EQ(parse_quant_format(f.name(), "--x"), f);
  EXPECT_EQ(all_quant_formats().size(), 24u);
  for (const char* bad : {"int5", "int4-g48", "int4-sym-g32", "int4-g32-", "q4", "int", "int4-g", "int44"}) {
    EXPECT_NE(test::error_of([&] { parse_quant_format(bad, "--precision"); }).find("--precision: '"),
              std::string::npos)
        << bad;
  }
}

TEST(Quantize, RejectsInconsistentStorage) {
  const MatrixXd m = test::random_matrix(4, 40, 1);
  const QuantizedMatrix good = quantize(m, {4, 32, false});
  EXPECT_EQ(good.scales.size(), 8u);  // 4 lines x 2 groups
  auto broken = [&](auto change) {
    QuantizedMatrix q = good;
    change(q);
    return test::error_of([&] { dequantize(q); });
  };
  EXPECT_NE(broken([](QuantizedMatrix& q) { q.scales.pop_back(); }).find("7 scales, 8 groups"), std::string::npos);
  EXPECT_NE(broken([](QuantizedMatrix& q) { q.minima.clear(); }).find("0 minima, 8 expected"), std::string::npos);
  EXPECT_NE(broken([](QuantizedMatrix& q) { q.codes.pop_back(); }).find("bytes"), std::string::npos);
  EXPECT_NE(broken([](QuantizedMatrix& q) { q.format.group = 48; }).find("unsupported"), std::string::npos);
  EXPECT_NE(broken([](QuantizedMatrix& q) { q.scales[3] = 0x7c00; }).find("not finite"), std::string::npos);  // f16 inf
  EXPECT_NE(test::error_of([&] { quantize(MatrixXd::Constant(2, 40, 1e6), {4, 32, true}); }).find("overflows f16"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { quantize(MatrixXd::Constant(2, 40, NAN), {4, 32, true}); }).find("not finite"),
            std::string::npos);
}

}  // namespace
}  // namespace hydraopt
