// Calibration statistics (src/io/calibration.h): the sketch against a dense
// computation, the file's round trip, and one rejection per reader rule.
#include <gtest/gtest.h>

#include <Eigen/QR>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <tuple>

#include "hydraopt/error.h"
#include "io/calibration.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace hydraopt {
namespace {

namespace fs = std::filesystem;
using io::CalibrationStats;
using io::InputStats;

const std::string kAttn = "model.layers.0.self_attn.q_proj";  // site names hold dots
const std::string kMlp = "model.layers.0.mlp.gate_proj";

// A random orthogonal n x n matrix.
Eigen::MatrixXd random_orthogonal(Eigen::Index n, uint64_t seed) {
  Eigen::HouseholderQR<Eigen::MatrixXd> qr(test::random_matrix(n, n, seed));
  return qr.householderQ() * Eigen::MatrixXd::Identity(n, n);
}

// Q diag(spectrum) Q^T for a random Q.
Eigen::MatrixXd with_spectrum(const std::vector<double>& spectrum, uint64_t seed) {
  const auto n = static_cast<Eigen::Index>(spectrum.size());
  const Eigen::MatrixXd q = random_orthogonal(n, seed);
  return q * Eigen::Map<const Eigen::VectorXd>(spectrum.data(), n).asDiagonal() * q.transpose();
}

// The tail rule by brute force on the exact spectrum: the fewest top
// eigenvalues whose remainder is at most tail of the sum.
Eigen::Index expected_rank(std::vector<double> spectrum, double tail) {
  std::sort(spectrum.rbegin(), spectrum.rend());
  double total = 0;
  for (double x : spectrum) total += x;
  for (size_t k = 0; k <= spectrum.size(); ++k) {
    double rest = 0;
    for (size_t i = k; i < spectrum.size(); ++i) rest += spectrum[i];
    if (rest <= tail * total) return static_cast<Eigen::Index>(k);
  }
  return static_cast<Eigen::Index>(spectrum.size());
}

// Two sites: attention (in 6, k 3) and MLP (in 5, k 0, diagonal only).
CalibrationStats valid_stats() {
  CalibrationStats s;
  s.task = "arith";
  s.base_model = "tiny-llama";
  s.examples = 12;
  s.rows = 345;
  s.sites[kAttn] = io::sketch_second_moment(with_spectrum({9, 4, 2, 1e-3, 1e-3, 1e-4}, 1), 3, 0);
  s.sites[kMlp] = io::sketch_second_moment(with_spectrum({3, 2, 1, 0.5, 0.25}, 2), 0, 0);
  s.modules[kAttn] = {"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
                      "model.layers.0.self_attn.v_proj"};
  s.modules[kMlp] = {"model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"};
  return s;
}

// A file's metadata and tensors, to corrupt one thing before serialising.
struct Parts {
  std::map<std::string, std::string> meta;
  std::vector<io::TensorData> tensors;

