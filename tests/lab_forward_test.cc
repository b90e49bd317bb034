// The Eigen forward pass (src/runtime/llama.cc) against the libtorch model of
// the lab (`hydraopt-lab logits`, lab/model.cc) on the shipped benchmark
// model and adapters in assets/: every logit of every position, for the
// base model and for adapters of different applications.
//
// Everything below is compiled only when HYDRAOPT_LAB_BIN is defined, that
// is when the lab is built with the tests (-DHYDRAOPT_BUILD_LAB=ON; see
// lab/CMakeLists.txt). Without the lab this file compiles to nothing.
#ifdef HYDRAOPT_LAB_BIN

#include <gtest/gtest.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "hydraopt/adapter.h"
#include "hydraopt/model.h"
#include "test_util.h"

namespace hydraopt {
namespace {

namespace fs = std::filesystem;

const fs::path kAssets = fs::path(HYDRAOPT_SOURCE_DIR) / "assets";

// Both sides compute in float32 (the lab with libtorch/OpenBLAS kernels, we
// with Eigen's), so they differ only by rounding and summation order. The
// check: max |eigen - lab| over all positions and vocabulary entries must be
// at most kRelTol times the logit scale, max |lab logit| of the case.
// Measured on the shipped model (2-core Xeon family 6 model 207, AVX-512,
// -march=native Release build, libtorch 1.13.1, lab --threads 1):
//
//   case                      tokens  max|diff|  scale  relative
//   base, "hello"                  6   1.43e-5    15.0   9.6e-7
//   base, "verschimmelt"          13   1.62e-5    15.4   1.1e-6
//   base, multi-byte UTF-8        26   2.00e-5    18.2   1.1e-6
//   base, 63-byte text            64   2.38e-5    18.4   1.3e-6
//   spell-de  (13 / 64 tokens)         1.43e-5 / 1.91e-5  9.7e-7 / 1.0e-6
//   rev-sv    (6 / 64)                 1.24e-5 / 2.29e-5  8.4e-7 / 1.2e-6
//   cap-pl    (26 / 64)                1.72e-5 / 1.91e-5  9.7e-7 / 1.0e-6
//   accent-fr (12 / 64)                1.34e-5 / 2.29e-5  8.3e-7 / 1.2e-6
//   hyph-pl   (13 / 64)                1.72e-5 / 2.00e-5  1.1e-6 / 1.2e-6
//
// Worst: 2.4e-5 absolute, 1.3e-6 relative. kRelTol = 1e-5 (about 1.8e-4 at
// these scales) leaves a factor ~8 for other CPUs' kernels and summation
// orders; an adapter moves the logits by 4.9-9.2 (0.26-0.50 of the scale),
// some 25,000 times the tolerance.
constexpr double kRelTol = 1e-5;

// The texts. The lab tokenises `--text` as BOS + its UTF-8 bytes (no SEP,
// which Model::encode_prompt appends), at most max_position_embeddings (64)
// tokens, so the longest text has 63 bytes.
std::string long_text() {
  // "... die Größe am Ort"; the literal is split so that \x9f does not
  // swallow the hex digit 'e' (likewise \x64 = 'd' after \xba below).
  return "the quick brown fox jumps over the lazy dog; die Gr\xc3\xb6\xc3\x9f"
         "e am Ort";  // 63 bytes -> 64 tokens
}

const std::vector<std::string>& texts() {
  static const std::vector<std::string> t = {
      "hello",
      "verschimmelt",
      "d\xc3\xa9limitions u\xc5\xba\x64zienic\xc4\x99",  // "délimitions uździenicę": multi-byte UTF-8
      long_text(),
  };
  return t;
}

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

struct LabResult {
  std::vector<int> tokens;
  Eigen::MatrixXf logits;  // T x V
};

// Runs `hydraopt-lab logits --all-positions` (adapter "" = the base model).
LabResult run_lab(const std::string& adapter, const std::string& text) {
  test::TempDir tmp;
  std::string cmd = quote(HYDRAOPT_LAB_BIN) + " --threads 1 logits --model " + quote((kAssets / "model").string()) +
                    " --text " + quote(text) + " --all-positions";
  if (!adapter.empty()) cmd += " --adapter " + quote((kAssets / "adapters" / adapter).string());
  cmd += " 2>" + quote((tmp / "stderr").string());
  FILE* p = ::popen(cmd.c_str(), "r");
  EXPECT_NE(p, nullptr) << cmd;
  if (!p) return {};
  std::string out;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int status = ::pclose(p);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << cmd << "\nstderr:\n" << test::read_text(tmp / "stderr");
  nlohmann::json j = nlohmann::json::parse(out);
  EXPECT_EQ(j["text"].get<std::string>(), text);
  if (adapter.empty()) {
    EXPECT_TRUE(j["adapter"].is_null());
  } else {
    EXPECT_EQ(j["adapter"].get<std::string>(), (kAssets / "adapters" / adapter).string());
  }
  LabResult r;
  r.tokens = j["tokens"].get<std::vector<int>>();
  const auto& l = j["logits"];
  EXPECT_EQ(l.size(), r.tokens.size());
  r.logits.resize(static_cast<Eigen::Index>(l.size()), static_cast<Eigen::Index>(l.at(0).size()));
  for (size_t i = 0; i < l.size(); ++i) {
    EXPECT_EQ(l[i].size(), static_cast<size_t>(r.logits.cols()));
    // The lab prints each float32 logit as the double of the same value.
    for (size_t k = 0; k < l[i].size(); ++k) r.logits(i, k) = l[i][k].get<float>();
  }
  return r;
}

// One (adapter, text) pair, run once per test process.
const LabResult& lab(const std::string& adapter, const std::string& text) {
  static std::map<std::pair<std::string, std::string>, LabResult> cache;
  auto key = std::make_pair(adapter, text);
  auto it = cache.find(key);
  if (it == cache.end()) it = cache.emplace(key, run_lab(adapter, text)).first;
  return it->second;
}

const Model& model() {
  static Model m = Model::open(kAssets / "model");
  return m;
}

const Deltas& deltas(const std::string& adapter) {
  static std::map<std::string, Deltas> cache;
  auto it = cache.find(adapter);
  if (it == cache.end())
    it = cache.emplace(adapter, deltas_from_adapter(Adapter::open((kAssets / "adapters" / adapter).string()))).first;
  return it->second;
}

// Our tokens for the lab's `--text`: Model::encode_prompt without its SEP.
std::vector<int> our_tokens(const std::string& text) {
  std::vector<int> t = model().encode_prompt(text);
  EXPECT_EQ(t.back(), model().config().sep);
  t.pop_back();
  return t;
}

struct Diff {
  double max_abs = 0, scale = 0;
  double rel() const { return max_abs / scale; }
};

Diff diff(const Eigen::MatrixXf& ours, const Eigen::MatrixXf& lab) {
  Diff d;
  d.max_abs = (ours.cast<double>() - lab.cast<double>()).cwiseAbs().maxCoeff();
  d.scale = lab.cast<double>().cwiseAbs().maxCoeff();
  return d;
}

bool within_tolerance(const Eigen::MatrixXf& ours, const Eigen::MatrixXf& lab) {
  return ours.rows() == lab.rows() && ours.cols() == lab.cols() && diff(ours, lab).rel() <= kRelTol;
}

std::string printable(const std::string& text) { return text.size() > 24 ? text.substr(0, 21) + "..." : text; }

void check(const std::string& adapter, const std::string& text) {
  SCOPED_TRACE("adapter " + (adapter.empty() ? std::string("(base)") : adapter) + ", text \"" + text + "\"");
  const LabResult& want = lab(adapter, text);
  std::vector<int> tokens = our_tokens(text);
  ASSERT_EQ(tokens, want.tokens);
  ASSERT_LE(static_cast<int64_t>(tokens.size()), model().config().max_positions);
  Eigen::MatrixXf got = adapter.empty() ? model().forward(tokens) : model().forward(tokens, &deltas(adapter));
  ASSERT_EQ(got.rows(), want.logits.rows());
  ASSERT_EQ(got.cols(), want.logits.cols());
  ASSERT_EQ(got.cols(), model().config().vocab);
  Diff d = diff(got, want.logits);
  std::printf("[lab-forward] %-10s T=%2zu %-26s max|diff| %.3g  scale %.3g  rel %.3g\n",
              adapter.empty() ? "base" : adapter.c_str(), tokens.size(), ("\"" + printable(text) + "\"").c_str(),
              d.max_abs, d.scale, d.rel());
  EXPECT_LE(d.rel(), kRelTol) << "max |eigen - lab| = " << d.max_abs << ", logit scale " << d.scale;
  // Argmax per position agrees wherever the lab's top two are clearly apart.
  for (Eigen::Index i = 0; i < got.rows(); ++i) {
    Eigen::Index a, b;
    got.row(i).maxCoeff(&a);
    want.logits.row(i).maxCoeff(&b);
    Eigen::VectorXf r = want.logits.row(i).transpose();
    std::sort(r.data(), r.data() + r.size(), std::greater<float>());
    if (r(0) - r(1) > 1e-3f) EXPECT_EQ(a, b) << "position " << i;
  }
}

TEST(LabForward, LongTextFillsTheContext) {
  EXPECT_EQ(long_text().size() + 1, static_cast<size_t>(model().config().max_positions));
  EXPECT_EQ(model().config().max_positions, 64);
}

TEST(LabForward, BaseModelMatchesLibtorch) {
  for (const auto& t : texts()) check("", t);
}

// Adapters of different applications (and languages). Each on a short task
// prompt and on the context-filling text.
using AdapterCase = std::pair<std::string, std::string>;  // adapter, short text
class LabForwardAdapter : public ::testing::TestWithParam<AdapterCase> {};

TEST_P(LabForwardAdapter, MatchesLibtorch) {
  check(GetParam().first, GetParam().second);
  check(GetParam().first, long_text());
}

std::string adapter_name(const ::testing::TestParamInfo<AdapterCase>& info) {
  std::string s = info.param.first;
  for (char& c : s)
    if (c == '-') c = '_';
  return s;
}

INSTANTIATE_TEST_SUITE_P(Lab, LabForwardAdapter,
                         ::testing::Values(AdapterCase{"spell-de", "verschimmelt"},
                                           AdapterCase{"rev-sv", "hello"},
                                           AdapterCase{"cap-pl", "d\xc3\xa9limitions u\xc5\xba\x64zienic\xc4\x99"},
                                           AdapterCase{"accent-fr", "delimitions"},
                                           AdapterCase{"hyph-pl", "verschimmelt"}),
                         adapter_name);

// The comparison is sharp: the adapters move the logits far more than the
// tolerance (a lab or Eigen side that ignored the adapter, or the wrong
// adapter, would fail the tests above), and a single logit perturbed by ten
// tolerances is caught.
TEST(LabForward, PerturbedLogitsAreCaught) {
  const std::string text = long_text();
  const LabResult& base = lab("", text);
  Eigen::MatrixXf ours_base = model().forward(our_tokens(text));
  ASSERT_TRUE(within_tolerance(ours_base, base.logits));
  for (const char* a : {"spell-de", "rev-sv", "cap-pl", "accent-fr", "hyph-pl"}) {
    SCOPED_TRACE(a);
    const LabResult& with = lab(a, text);
    Diff d = diff(with.logits, base.logits);
    std::printf("[lab-forward] adapter %-10s changes the lab's logits by up to %.3g (%.3g of the scale)\n", a,
                d.max_abs, d.rel());
    EXPECT_GT(d.rel(), 1000 * kRelTol) << "the lab's adapter barely changes the logits";
    EXPECT_FALSE(within_tolerance(ours_base, with.logits)) << "our base model passes for the adapter";
    Eigen::MatrixXf ours_with = model().forward(our_tokens(text), &deltas(a));
    EXPECT_FALSE(within_tolerance(ours_with, base.logits)) << "our adapter passes for the base model";
  }
  // Two different adapters are told apart too.
  EXPECT_FALSE(within_tolerance(model().forward(our_tokens(text), &deltas("spell-de")), lab("rev-sv", text).logits));
  // One logit off by ten tolerances, anywhere, fails the check.
  double scale = diff(ours_base, base.logits).scale;
  for (auto [i, k] : {std::pair<Eigen::Index, Eigen::Index>{0, 0}, {31, 101}, {63, 259}}) {
    Eigen::MatrixXf bad = base.logits;
    bad(i, k) += static_cast<float>(10 * kRelTol * scale);
    EXPECT_FALSE(within_tolerance(ours_base, bad)) << i << "," << k;
  }
}

}  // namespace
}  // namespace hydraopt

#endif  // HYDRAOPT_LAB_BIN
