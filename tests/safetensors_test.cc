#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <span>

#include "core/rounding.h"
#include "hydraopt/error.h"
#include "io/atomic_file.h"
#include "core/half.h"
#include "util/sha256.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace hydraopt {
namespace {

using io::SafetensorsFile;

// A file image from a raw header string and `data` bytes of payload.
std::vector<std::byte> image(const std::string& header, size_t data, uint64_t declared = UINT64_MAX) {
  uint64_t n = declared == UINT64_MAX ? header.size() : declared;
  std::vector<std::byte> out(8 + header.size() + data, std::byte{0});
  std::memcpy(out.data(), &n, 8);
  std::memcpy(out.data() + 8, header.data(), header.size());
  return out;
}

std::string parse_error(const std::vector<std::byte>& bytes) {
  try {
    SafetensorsFile::parse(bytes, "bad.safetensors");
  } catch (const Error& e) {
    EXPECT_EQ(e.file(), "bad.safetensors");
    return e.what();
  }
  ADD_FAILURE() << "expected the file to be rejected";
  return "";
}

const std::string kGood = R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})";

TEST(Safetensors, AcceptsMinimalValidFile) {
  auto f = SafetensorsFile::parse(image(kGood, 16), "ok");
  ASSERT_EQ(f.tensors().size(), 1u);
  EXPECT_EQ(f.tensors()[0].shape, (std::vector<int64_t>{2, 2}));
}

TEST(Safetensors, RejectsShortFile) {
  std::vector<std::byte> b(5);
  EXPECT_NE(parse_error(b).find("shorter than"), std::string::npos);
}

TEST(Safetensors, RejectsHeaderOverCap) {
  EXPECT_NE(parse_error(image(kGood, 16, 200'000'000)).find("100 MB"), std::string::npos);
}

TEST(Safetensors, RejectsHeaderPastEnd) {
  EXPECT_NE(parse_error(image(kGood, 0, kGood.size() + 100)).find("past the end"), std::string::npos);
}

TEST(Safetensors, RejectsInvalidUtf8) {
  std::string h = "{\"a\xff\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}";
  EXPECT_NE(parse_error(image(h, 4)).find("UTF-8"), std::string::npos);
  std::string overlong = "{\"\xc0\xaf\":{}}";
  EXPECT_NE(parse_error(image(overlong, 0)).find("UTF-8"), std::string::npos);
}

TEST(Safetensors, RejectsNonJsonAndNonObject) {
  EXPECT_NE(parse_error(image("{\"a\":", 0)).find("not valid JSON"), std::string::npos);
  EXPECT_NE(parse_error(image("[1,2]", 0)).find("not a JSON object"), std::string::npos);
}

TEST(Safetensors, RejectsMissingFields) {
  EXPECT_NE(parse_error(image(R"({"a":{"shape":[1],"data_offsets":[0,4]}})", 4)).find("missing 'dtype'"),
            std::string::npos);
  EXPECT_NE(parse_error(image(R"({"a":{"dtype":"F32","data_offsets":[0,4]}})", 4)).find("missing 'shape'"),
            std::string::npos);
  EXPECT_NE(parse_error(image(R"({"a":{"dtype":"F32","shape":[1]}})", 4)).find("missing 'data_offsets'"),
            std::string::npos);
}

TEST(Safetensors, RejectsUnknownAndUnsupportedDtypes) {
  auto e1 = parse_error(image(R"({"a":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}})", 4));
  EXPECT_NE(e1.find("unknown dtype 'F33'"), std::string::npos) << e1;
  EXPECT_NE(e1.find("tensor 'a'"), std::string::npos) << e1;
  auto e2 = parse_error(image(R"({"a":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}})", 4));
  EXPECT_NE(e2.find("I32 is not supported"), std::string::npos) << e2;
}

TEST(Safetensors, RejectsNegativeOrFractionalShape) {
  EXPECT_NE(parse_error(image(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4)).find("non-negative"),
            std::string::npos);
  EXPECT_NE(parse_error(image(R"({"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4)).find("non-negative"),
            std::string::npos);
}

TEST(Safetensors, RejectsShapeSpanMismatch) {
  auto e = parse_error(image(R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})", 12));
  EXPECT_NE(e.find("need 16 bytes but data_offsets span 12"), std::string::npos) << e;
}

TEST(Safetensors, RejectsShapeOverflow) {
  auto e = parse_error(image(
      R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,4]}})", 4));
  EXPECT_NE(e.find("overflows"), std::string::npos) << e;
}