  io::TensorData& tensor(const std::string& name) {
    for (auto& t : tensors) {
      if (t.name == name) return t;
    }
    throw std::logic_error("no tensor " + name);
  }
  void remove(const std::string& name) {
    std::erase_if(tensors, [&](const io::TensorData& t) { return t.name == name; });
  }
  void set(const std::string& name, size_t i, float x) {
    std::memcpy(tensor(name).bytes.data() + i * sizeof(float), &x, sizeof(float));
  }
  float get(const std::string& name, size_t i) {
    float x;
    std::memcpy(&x, tensor(name).bytes.data() + i * sizeof(float), sizeof(float));
    return x;
  }
  std::vector<std::byte> image() const { return io::safetensors_serialize(tensors, meta); }
};

// valid_stats() laid out by hand as the format describes it (not through
// the writer, so that the reader is checked against the description).
Parts valid_parts() {
  const CalibrationStats s = valid_stats();
  Parts p;
  nlohmann::json sites = nlohmann::json::object();
  for (const auto& [site, modules] : s.modules) sites[site] = modules;
  p.meta = {{"format", "hydraopt-calibration"},
            {"version", "1"},
            {"task", s.task},
            {"base_model", s.base_model},
            {"examples", "12"},
            {"rows", "345"},
            {"sites", sites.dump()}};
  for (const auto& [site, st] : s.sites) {
    p.tensors.push_back(io::tensor_from_vector(site + ".values", st.values, DType::F32));
    p.tensors.push_back(io::tensor_from_matrix(site + ".vectors", st.vectors, DType::F32));
    p.tensors.push_back(io::tensor_from_vector(site + ".diagonal", st.diagonal, DType::F32));
  }
  return p;
}

const char* kLabel = "cal.safetensors";

// The Error the image of p raises; a test failure if it is accepted, or if
// the error does not name the file, `tensor` and `reason`.
void expect_rejected(const Parts& p, const std::string& tensor, const std::string& reason) {
  try {
    io::parse_calibration_stats(p.image(), kLabel);
  } catch (const Error& e) {
    EXPECT_EQ(e.file(), kLabel) << e.what();
    EXPECT_EQ(e.tensor(), tensor) << e.what();
    EXPECT_NE(e.reason().find(reason), std::string::npos)
        << "expected '" << reason << "' in: " << e.what();
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << "one line: " << e.what();
    return;
  }
  ADD_FAILURE() << "accepted; expected '" << reason << "'";
}

void expect_meta_rejected(const std::string& key, const std::string& value,
                          const std::string& reason) {
  Parts p = valid_parts();
  p.meta[key] = value;
  SCOPED_TRACE(key + " = " + value);
  expect_rejected(p, "", reason);
}

void expect_sites_rejected(const std::string& sites, const std::string& reason) {
  expect_meta_rejected("sites", sites, reason);
}

// ---- the sketch ------------------------------------------------------------

const std::vector<double> kSpectrum = {100, 50, 10, 1, 0.1, 0.01, 0.001, 0};

TEST(CalibrationSketch, KeepsTheFewestEigenpairsTheTailRuleAllows) {
  const Eigen::MatrixXd c = with_spectrum(kSpectrum, 3);
  for (double tail : {1e-6, 1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.7, 1.0}) {
    SCOPED_TRACE(tail);
    const InputStats s = io::sketch_second_moment(c, 256, tail);
    EXPECT_EQ(s.values.size(), expected_rank(kSpectrum, tail));
    EXPECT_EQ(s.vectors.rows(), s.values.size());
    EXPECT_EQ(s.vectors.cols(), 8);
    EXPECT_EQ(s.in(), 8);
  }
  // Not a rule that keeps everything or nothing: these tails keep 4 and 2.
  EXPECT_EQ(io::sketch_second_moment(c, 256, 1e-3).values.size(), 4);
  EXPECT_EQ(io::sketch_second_moment(c, 256, 0.1).values.size(), 2);
}

TEST(CalibrationSketch, MatchesADenseComputation) {
  const Eigen::MatrixXd c = with_spectrum(kSpectrum, 4);
  for (double tail : {1e-3, 0.1}) {
    SCOPED_TRACE(tail);
    const InputStats s = io::sketch_second_moment(c, 256, tail);
    const Eigen::Index k = s.values.size();
    // The top eigenvalues, descending, and unit eigenvectors of c.
    for (Eigen::Index i = 0; i < k; ++i) {
      EXPECT_NEAR(s.values[i], kSpectrum[i], 1e-10 * kSpectrum[0]);
      EXPECT_NEAR(
          (c * s.vectors.row(i).transpose() - s.values[i] * s.vectors.row(i).transpose()).norm(), 0,
          1e-9);
    }
    EXPECT_LT(
        (s.vectors * s.vectors.transpose() - Eigen::MatrixXd::Identity(k, k)).cwiseAbs().maxCoeff(),
        1e-12);
    // The diagonal is the dense remainder's.
    const Eigen::MatrixXd rest = c - s.vectors.transpose() * s.values.asDiagonal() * s.vectors;
    EXPECT_LT((s.diagonal - rest.diagonal().cwiseMax(0.0)).cwiseAbs().maxCoeff(), 1e-12);
    // dense() misses only the remainder's off-diagonal part, at most the
    // energy dropped; the trace is kept exactly.
    double dropped = 0;
    for (size_t i = static_cast<size_t>(k); i < kSpectrum.size(); ++i) dropped += kSpectrum[i];
    EXPECT_GT(dropped, 0);
    EXPECT_LE((c - s.dense()).norm(), dropped + 1e-10);
    EXPECT_NEAR(s.trace(), c.trace(), 1e-10);
    EXPECT_NEAR(s.dense().trace(), c.trace(), 1e-10);
  }
}

TEST(CalibrationSketch, FixesEigenvectorSigns) {
  // LAPACK returns either sign; the sketch makes each row's largest entry
  // positive, so that a file does not depend on the build.
  for (uint64_t seed = 0; seed < 10; ++seed) {
    const Eigen::MatrixXd x = test::random_matrix(20, 8, seed);
    const InputStats s = io::sketch_second_moment(x.transpose() * x, 8, 0);
    ASSERT_EQ(s.values.size(), 8);
    for (Eigen::Index i = 0; i < 8; ++i) {
      Eigen::Index top = 0;
      s.vectors.row(i).cwiseAbs().maxCoeff(&top);
      EXPECT_GT(s.vectors(i, top), 0) << "seed " << seed << ", row " << i;
    }
  }
}

TEST(CalibrationSketch, FullRankReconstructsExactly) {
  const std::vector<double> spectrum = {5, 4, 3, 2, 1, 0.5};
  const Eigen::MatrixXd c = with_spectrum(spectrum, 5);
  const InputStats s = io::sketch_second_moment(c, 256, 0);
  ASSERT_EQ(s.values.size(), 6);
  EXPECT_LT((s.dense() - c).cwiseAbs().maxCoeff(), 1e-12);
  EXPECT_LT(s.diagonal.cwiseAbs().maxCoeff(), 1e-12);
}

TEST(CalibrationSketch, MaxRankCapsTheTailRule) {
  const Eigen::MatrixXd c = with_spectrum(kSpectrum, 6);
  const InputStats s3 = io::sketch_second_moment(c, 3, 0);
  ASSERT_EQ(s3.values.size(), 3);
  EXPECT_NEAR(s3.values[2], 10, 1e-9);
  const Eigen::MatrixXd rest = c - s3.vectors.transpose() * s3.values.asDiagonal() * s3.vectors;
  EXPECT_LT((s3.diagonal - rest.diagonal()).cwiseAbs().maxCoeff(), 1e-12);
  // Rank 0: the diagonal of c alone.
  const InputStats s0 = io::sketch_second_moment(c, 0, 1e-3);
  EXPECT_EQ(s0.values.size(), 0);
  EXPECT_EQ(s0.vectors.rows(), 0);
  EXPECT_EQ(s0.vectors.cols(), 8);
  EXPECT_LT((s0.diagonal - c.diagonal()).cwiseAbs().maxCoeff(), 1e-12);
  EXPECT_LT((s0.dense() - Eigen::MatrixXd(c.diagonal().asDiagonal())).cwiseAbs().maxCoeff(), 1e-12);
}

TEST(CalibrationSketch, SymmetrisesAndClampsRounding) {
  const Eigen::MatrixXd c = with_spectrum({4, 2, 1, 0}, 7);
  // An antisymmetric perturbation is dropped; an eigenvalue a little below
  // zero (rounding) comes out as 0, never negative.
  const Eigen::MatrixXd skew = test::random_matrix(4, 4, 8);
  const InputStats a = io::sketch_second_moment(c, 256, 0);
  const InputStats b = io::sketch_second_moment(c + (skew - skew.transpose()) * 1e-3, 256, 0);
  EXPECT_LT((a.dense() - b.dense()).cwiseAbs().maxCoeff(), 1e-12);
  const Eigen::MatrixXd q = random_orthogonal(4, 9);
  const Eigen::MatrixXd neg = q * Eigen::Vector4d(4, 2, 1, -1e-9).asDiagonal() * q.transpose();
  const InputStats s = io::sketch_second_moment(neg, 256, 0);
  EXPECT_GE(s.values.minCoeff(), 0);
  EXPECT_GE(s.diagonal.minCoeff(), 0);
  // A negative eigenvalue counts as 0 in the tail rule too: of 1, 0.3 and
  // -0.3 (trace 1.3), a tail of 0.1 keeps two; -0.3 must not pay for 0.3.
  const Eigen::MatrixXd q3 = random_orthogonal(3, 10);
  const InputStats t = io::sketch_second_moment(
      q3 * Eigen::Vector3d(1, 0.3, -0.3).asDiagonal() * q3.transpose(), 256, 0.1);
  ASSERT_EQ(t.values.size(), 2);
  EXPECT_NEAR(t.values[1], 0.3, 1e-12);
}

TEST(CalibrationSketch, RejectsBadArguments) {
  const Eigen::MatrixXd c = Eigen::MatrixXd::Identity(3, 3);
  EXPECT_NE(test::error_of([] {
              io::sketch_second_moment(Eigen::MatrixXd::Zero(2, 3));
            }).find("not square"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { io::sketch_second_moment(c, -1); }).find("rank"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { io::sketch_second_moment(c, 4, 1.5); }).find("tail"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { io::sketch_second_moment(c, 4, std::nan("")); }).find("tail"),
            std::string::npos);
  Eigen::MatrixXd bad = c;
  bad(1, 2) = std::numeric_limits<double>::infinity();
  EXPECT_EQ(io::sketch_second_moment(Eigen::MatrixXd(0, 0)).in(), 0);  // nothing, not a crash
  EXPECT_NE(test::error_of([&] { io::sketch_second_moment(bad); }).find("non-finite"),
            std::string::npos);
}

// ---- lookup ----------------------------------------------------------------

TEST(CalibrationStats, ForModuleFindsTheSiteAModuleReads) {
  CalibrationStats s = valid_stats();
  EXPECT_EQ(s.for_module("model.layers.0.self_attn.k_proj"), &s.sites.at(kAttn));
  EXPECT_EQ(s.for_module("model.layers.0.self_attn.q_proj"), &s.sites.at(kAttn));
  EXPECT_EQ(s.for_module("model.layers.0.mlp.up_proj"), &s.sites.at(kMlp));
  EXPECT_EQ(s.for_module("model.layers.0.mlp.down_proj"), nullptr);
  EXPECT_EQ(s.for_module("model.layers.0.mlp"), nullptr);     // a prefix is not a name
  s.modules["orphan"] = {"model.layers.0.self_attn.o_proj"};  // listed without statistics
  EXPECT_EQ(s.for_module("model.layers.0.self_attn.o_proj"), nullptr);
}

TEST(CalibrationStats, TraceIsTheDenseTrace) {
  const CalibrationStats s = valid_stats();
  for (const auto& [site, st] : s.sites) EXPECT_NEAR(st.trace(), st.dense().trace(), 1e-12) << site;
  EXPECT_NEAR(s.sites.at(kAttn).trace(), 9 + 4 + 2 + 1e-3 + 1e-3 + 1e-4, 1e-9);
}

// ---- the file --------------------------------------------------------------

TEST(CalibrationFile, RoundTrip) {
  test::TempDir dir;
  const fs::path path = dir / "arith.safetensors";
  const CalibrationStats want = valid_stats();
  io::write_calibration_stats(path, want);
  const CalibrationStats got = io::read_calibration_stats(path);
  EXPECT_EQ(got.task, want.task);
  EXPECT_EQ(got.base_model, want.base_model);
  EXPECT_EQ(got.examples, 12);
  EXPECT_EQ(got.rows, 345);
  EXPECT_EQ(got.modules, want.modules);
  ASSERT_EQ(got.sites.size(), 2u);
  // Stored as F32: equal to the values rounded to float.
  auto as_float = [](const auto& m) {
    return m.template cast<float>().template cast<double>().eval();
  };
  for (const auto& [site, w] : want.sites) {
    SCOPED_TRACE(site);
    const InputStats& g = got.sites.at(site);
    EXPECT_EQ(g.values, as_float(w.values));
    EXPECT_EQ(g.vectors, as_float(w.vectors));
    EXPECT_EQ(g.diagonal, as_float(w.diagonal));
  }
  EXPECT_EQ(got.sites.at(kMlp).values.size(), 0);
  // Only the file: no temporary left beside it.
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), fs::directory_iterator()), 1);
  // The hand-made image parses to the same statistics.
  const CalibrationStats parsed = io::parse_calibration_stats(valid_parts().image(), kLabel);
  EXPECT_EQ(parsed.modules, got.modules);
  EXPECT_EQ(parsed.sites.at(kAttn).vectors, got.sites.at(kAttn).vectors);
}

