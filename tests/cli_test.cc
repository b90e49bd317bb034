// The command-line contract: outputs, and one-line errors with non-zero exit.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "test_util.h"

namespace hydraopt {
namespace {

using test::cli;
using test::run;
namespace fs = std::filesystem;

int lines(const std::string& s) { return static_cast<int>(std::count(s.begin(), s.end(), '\n')); }

TEST(Cli, SynthThenInspectJson) {
  test::TempDir d;
  std::string out;
  ASSERT_EQ(run(cli() + " synth " + (d / "s").string() + " --preset tiny --tasks 3", &out), 0) << out;
  ASSERT_EQ(run(cli() + " inspect --json " + (d / "s/task00").string() + " " + (d / "s/task01").string() + " " +
                    (d / "s/task02").string() + " 2>/dev/null", &out), 0) << out;
  auto j = nlohmann::json::parse(out);
  ASSERT_EQ(j["tasks"].size(), 3u);
  EXPECT_EQ(j["tasks"][0]["name"], "task00");
  EXPECT_EQ(j["tasks"][0]["rank"], 4);
  EXPECT_EQ(j["tasks"][0]["params"], 2 * 4 * ((64 + 64) * 2 + (64 + 32) * 2));
  ASSERT_EQ(j["modules"].size(), 8u);
  for (auto& m : j["modules"]) {
    EXPECT_GT(m["similarity_A"].get<double>(), 0.5);  // one shared initialisation
    EXPECT_LE(m["similarity_A"].get<double>(), 1.0);
    EXPECT_GE(m["similarity_B"].get<double>(), 0.0);
  }
}

TEST(Cli, SynthIsDeterministic) {
  test::TempDir d;
  ASSERT_EQ(run(cli() + " synth " + (d / "a").string() + " --tasks 2 --seed 5"), 0);
  ASSERT_EQ(run(cli() + " synth " + (d / "b").string() + " --tasks 2 --seed 5"), 0);
  ASSERT_EQ(run(cli() + " synth " + (d / "c").string() + " --tasks 2 --seed 6"), 0);
  auto w = [&](const char* s) { return test::read_text(d / s / "task01/adapter_model.safetensors"); };
  EXPECT_EQ(w("a"), w("b"));
  EXPECT_NE(w("a"), w("c"));
}

struct BadInput {
  const char* name;
  std::function<void(const fs::path&)> corrupt;
  const char* message;
};

TEST(Cli, BadInputsGiveOneLineErrorsAndNonZeroExit) {
  const std::vector<BadInput> cases = {
      {"truncated weights",
       [](const fs::path& a) {
         auto w = a / "adapter_model.safetensors";
         fs::resize_file(w, fs::file_size(w) - 10);
       },
       "truncated"},
      {"corrupt header",
       [](const fs::path& a) {
         auto w = a / "adapter_model.safetensors";
         auto s = test::read_text(w);
         s[8] = '#';  // the header's opening brace
         test::write_text(w, s);
       },
       "not valid JSON"},
      {"huge header length",
       [](const fs::path& a) {
         auto w = a / "adapter_model.safetensors";
         auto s = test::read_text(w);
         s[5] = '\x7f';
         test::write_text(w, s);
       },
       "100 MB"},
      {"malformed config", [](const fs::path& a) { test::write_text(a / "adapter_config.json", "{\"r\": 4,"); },
       "adapter_config.json: not valid JSON"},
      {"empty weights", [](const fs::path& a) { test::write_text(a / "adapter_model.safetensors", ""); },
       "shorter than"},
  };
  for (auto& c : cases) {
    test::TempDir d;
    ASSERT_EQ(run(cli() + " synth " + d.path().string() + " --tasks 2"), 0);
    c.corrupt(d / "task01");
    std::string out;
    int rc = run(cli() + " inspect " + (d / "task00").string() + " " + (d / "task01").string(), &out);
    EXPECT_EQ(rc, 1) << c.name;
    EXPECT_EQ(lines(out), 1) << c.name << ": " << out;
    EXPECT_EQ(out.rfind("hydraopt: error: ", 0), 0u) << out;
    EXPECT_NE(out.find(c.message), std::string::npos) << c.name << ": " << out;
    EXPECT_NE(out.find("task01"), std::string::npos) << c.name << ": " << out;
  }
}

TEST(Cli, UsageErrorsExitNonZero) {
  EXPECT_NE(run(cli() + " inspect"), 0);
  EXPECT_NE(run(cli() + " frobnicate"), 0);
  EXPECT_NE(run(cli() + " synth /tmp/x --preset huge"), 0);
  std::string out;
  EXPECT_EQ(run(cli() + " --version", &out), 0);
  EXPECT_NE(out.find("hydraopt "), std::string::npos);
}

}  // namespace
}  // namespace hydraopt
