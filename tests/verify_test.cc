// hydraopt verify: stored checksums, source checksums and recomputed errors.
#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "hydraopt/adapter.h"
#include "hydraopt/bundle.h"
#include "hydraopt/error.h"
#include "hydraopt/merge.h"
#include "hydraopt/synth.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace hydraopt {
namespace {

namespace fs = std::filesystem;

struct Fixture {
  test::TempDir d;
  std::vector<std::string> specs;
  MergeReport report;
  fs::path bundle;
  explicit Fixture(const std::string& method = "hydraopt") {
    SynthOptions o;
    o.tasks = 4;
    for (auto& p : synth_write(d / "s", o)) specs.push_back(p.string());
    MergeOptions mo;
    mo.method = method;
    mo.budget = 0.5;
    bundle = d / "b.safetensors";
    report = merge(AdapterSet::open(specs), mo, bundle);
  }
};

TEST(Verify, AFreshBundleVerifiesAndItsErrorsAreRecomputed) {
  for (const char* method : {"hydraopt", "ta"}) {
    Fixture f(method);
    auto v = verify_bundle(f.bundle, {});
    EXPECT_TRUE(v.problems.empty()) << v.problems[0];
    EXPECT_GT(v.modules, 0u);
    EXPECT_EQ(v.modules_checksummed, v.modules);
    EXPECT_FALSE(v.sources_checked);
    std::vector<std::string> shuffled = {f.specs[2], f.specs[0], f.specs[3], f.specs[1]};
    v = verify_bundle(f.bundle, shuffled);
    EXPECT_TRUE(v.problems.empty()) << v.problems[0];
    ASSERT_EQ(v.tasks.size(), f.report.tasks.size());
    for (size_t i = 0; i < v.tasks.size(); ++i) {
      EXPECT_EQ(v.tasks[i].name, f.report.tasks[i].name);
      EXPECT_NEAR(v.tasks[i].rel_error, f.report.tasks[i].rel_error,
                  1e-9 * (1 + f.report.tasks[i].rel_error))
          << method;
    }
    EXPECT_NEAR(v.mean_rel_error, f.report.mean_rel_error, 1e-9) << method;
    EXPECT_GT(v.mean_rel_error, 0.01) << method;  // a lossy budget: the check is not vacuous
  }
}

TEST(Verify, AFlippedBitInStoredTensorsIsFound) {
  Fixture f;
  std::string bytes = test::read_text(f.bundle);
  auto st = io::SafetensorsFile::open(f.bundle);
  const auto& t = st.tensors().front();
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  bytes[8 + n + t.begin] ^= 1;  // lowest mantissa bit of the first value: still finite
  test::write_text(f.bundle, bytes);
  auto v = verify_bundle(f.bundle, {});
  ASSERT_EQ(v.problems.size(), 1u);
  const std::string module = t.name.substr(0, t.name.rfind('.', t.name.rfind('.') - 1));
  EXPECT_NE(v.problems[0].find("module '" + module + "': tensor bytes do not match"),
            std::string::npos)
      << v.problems[0];
  std::string out;
  EXPECT_EQ(test::run(test::cli() + " verify " + f.bundle.string(), &out), 1);
  EXPECT_NE(out.find("hydraopt: error: "), std::string::npos) << out;
}

TEST(Verify, AChangedSourceAdapterIsFound) {
  Fixture f;
  const fs::path w = fs::path(f.specs[1]) / "adapter_model.safetensors";
  auto st = io::SafetensorsFile::open(w);
  std::vector<io::TensorData> ts;
  for (auto& t : st.tensors()) {
    Eigen::MatrixXd m = st.matrix(t);
    m(0, 0) += 1;
    ts.push_back(io::tensor_from_matrix(t.name, m, t.dtype));
  }
  io::safetensors_write(w, std::move(ts));
  auto v = verify_bundle(f.bundle, f.specs);
  ASSERT_EQ(v.problems.size(), 1u);
  EXPECT_NE(v.problems[0].find("differs from the adapter merged as task 'task01'"),
            std::string::npos)
      << v.problems[0];
  EXPECT_THROW(verify_bundle(f.bundle, {f.specs[0], f.specs[1]}), Error);  // not the bundle's tasks
}

TEST(Verify, CliPrintsJson) {
  Fixture f;
  std::string out;
  ASSERT_EQ(test::run(test::cli() + " verify --json " + f.bundle.string() + " " + f.specs[0] + " " +
                          f.specs[1] + " " + f.specs[2] + " " + f.specs[3] + " 2>/dev/null",
                      &out),
            0)
      << out;
  auto j = nlohmann::json::parse(out);
  EXPECT_TRUE(j["ok"].get<bool>());
  EXPECT_NEAR(j["mean_rel_error"].get<double>(), f.report.mean_rel_error, 1e-9);
  EXPECT_EQ(j["tasks"].size(), 4u);
}

}  // namespace
}  // namespace hydraopt