// Read site by site: the same statistics as read whole; a bad file is
// refused when opened; a file changed since is refused when a site is read.
TEST(CalibrationFile, SiteBySiteReaderReadsTheSameAndNoticesAChange) {
  test::TempDir dir;
  const fs::path path = dir / "arith.safetensors";
  io::write_calibration_stats(path, valid_stats());
  const CalibrationStats whole = io::read_calibration_stats(path);
  const io::CalibrationFileReader reader(path);
  EXPECT_EQ(reader.header().task, whole.task);
  EXPECT_EQ(reader.header().modules, whole.modules);
  EXPECT_TRUE(reader.header().sites.empty());
  for (const auto& [site, w] : whole.sites) {
    SCOPED_TRACE(site);
    const InputStats g = reader.site(site);
    EXPECT_EQ(g.values, w.values);
    EXPECT_EQ(g.vectors, w.vectors);
    EXPECT_EQ(g.diagonal, w.diagonal);
    EXPECT_EQ(reader.widths().at(site), w.in());
  }
  CalibrationStats other = valid_stats();
  other.examples = 123456;  // a longer header: another size
  io::write_calibration_stats(path, other);
  EXPECT_NE(test::error_of([&] { reader.site(kAttn); }).find("changed while it was in use"), std::string::npos);
  const fs::path bad = dir / "bad.safetensors";
  const std::vector<std::byte> image = valid_parts().image();
  test::write_text(bad, std::string(reinterpret_cast<const char*>(image.data()), image.size() - 9));
  EXPECT_THROW(io::CalibrationFileReader{bad}, Error);
  EXPECT_THROW(io::CalibrationFileReader{dir / "none.safetensors"}, Error);
}

