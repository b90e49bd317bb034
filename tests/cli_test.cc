// The command-line contract: outputs, and one-line errors with non-zero exit.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <sstream>

#include "hydraopt/adapter.h"
#include "hydraopt/dist.h"
#include "test_util.h"

namespace hydraopt {
namespace {

using test::cli;
using test::run;
namespace fs = std::filesystem;

int lines(const std::string& s) { return static_cast<int>(std::count(s.begin(), s.end(), '\n')); }

// OpenBLAS names the kernels it loaded ("Core: NAME") with OPENBLAS_VERBOSE=2.
std::vector<std::string> blas_cores(const std::string& output) {
  std::vector<std::string> cores;
  std::istringstream in(output);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("Core: ", 0) == 0) cores.push_back(line.substr(6));
  }
  return cores;
}

// Where OpenBLAS fell back to its generic kernels on a CPU it does not know,
// the CLI starts again once with the kernels the CPU has (dist::Environment),
// with the same arguments; a core the user chose is kept as it is.
TEST(Cli, RunsTheBlasKernelsTheCpuHasUnlessTheUserChose) {
  const std::string want = dist::blas_core_for_this_cpu();  // this process's view, as the CLI's
  std::string out;
  ASSERT_EQ(run("OPENBLAS_VERBOSE=2 " + cli() + " --version", &out), 0) << out;
  EXPECT_NE(out.find("hydraopt "), std::string::npos) << out;  // the arguments survived
  const auto cores = blas_cores(out);
  if (cores.empty()) {
    EXPECT_EQ(want, "") << "no OpenBLAS with runtime kernel choice, yet a core was chosen";
  } else if (want.empty()) {
    EXPECT_EQ(cores.size(), 1u) << out;
  } else {
    ASSERT_EQ(cores.size(), 2u) << out;
    EXPECT_EQ(cores[0], "Prescott");
    EXPECT_EQ(cores[1], want);
  }
  ASSERT_EQ(run("OPENBLAS_CORETYPE=Prescott OPENBLAS_VERBOSE=2 " + cli() + " --version", &out), 0) << out;
  if (!cores.empty()) EXPECT_EQ(blas_cores(out), std::vector<std::string>{"Prescott"}) << out;
}

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