TEST(Safetensors, RejectsGapOverlapTruncationAndTrailingBytes) {
  auto gap = parse_error(image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8));
  EXPECT_NE(gap.find("gap"), std::string::npos) << gap;
  auto overlap = parse_error(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                   R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8));
  EXPECT_NE(overlap.find("overlaps"), std::string::npos) << overlap;
  auto truncated = parse_error(image(kGood, 12));
  EXPECT_NE(truncated.find("truncated"), std::string::npos) << truncated;
  auto trailing = parse_error(image(kGood, 20));
  EXPECT_NE(trailing.find("trailing"), std::string::npos) << trailing;
  auto backwards = parse_error(image(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}})", 0));
  EXPECT_NE(backwards.find("precedes"), std::string::npos) << backwards;
}

TEST(Safetensors, RejectsBadMetadata) {
  auto e1 = parse_error(image(R"({"__metadata__":{"k":1}})", 0));
  EXPECT_NE(e1.find("not a string"), std::string::npos) << e1;
  auto e2 = parse_error(image(R"({"__metadata__":[]})", 0));
  EXPECT_NE(e2.find("not an object"), std::string::npos) << e2;
}

TEST(Safetensors, AcceptsUnsortedOffsetsAndZeroSizedTensors) {
  std::string h = R"({"z":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                  R"("a":{"dtype":"F16","shape":[2],"data_offsets":[4,8]},)"
                  R"("e":{"dtype":"F32","shape":[0,3],"data_offsets":[8,8]}})";
  auto f = SafetensorsFile::parse(image(h, 8), "ok");
  ASSERT_EQ(f.tensors().size(), 3u);
  EXPECT_EQ(f.tensors()[0].name, "a");  // sorted by name
  EXPECT_NE(f.find("z"), nullptr);
  EXPECT_EQ(f.find("missing"), nullptr);
}

class RoundTrip : public ::testing::TestWithParam<DType> {};

TEST_P(RoundTrip, EveryDtypeRoundTripsThroughAFile) {
  const DType dt = GetParam();
  test::TempDir dir;
  Eigen::MatrixXd m = test::random_matrix(3, 5, 7) * 0.1;
  Eigen::MatrixXd stored = round_to_dtype(m, dt);
  io::safetensors_write(dir / "x.safetensors", {io::tensor_from_matrix("w", m, dt)}, {{"k", "v"}});
  auto f = SafetensorsFile::open(dir / "x.safetensors");
  EXPECT_EQ(f.metadata().at("k"), "v");
  const auto* t = f.find("w");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->dtype, dt);
  EXPECT_EQ(t->shape, (std::vector<int64_t>{3, 5}));
  Eigen::MatrixXd back = f.matrix(*t);
  EXPECT_EQ(back, stored);  // exact: reading is lossless
  EXPECT_EQ(f.matrix_transposed(*t), Eigen::MatrixXd(stored.transpose()));
  const double tol = dt == DType::F64 ? 0 : dt == DType::F32 ? 1e-7 : dt == DType::F16 ? 1e-3 : 8e-3;
  EXPECT_LE((back - m).cwiseAbs().maxCoeff(), tol * m.cwiseAbs().maxCoeff());
  // Header is padded to 8 bytes so the data buffer is aligned.
  uint64_t n;
  auto raw = test::read_text(dir / "x.safetensors");
  std::memcpy(&n, raw.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(raw[8 + n - 1] == ' ' || raw[8 + n - 1] == '}', true);
}

// kept_by_dtype is round_to_dtype's fixed point: true on what rounding
// gives, false one step (in double) away from it.
TEST_P(RoundTrip, KeptByDtypeIsTrueExactlyOnTheDtypesValues) {
  const DType dt = GetParam();
  const Eigen::MatrixXd m = test::random_matrix(4, 6, 3);
  const Eigen::MatrixXd stored = round_to_dtype(m, dt);
  EXPECT_TRUE(kept_by_dtype(stored, dt));
  EXPECT_EQ(kept_by_dtype(m, dt), dt == DType::F64);
  Eigen::MatrixXd off = stored;
  off(3, 5) = std::nextafter(off(3, 5), 1e300);
  EXPECT_EQ(kept_by_dtype(off, dt), dt == DType::F64);
}