TEST(CalibrationFile, WriterRefusesWhatTheReaderWouldAndLeavesNoFile) {
  test::TempDir dir;
  const fs::path path = dir / "bad.safetensors";
  CalibrationStats s = valid_stats();
  s.sites.at(kAttn).values[2] = -1;
  try {
    io::write_calibration_stats(path, s);
    ADD_FAILURE() << "written";
  } catch (const Error& e) {
    EXPECT_EQ(e.file(), path.string());
    EXPECT_EQ(e.tensor(), kAttn + ".values");
    EXPECT_NE(e.reason().find("negative"), std::string::npos) << e.what();
  }
  s = valid_stats();
  s.modules.erase(kMlp);
  EXPECT_NE(test::error_of([&] { io::write_calibration_stats(path, s); }).find("lists no modules"),
            std::string::npos);
  s = valid_stats();
  s.sites.erase(kMlp);
  EXPECT_NE(test::error_of([&] { io::write_calibration_stats(path, s); }).find("has no statistics"),
            std::string::npos);
  s = valid_stats();
  s.task = "caf\xe9";  // not UTF-8
  EXPECT_NE(test::error_of([&] {
              io::write_calibration_stats(path, s);
            }).find(path.string() + ": metadata 'task' is not valid UTF-8"),
            std::string::npos);
  EXPECT_TRUE(fs::is_empty(dir.path()));
}