// The drift options reach the generator: without drift or noise every task
// has the shared initialisation as its A, and one shared A is exact.
TEST(Cli, SynthDriftOptions) {
  test::TempDir d;
  std::string out;
  ASSERT_EQ(run(cli() + " synth " + (d / "s").string() + " --tasks 3 --drift 0 --noise 0", &out), 0) << out;
  ASSERT_EQ(run(cli() + " synth " + (d / "t").string() + " --tasks 3", &out), 0) << out;
  auto hydra_error = [&](const char* set) {
    std::string report;
    const std::string dirs = (d / set / "task00").string() + " " + (d / set / "task01").string() + " " +
                             (d / set / "task02").string();
    EXPECT_EQ(run(cli() + " merge " + dirs + " --method hydra -o " + (d / (std::string(set) + ".safetensors")).string() +
                      " --report " + (d / (std::string(set) + ".json")).string() + " 2>/dev/null"), 0);
    return nlohmann::json::parse(test::read_text(d / (std::string(set) + ".json")))["mean_rel_error"].get<double>();
  };
  EXPECT_LT(hydra_error("s"), 1e-6);
  EXPECT_GT(hydra_error("t"), 0.1);
  EXPECT_NE(run(cli() + " synth " + (d / "u").string() + " --drift -1 2>/dev/null"), 0);
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

// num_attention_heads 0 used to kill `demo` (Model::open) with SIGFPE.
TEST(Cli, ZeroAttentionHeadsIsAOneLineError) {
  test::TempDir d;
  const fs::path model = fs::path(HYDRAOPT_SOURCE_DIR) / "assets" / "model";
  fs::create_directories(d / "assets" / "model");
  fs::copy(model / "model.safetensors", d / "assets" / "model" / "model.safetensors");
  std::string cfg = test::read_text(model / "config.json");
  const std::string heads = "\"num_attention_heads\": 8";
  ASSERT_NE(cfg.find(heads), std::string::npos);
  cfg.replace(cfg.find(heads), heads.size(), "\"num_attention_heads\": 0");
  test::write_text(d / "assets" / "model" / "config.json", cfg);
  const std::string file = (d / "assets" / "model" / "config.json").string();
  for (const std::string args :
       {" demo --assets " + (d / "assets").string() + " --out " + (d / "demo").string(),
        " export-model " + (d / "assets" / "model").string() + " -o " + (d / "m.gguf").string()}) {
    std::string out;
    EXPECT_EQ(run(cli() + args, &out), 1) << args << ": " << out;
    EXPECT_EQ(lines(out), 1) << args << ": " << out;
    EXPECT_EQ(out.rfind("hydraopt: error: " + file + ": num_attention_heads must be", 0), 0u) << out;
  }
  EXPECT_FALSE(fs::exists(d / "m.gguf"));
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

namespace hydraopt {
namespace {

// A tiny synthetic set for the merge/sweep/export commands.
std::string tiny_set(const test::TempDir& d, int tasks = 4) {
  EXPECT_EQ(run(cli() + " synth " + (d / "s").string() + " --tasks " + std::to_string(tasks)), 0);
  std::string s;
  for (int i = 0; i < tasks; ++i) s += " " + (d / "s" / ("task0" + std::to_string(i))).string();
  return s;
}

bool no_files_named(const fs::path& dir, const std::string& needle) {
  for (auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.path().filename().string().find(needle) != std::string::npos) return false;
  }
  return true;
}

TEST(CliMerge, MergeReportAndExport) {
  test::TempDir d;
  const std::string in = tiny_set(d);
  std::string out;
  ASSERT_EQ(run(cli() + " merge" + in + " --budget 0.5 -o " + (d / "b.safetensors").string() + " --report " +
                    (d / "r.json").string(), &out), 0) << out;
  EXPECT_NE(out.find("mean rel. error"), std::string::npos) << out;
  auto r = nlohmann::json::parse(test::read_text(d / "r.json"));
  for (const char* k : {"method", "budget", "storage", "mean_rel_error", "tasks", "seconds"}) EXPECT_TRUE(r.contains(k)) << k;
  for (const char* k : {"params", "original_params", "fraction", "bytes"}) EXPECT_TRUE(r["storage"].contains(k)) << k;
  EXPECT_LE(r["storage"]["fraction"].get<double>(), 0.5);
  EXPECT_EQ(r["tasks"].size(), 4u);
  ASSERT_EQ(run(cli() + " export " + (d / "b.safetensors").string() + " --task task02 -o " + (d / "e").string(), &out), 0) << out;
  EXPECT_TRUE(fs::exists(d / "e" / "adapter_config.json"));
  ASSERT_EQ(run(cli() + " inspect " + (d / "e").string(), &out), 0) << out;
  // Exporting onto a non-empty directory is refused.
  EXPECT_EQ(run(cli() + " export " + (d / "b.safetensors").string() + " --all -o " + (d / "e").string(), &out), 1);
  EXPECT_NE(out.find("not an empty directory"), std::string::npos) << out;
  ASSERT_EQ(run(cli() + " export " + (d / "b.safetensors").string() + " --all -o " + (d / "all").string(), &out), 0) << out;
  EXPECT_TRUE(fs::exists(d / "all" / "task03" / "adapter_model.safetensors"));
  EXPECT_EQ(run(cli() + " export " + (d / "b.safetensors").string() + " --task nope -o " + (d / "x").string(), &out), 1);
  EXPECT_NE(out.find("no task 'nope'"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(d / "x"));
}

TEST(CliMerge, BadInputsLeaveNoOutput) {
  test::TempDir d;
  const std::string in = tiny_set(d);
  const std::string o = " -o " + (d / "out.safetensors").string();
  struct Case {
    std::string args, message;
  } cases[] = {
      {in + " --budget 0" + o, "(0, 1]"},
      {in + " --budget 1.5" + o, "(0, 1]"},
      {in + " --budget 0.001" + o, "smallest achievable storage"},
      {in + " --method nope" + o, "unknown method 'nope'"},
      {in + " --method ta --density 0.5" + o, "has no parameter 'density'"},
      {in + " -o /nonexistent/out.safetensors", "output directory does not exist"},
      {in + " -o " + d.path().string(), "is a directory"},
  };
  for (auto& c : cases) {
    std::string out;
    EXPECT_EQ(run(cli() + " merge" + c.args, &out), 1) << c.args;
    EXPECT_EQ(lines(out), 1) << out;
    EXPECT_NE(out.find(c.message), std::string::npos) << c.args << " -> " << out;
    EXPECT_FALSE(fs::exists(d / "out.safetensors"));
    EXPECT_TRUE(no_files_named(d.path(), ".tmp.")) << c.args;
  }
  // Mismatched adapters: another base model's module shapes.
  test::TempDir other;
  ASSERT_EQ(run(cli() + " synth " + (other / "s").string() + " --preset tiny --tasks 1 --seed 3"), 0);
  std::string cfg = test::read_text(other / "s/task00/adapter_config.json");
  cfg.replace(cfg.find("hydraopt-synth/tiny"), 19, "someone/else-model");
  test::write_text(other / "s/task00/adapter_config.json", cfg);
  std::string out;
  EXPECT_EQ(run(cli() + " merge" + in + " other=" + (other / "s/task00").string() + " -o x.safetensors", &out), 1);
  EXPECT_NE(out.find("base model 'someone/else-model' differs"), std::string::npos) << out;
}

TEST(CliMerge, SweepWritesJsonTableAndPlot) {
  test::TempDir d;
  const std::string in = tiny_set(d);
  std::string out;
  ASSERT_EQ(run(cli() + " sweep" + in + " --methods hydraopt,ta,jd-diag --budgets 0.25,0.5,1 --out " +
                    (d / "sw").string(), &out), 0) << out;
  auto j = nlohmann::json::parse(test::read_text(d / "sw" / "sweep.json"));
  ASSERT_TRUE(j.is_array());
  EXPECT_EQ(j.size(), 3u + 1u + 3u);
  EXPECT_NE(test::read_text(d / "sw" / "sweep.md").find("hydraopt"), std::string::npos);
  EXPECT_NE(test::read_text(d / "sw" / "sweep.svg").find("<svg"), std::string::npos);
  EXPECT_NE(out.find("| hydraopt"), std::string::npos) << out;
}

TEST(CliMerge, MethodsListsTheRegistry) {
  std::string out;
  ASSERT_EQ(run(cli() + " methods", &out), 0);
  for (const char* m : {"hydraopt", "hydra", "hydra-avg", "jd-full", "jd-diag", "linear", "ta", "ties", "dare-linear",
                        "dare-ties", "magnitude-prune", "knots-ta", "knots-ties", "tsv", "regmean"}) {
    EXPECT_NE(out.find(std::string(m) + " "), std::string::npos) << m;
  }
}


// calibrate then merge --calibration; damaged statistics: one line, exit 1,
// no bundle.
TEST(Cli, CalibrationStatisticsAndTheirRejection) {
  test::TempDir d;
  const std::string assets = std::string(HYDRAOPT_SOURCE_DIR) + "/assets";
  const std::string adapters = assets + "/adapters/spell-de " + assets + "/adapters/rev-de";
  std::string out;
  ASSERT_EQ(run(cli() + " calibrate " + assets + "/model " + adapters + " --data " + assets + "/tasks -o " +
                    (d / "stats").string() + " --examples 4",
                &out),
            0)
      << out;
  EXPECT_TRUE(fs::exists(d / "stats" / "spell-de.safetensors"));
  ASSERT_EQ(run(cli() + " merge " + adapters + " --method hydra --calibration " + (d / "stats").string() + " -o " +
                    (d / "b.safetensors").string(),
                &out),
            0)
      << out;
  EXPECT_NE(out.find("Frobenius"), std::string::npos) << out;
  auto s = test::read_text(d / "stats" / "rev-de.safetensors");
  fs::resize_file(d / "stats" / "rev-de.safetensors", s.size() - 7);
  int rc = run(cli() + " merge " + adapters + " --method hydra --calibration " + (d / "stats").string() + " -o " +
                   (d / "c.safetensors").string(),
               &out);
  EXPECT_EQ(rc, 1);
  EXPECT_EQ(lines(out), 1) << out;
  EXPECT_NE(out.find("rev-de.safetensors"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(d / "c.safetensors"));
  // A task without calibration examples: calibrate writes nothing.
  rc = run(cli() + " calibrate " + assets + "/model " + adapters + " --data " + d.path().string() + " -o " +
               (d / "none").string(),
           &out);
  EXPECT_EQ(rc, 1);
  EXPECT_EQ(lines(out), 1) << out;
  EXPECT_NE(out.find("calib.jsonl"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(d / "none" / "spell-de.safetensors"));
}

// Adapters of q and v only: the statistics list only the adapted readers
// of the attention's input, and merge accepts them.
TEST(Cli, CalibrationOfPartlyAdaptedSites) {
  test::TempDir d;
  const std::string assets = std::string(HYDRAOPT_SOURCE_DIR) + "/assets";
  std::string config = test::read_text(assets + "/adapters/spell-de/adapter_config.json");
  for (const char* task : {"spell-de", "rev-de"}) {
    const Adapter a = Adapter::open(assets + "/adapters/" + task);
    std::vector<test::TestModule> kept;
    for (const auto& m : a.modules()) {
      if (m.name.find("q_proj") == std::string::npos && m.name.find("v_proj") == std::string::npos) continue;
      const ModuleLora l = a.load(m.name);
      kept.push_back({m.name, l.A, l.B});
    }
    test::write_adapter(d / "qv" / task, config, kept);
  }
  const std::string adapters = (d / "qv" / "spell-de").string() + " " + (d / "qv" / "rev-de").string();
  std::string out;
  ASSERT_EQ(run(cli() + " calibrate " + assets + "/model " + adapters + " --data " + assets + "/tasks -o " +
                    (d / "stats").string() + " --examples 4",
                &out),
            0)
      << out;
  EXPECT_EQ(run(cli() + " merge " + adapters + " --method hydra --calibration " + (d / "stats").string() + " -o " +
                    (d / "b.safetensors").string(),
                &out),
            0)
      << out;
}

}  // namespace
}  // namespace hydraopt