// Shapes over several conversion tiles (16 x 128) with partial ones at both
// ends: every element, written and read back either way, against the file's
// raw row-major bytes decoded here.
TEST_P(RoundTrip, TiledConversionsPlaceEveryElement) {
  const DType dt = GetParam();
  // Wide (tiles) and narrow (at most 64 columns: encoded row by row).
  for (auto [rows, cols] : {std::pair<Eigen::Index, Eigen::Index>{37, 300}, {301, 19}}) {
    SCOPED_TRACE(std::to_string(rows) + " x " + std::to_string(cols));
    test::TempDir dir;
    const Eigen::MatrixXd m = test::random_matrix(rows, cols, 9);
    const Eigen::MatrixXd stored = round_to_dtype(m, dt);
    io::safetensors_write(dir / "x.safetensors", {io::tensor_from_matrix("w", m, dt)}, {});
    auto f = SafetensorsFile::open(dir / "x.safetensors");
    const auto* t = f.find("w");
    ASSERT_NE(t, nullptr);
    const auto raw = f.bytes(*t);
    auto element = [&](Eigen::Index r, Eigen::Index c) -> double {
      const std::byte* p = raw.data() + static_cast<size_t>(r * m.cols() + c) * dtype_size(dt);
      double d = 0;
      float x = 0;
      uint16_t h = 0;
      switch (dt) {
        case DType::F64: std::memcpy(&d, p, 8); return d;
        case DType::F32: std::memcpy(&x, p, 4); return x;
        case DType::BF16: std::memcpy(&h, p, 2); return bf16_to_float(h);
        case DType::F16: std::memcpy(&h, p, 2); return f16_to_float(h);
      }
      return d;
    };
    const Eigen::MatrixXd back = f.matrix(*t), back_t = f.matrix_transposed(*t);
    for (Eigen::Index r = 0; r < m.rows(); ++r) {
      for (Eigen::Index c = 0; c < m.cols(); ++c) {
        ASSERT_EQ(element(r, c), stored(r, c)) << r << " " << c;
        ASSERT_EQ(back(r, c), stored(r, c)) << r << " " << c;
        ASSERT_EQ(back_t(c, r), stored(r, c)) << r << " " << c;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, RoundTrip,
                         ::testing::Values(DType::F64, DType::F32, DType::F16, DType::BF16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

TEST(Safetensors, Bf16RoundsToNearestEven) {
  // 1 + 2^-8 is exactly halfway between two bf16 values: ties go to even (1.0).
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 0x1p-8f)), 1.0f);
  // 1 + 3*2^-8 is halfway too: ties go to the even 1 + 2^-6.
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 3 * 0x1p-8f)), 1.0f + 0x1p-6f);
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::nanf("")))));
  // A NaN whose payload is all in the dropped half stays NaN (rounding
  // would carry it to infinity); infinities and the largest finite values
  // round as numbers.
  const uint32_t low_nan_bits = 0xff800001u;
  float low_nan;
  std::memcpy(&low_nan, &low_nan_bits, 4);
  EXPECT_EQ(float_to_bf16(low_nan), 0xffc0);
  EXPECT_EQ(float_to_bf16(INFINITY), 0x7f80);
  EXPECT_EQ(float_to_bf16(-INFINITY), 0xff80);
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // rounds up to infinity
  EXPECT_EQ(float_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(f16_to_float(float_to_f16(65504.0f)), 65504.0f);
}

TEST(Safetensors, WriterIsDeterministicAndSorted) {
  Eigen::MatrixXd m = test::random_matrix(2, 2, 1);
  auto a = io::safetensors_serialize({io::tensor_from_matrix("b", m, DType::F32),
                                      io::tensor_from_matrix("a", m, DType::F32)}, {});
  auto b = io::safetensors_serialize({io::tensor_from_matrix("a", m, DType::F32),
                                      io::tensor_from_matrix("b", m, DType::F32)}, {});
  EXPECT_EQ(a, b);
  auto f = SafetensorsFile::parse(a, "x");
  EXPECT_EQ(f.find("a")->begin, 0u);
}

TEST(Safetensors, InconsistentTensorIsRejectedBeforeWriting) {
  test::TempDir dir;
  test::write_text(dir / "out.safetensors", "previous");
  io::TensorData bad{"w", DType::F32, {2, 2}, std::vector<std::byte>(3)};  // wrong byte count
  EXPECT_THROW(io::safetensors_write(dir / "out.safetensors", {bad}), Error);
  EXPECT_EQ(test::read_text(dir / "out.safetensors"), "previous");
}