TEST(CalibrationFile, ReaderNamesAMissingFile) {
  test::TempDir dir;
  const std::string e =
      test::error_of([&] { io::read_calibration_stats(dir / "none.safetensors"); });
  EXPECT_NE(e.find("none.safetensors: cannot open"), std::string::npos) << e;
}

TEST(CalibrationFile, AcceptsTheValidImage) {
  // Every rejection below corrupts exactly one thing of this image.
  const CalibrationStats s = io::parse_calibration_stats(valid_parts().image(), kLabel);
  EXPECT_EQ(s.sites.size(), 2u);
  EXPECT_EQ(s.sites.at(kAttn).values.size(), 3);
}

TEST(CalibrationFile, RejectsAnotherFormatOrVersion) {
  expect_meta_rejected("format", "hydraopt.bundle", "not calibration statistics");
  Parts p = valid_parts();
  p.meta.erase("format");
  expect_rejected(p, "", "not calibration statistics");
  expect_meta_rejected("version", "2", "version '2' is not supported");
  expect_meta_rejected("version", "1.0", "version '1.0' is not supported");
}

TEST(CalibrationFile, RejectsMalformedMetadata) {
  expect_meta_rejected("task", "", "\"task\" is empty");
  for (const char* key : {"task", "base_model", "examples", "rows", "sites", "version"}) {
    Parts p = valid_parts();
    p.meta.erase(key);
    SCOPED_TRACE(key);
    expect_rejected(p, "", std::string("metadata has no \"") + key + "\"");
  }
  for (const char* key : {"examples", "rows"}) {
    for (const char* bad : {"", "-1", "+1", " 1", "1 ", "1e3", "0x10", "1.0", "twelve",
                            "9223372036854775808", "99999999999999999999999"}) {
      expect_meta_rejected(key, bad, "is not a non-negative decimal integer");
    }
  }
  Parts p = valid_parts();
  p.meta["rows"] = "9223372036854775807";
  p.meta["examples"] = "0";
  const CalibrationStats s = io::parse_calibration_stats(p.image(), kLabel);
  EXPECT_EQ(s.rows, std::numeric_limits<int64_t>::max());
  EXPECT_EQ(s.examples, 0);
}

TEST(CalibrationFile, RejectsMalformedSites) {
  expect_sites_rejected("{\"" + kAttn + "\": [\"a\"", "not valid JSON");
  expect_sites_rejected("[]", "not a JSON object");
  expect_sites_rejected(std::string(100000, '[') + std::string(100000, ']'), "not a JSON object");
  expect_sites_rejected("{\"" + kAttn + "\": \"q\"}",
                        "is not a list of module names (found string)");
  expect_sites_rejected("{\"" + kAttn + "\": [[\"q\"]]}", "lists a non-string (array)");
  expect_sites_rejected("{\"" + kAttn + "\": [\"\"]}", "lists an empty module name");
  expect_sites_rejected("{\"\": [\"q\"]}", "site with an empty name");
  expect_sites_rejected("{\"" + kAttn + "\": [\"q\"], \"" + kAttn + "\": [\"k\"]}",
                        "lists site '" + kAttn + "' twice");
  expect_sites_rejected("{\"" + kAttn + "\": [\"q\", \"q\"]}", "lists module 'q' twice");
}

TEST(CalibrationFile, RejectsASiteWithoutModules) {
  expect_sites_rejected("{\"" + kAttn + "\": [], \"" + kMlp + "\": [\"g\"]}",
                        "site '" + kAttn + "' lists no modules");
}