TEST(Safetensors, OpenNamesTheFile) {
  test::TempDir dir;
  test::write_text(dir / "t.safetensors", "abc");
  try {
    SafetensorsFile::open(dir / "t.safetensors");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.file(), (dir / "t.safetensors").string());
  }
  EXPECT_THROW(SafetensorsFile::open(dir / "none.safetensors"), Error);
}

}  // namespace
}  // namespace hydraopt

namespace hydraopt {
namespace {

// Known digests (FIPS 180-2 "abc", the empty input), and a file hashed in
// several mapped steps equals the hash of its bytes in one piece.
TEST(Sha256, FilesHashLikeTheirBytes) {
  test::TempDir d;
  const auto write = [&](const char* name, const std::string& bytes) {
    std::ofstream(d / name, std::ios::binary) << bytes;
    return d / name;
  };
  EXPECT_EQ(util::sha256_file(write("abc", "abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(util::sha256_file(write("empty", "")), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  std::string big((9 << 20) + 12345, '\0');  // 9 whole steps and part of one
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>((i * 2654435761u) >> 13);
  EXPECT_EQ(util::sha256_file(write("big", big)),
            util::sha256_hex(std::as_bytes(std::span<const char>(big.data(), big.size()))));
  EXPECT_THROW(util::sha256_file(d / "missing"), Error);
  EXPECT_THROW(util::sha256_file(d.path()), Error);  // a directory
}

TEST(AtomicFile, UncommittedWriteLeavesNoTraceAndKeepsThePrevious) {
  test::TempDir dir;
  test::write_text(dir / "out.bin", "previous");
  {
    io::AtomicFile f(dir / "out.bin");
    f.write(std::string_view("partial"));
    // destroyed without commit(), as when an exception unwinds
  }
  EXPECT_EQ(test::read_text(dir / "out.bin"), "previous");
  int files = 0;
  for (auto& e : std::filesystem::directory_iterator(dir.path())) (void)e, ++files;
  EXPECT_EQ(files, 1);
  io::write_file_atomic(dir / "out.bin", "new");
  EXPECT_EQ(test::read_text(dir / "out.bin"), "new");
}

// insert_front shifts what was written up by whole blocks, leaving zeros in
// front (ext4, xfs), or reports that it cannot (tmpfs) and changes nothing.
// Both ways the committed file is what was written.
TEST(AtomicFile, InsertFrontShiftsTheContentOrLeavesIt) {
  for (const auto& temp : test::output_dirs()) {
    const std::filesystem::path& dir = temp->path();
    SCOPED_TRACE(dir.string());
    std::string data(10000, '\0');
    for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>('a' + i % 26);
    std::string expect;
    {
      io::AtomicFile f(dir / "out.bin");
      f.write_at(std::as_bytes(std::span(data.data(), data.size())), 0);
      if (f.insert_front(8192)) {
        expect = std::string(8192, '\0') + data;
        f.write_at(std::as_bytes(std::span("head", 4)), 0);
        expect.replace(0, 4, "head");
      } else {
        expect = data;
      }
      f.commit();
    }
    EXPECT_EQ(test::read_text(dir / "out.bin"), expect);
  }
}

TEST(AtomicFile, UnwritableDirectoryIsAClearError) {
  try {
    io::AtomicFile f("/nonexistent-dir/x.bin");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot create output file"), std::string::npos);
  }
}

}  // namespace
}  // namespace hydraopt

namespace hydraopt {
namespace {

// The writer refuses two tensors of one name (a reader would see only one
// of them), and writes a header the reader accepts for many tensors.
TEST(SafetensorsWrite, RejectsDuplicateNamesAndKeepsOrder) {
  const Eigen::MatrixXd m = Eigen::MatrixXd::Ones(2, 3);
  EXPECT_THROW(io::safetensors_serialize({io::tensor_from_matrix("a", m, DType::F32),
                                          io::tensor_from_matrix("a", m, DType::F32)},
                                         {}),
               Error);
  std::vector<io::TensorData> many;
  for (int i = 999; i >= 0; --i) many.push_back(io::tensor_from_matrix("t" + std::to_string(i), i * m, DType::F32));
  const auto bytes = io::safetensors_serialize(std::move(many), {{"k", "v"}});
  const auto f = io::SafetensorsFile::parse(bytes, "many");
  ASSERT_EQ(f.tensors().size(), 1000u);
  EXPECT_EQ(f.metadata().at("k"), "v");
  EXPECT_EQ(f.matrix(*f.find("t7")), 7 * m);
}

}  // namespace
}  // namespace hydraopt