TEST(CalibrationFile, RejectsAModuleInTwoSites) {
  expect_sites_rejected("{\"" + kAttn + "\": [\"q\", \"x\"], \"" + kMlp + "\": [\"x\"]}",
                        "module 'x' is in site");
}

TEST(CalibrationFile, RejectsMissingTensors) {
  for (const char* part : {".values", ".vectors", ".diagonal"}) {
    Parts p = valid_parts();
    p.remove(kAttn + part);
    SCOPED_TRACE(part);
    expect_rejected(p, kAttn + part, "missing");
  }
  // A site in "sites" without any of its tensors.
  Parts p = valid_parts();
  for (const char* part : {".values", ".vectors", ".diagonal"}) p.remove(kMlp + part);
  expect_rejected(p, kMlp + ".diagonal", "missing");
}

TEST(CalibrationFile, RejectsExtraTensors) {
  Parts p = valid_parts();
  p.tensors.push_back(
      io::tensor_from_vector(kAttn + ".mean", Eigen::VectorXd::Zero(6), DType::F32));
  expect_rejected(p, kAttn + ".mean", "not a calibration tensor");
  p = valid_parts();
  p.tensors.push_back(io::tensor_from_vector("model.layers.1.mlp.gate_proj.diagonal",
                                             Eigen::VectorXd::Ones(5), DType::F32));
  expect_rejected(p, "model.layers.1.mlp.gate_proj.diagonal", "is not listed in \"sites\"");
  p = valid_parts();
  p.tensors.push_back(io::tensor_from_vector("nodot", Eigen::VectorXd::Ones(5), DType::F32));
  expect_rejected(p, "nodot", "not a calibration tensor");
}

TEST(CalibrationFile, RejectsAnotherDtype) {
  const InputStats st = valid_stats().sites.at(kAttn);
  Parts p = valid_parts();
  p.tensor(kAttn + ".values") = io::tensor_from_vector(kAttn + ".values", st.values, DType::BF16);
  expect_rejected(p, kAttn + ".values", "dtype is BF16, expected F32");
  p = valid_parts();
  p.tensor(kAttn + ".vectors") = io::tensor_from_matrix(kAttn + ".vectors", st.vectors, DType::F16);
  expect_rejected(p, kAttn + ".vectors", "dtype is F16, expected F32");
  p = valid_parts();
  p.tensor(kAttn + ".diagonal") =
      io::tensor_from_vector(kAttn + ".diagonal", st.diagonal, DType::F64);
  expect_rejected(p, kAttn + ".diagonal", "dtype is F64, expected F32");
}

TEST(CalibrationFile, RejectsWrongShapes) {
  Parts p = valid_parts();
  p.tensor(kAttn + ".values").shape = {3, 1};
  expect_rejected(p, kAttn + ".values", "shape [3, 1] is not 1-D");
  p = valid_parts();
  p.tensor(kAttn + ".diagonal").shape = {2, 3};
  expect_rejected(p, kAttn + ".diagonal", "is not 1-D");
  p = valid_parts();
  p.tensor(kAttn + ".vectors").shape = {18};
  expect_rejected(p, kAttn + ".vectors", "is not 2-D");
  p = valid_parts();
  p.tensor(kAttn + ".vectors").shape = {6, 3};  // transposed
  expect_rejected(p, kAttn + ".vectors", "is not [k, in] = [3, 6]");
  p = valid_parts();  // one eigenvalue fewer than vectors
  p.tensor(kAttn + ".values").shape = {2};
  p.tensor(kAttn + ".values").bytes.resize(8);
  expect_rejected(p, kAttn + ".vectors", "is not [k, in] = [2, 6]");
  // in = 0: nothing to calibrate.
  p = valid_parts();
  p.tensor(kMlp + ".diagonal") =
      io::tensor_from_vector(kMlp + ".diagonal", Eigen::VectorXd(0), DType::F32);
  p.tensor(kMlp + ".vectors") =
      io::tensor_from_matrix(kMlp + ".vectors", Eigen::MatrixXd(0, 0), DType::F32);
  expect_rejected(p, kMlp + ".diagonal", "at least one input");
}

TEST(CalibrationFile, RejectsMoreEigenpairsThanInputs) {
  Parts p = valid_parts();
  const Eigen::Index k = 6;
  p.tensor(kMlp + ".values") =
      io::tensor_from_vector(kMlp + ".values", Eigen::VectorXd::Ones(k), DType::F32);
  p.tensor(kMlp + ".vectors") =
      io::tensor_from_matrix(kMlp + ".vectors", Eigen::MatrixXd::Identity(k, 5), DType::F32);
  expect_rejected(p, kMlp + ".values", "k > in");
}

TEST(CalibrationFile, RejectsNonFiniteValues) {
  const float nan = std::numeric_limits<float>::quiet_NaN(),
              inf = std::numeric_limits<float>::infinity();
  // (part, index in the file, value, where the message says it is)
  const std::vector<std::tuple<std::string, size_t, float, std::string>> cases = {
      {".values", 1, nan, "eigenvalue 1"},  {".values", 0, inf, "eigenvalue 0"},
      {".vectors", 7, nan, "entry [1, 1]"}, {".vectors", 17, -inf, "entry [2, 5]"},
      {".vectors", 2, inf, "entry [0, 2]"}, {".diagonal", 5, inf, "entry 5"}};
  for (const auto& [part, i, x, where] : cases) {
    Parts p = valid_parts();
    p.set(kAttn + part, i, x);
    SCOPED_TRACE(part + " " + std::to_string(i));
    expect_rejected(p, kAttn + part, where + " is not finite");
  }
}

TEST(CalibrationFile, RejectsNegativeEigenvaluesOrDiagonal) {
  Parts p = valid_parts();
  p.set(kAttn + ".values", 2, -0.5f);
  expect_rejected(p, kAttn + ".values", "eigenvalue 2 is negative (-0.5)");
  p = valid_parts();
  p.set(kMlp + ".diagonal", 3, -1e-6f);
  expect_rejected(p, kMlp + ".diagonal", "entry 3 is negative");
  // -0 is not negative.
  p = valid_parts();
  p.set(kMlp + ".diagonal", 3, -0.0f);
  EXPECT_NO_THROW(io::parse_calibration_stats(p.image(), kLabel));
}

TEST(CalibrationFile, RejectsEigenvaluesOutOfOrder) {
  Parts p = valid_parts();
  const float a = p.get(kAttn + ".values", 0), b = p.get(kAttn + ".values", 1);
  p.set(kAttn + ".values", 0, b);
  p.set(kAttn + ".values", 1, a);
  expect_rejected(p, kAttn + ".values", "not in descending order (eigenvalue 1");
  // Equal eigenvalues are in order.
  p = valid_parts();
  p.set(kAttn + ".values", 1, p.get(kAttn + ".values", 0));
  EXPECT_NO_THROW(io::parse_calibration_stats(p.image(), kLabel));
}

TEST(CalibrationFile, RejectsVectorsThatAreNotOrthonormal) {
  const std::string name = kAttn + ".vectors";
  // Row 1 scaled: |v|^2 - 1 about 2 s; within 1e-3 passes, beyond fails.
  auto scaled = [&](float s) {
    Parts p = valid_parts();
    for (size_t c = 0; c < 6; ++c) p.set(name, 6 + c, p.get(name, 6 + c) * s);
    return p;
  };
  EXPECT_NO_THROW(io::parse_calibration_stats(scaled(1.0004f).image(), kLabel));
  expect_rejected(scaled(1.001f), name, "rows are not orthonormal: (V V^T - I)[1, 1]");
  // Row 2 made row 0: unit rows, not orthogonal.
  Parts p = valid_parts();
  for (size_t c = 0; c < 6; ++c) p.set(name, 12 + c, p.get(name, c));
  expect_rejected(p, name, "rows are not orthonormal");
}

}  // namespace
}  // namespace hydraopt
