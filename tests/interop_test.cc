// Interop with an independent writer: tests/python/write_peft.py produces
// PEFT adapter directories by hand (its own safetensors encoder, bf16/f16
// rounding and rank_pattern / alpha_pattern matching, numpy for the
// subspace similarities) together with expected.json. Here we read those
// adapters with the library and with `hydraopt inspect --json` and compare.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "hydraopt/adapter.h"
#include "hydraopt/inspect.h"
#include "test_util.h"

namespace hydraopt {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kPython = "/usr/bin/python3";
constexpr double kRelTol = 1e-9;
// Similarities are in [0, 1]; below this an absolute difference is enough.
constexpr double kAbsTol = 1e-12;

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) {
    if (c == '\'') q += "'\\''"; else q += c;
  }
  return q + "'";
}

struct Run {
  int status = -1;  ///< exit code, or -1 if it did not exit normally
  std::string out;
};

// Runs `cmd` through the shell, capturing stdout.
Run run(const std::string& cmd) {
  Run r;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 65536> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  int st = ::pclose(p);
  r.status = st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

// Fails the current test unless /usr/bin/python3 can import numpy.
::testing::AssertionResult check_python_numpy() {
  if (!fs::exists(kPython)) {
    return ::testing::AssertionFailure() << kPython << " does not exist; the interop tests need it (with numpy)";
  }
  int st = std::system((std::string(kPython) + " -c 'import numpy' >/dev/null 2>&1").c_str());
  if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    return ::testing::AssertionFailure()
           << kPython << " cannot import numpy; install it (apt install python3-numpy): "
           << "the interop tests need numpy to write adapters and compute expected values";
  }
  return ::testing::AssertionSuccess();
}

// Checked once per process: importing numpy takes a good part of a second.
::testing::AssertionResult python_has_numpy() {
  static const ::testing::AssertionResult result = check_python_numpy();
  return result;
}

// Directories written by the script, removed at exit.
struct CaseDirs {
  std::map<std::string, fs::path> dirs;
  ~CaseDirs() {
    for (auto& [c, d] : dirs) {
      std::error_code ec;
      fs::remove_all(d, ec);
    }
  }
};

struct Case {
  fs::path dir;
  json expected;
  std::vector<std::string> specs;  ///< adapter directories, in expected.json's task order
};

// Writes case `name` once per process; fails the test if that is impossible.
// Use as: Case c; ASSERT_TRUE(make_case("basic", c));
::testing::AssertionResult make_case(const std::string& name, Case& c) {
  static CaseDirs written;
  if (auto ok = python_has_numpy(); !ok) return ok;
  auto it = written.dirs.find(name);
  if (it == written.dirs.end()) {
    std::string templ = (fs::temp_directory_path() / ("hydraopt-interop-" + name + "-XXXXXX")).string();
    if (!::mkdtemp(templ.data())) return ::testing::AssertionFailure() << "mkdtemp failed for " << templ;
    fs::path dir = templ;
    written.dirs[name] = dir;
    const fs::path script = fs::path(HYDRAOPT_SOURCE_DIR) / "tests" / "python" / "write_peft.py";
    const fs::path log = dir / "write_peft.log";
    std::string cmd = std::string(kPython) + " " + quote(script.string()) + " " + quote((dir / "out").string()) +
                      " --case " + name + " >" + quote(log.string()) + " 2>&1";
    int st = std::system(cmd.c_str());
    if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      return ::testing::AssertionFailure() << "write_peft.py --case " << name << " failed (status " << st
                                           << "):\n" << slurp(log);
    }
    it = written.dirs.find(name);
  }
  c.dir = it->second / "out";
  try {
    c.expected = json::parse(slurp(c.dir / "expected.json"));
  } catch (const json::exception& e) {
    return ::testing::AssertionFailure() << "cannot parse " << (c.dir / "expected.json") << ": " << e.what();
  }
  c.specs.clear();
  for (auto& t : c.expected["tasks"]) c.specs.push_back((c.dir / t["dir"].get<std::string>()).string());
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult near_rel(double actual, double expected, double rel = kRelTol, double abs = kAbsTol) {
  if (std::isnan(expected) && std::isnan(actual)) return ::testing::AssertionSuccess();
  double tol = std::max(abs, rel * std::abs(expected));
  if (std::abs(actual - expected) <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "actual " << actual << " vs expected " << expected << " (diff "
                                       << actual - expected << ", tolerance " << tol << ")";
}

double num_or_nan(const json& v) { return v.is_null() ? std::nan("") : v.get<double>(); }

Eigen::MatrixXd matrix_of(const json& rows) {
  const Eigen::Index r = static_cast<Eigen::Index>(rows.size());
  const Eigen::Index c = r ? static_cast<Eigen::Index>(rows[0].size()) : 0;
  Eigen::MatrixXd m(r, c);
  for (Eigen::Index i = 0; i < r; ++i) {
    for (Eigen::Index j = 0; j < c; ++j) m(i, j) = rows[i][j].get<double>();
  }
  return m;
}

// The stored values must come back exactly: every dtype widens to double
// without rounding.
::testing::AssertionResult same_matrix(const Eigen::MatrixXd& actual, const Eigen::MatrixXd& expected) {
  if (actual.rows() != expected.rows() || actual.cols() != expected.cols()) {
    return ::testing::AssertionFailure() << "shape " << actual.rows() << "x" << actual.cols() << " vs expected "
                                         << expected.rows() << "x" << expected.cols();
  }
  for (Eigen::Index i = 0; i < actual.rows(); ++i) {
    for (Eigen::Index j = 0; j < actual.cols(); ++j) {
      if (actual(i, j) != expected(i, j)) {
        return ::testing::AssertionFailure() << "element (" << i << ", " << j << ") is " << actual(i, j)
                                             << ", expected " << expected(i, j);
      }
    }
  }
  return ::testing::AssertionSuccess();
}

// (a) The library: AdapterSet, Adapter, load() and inspect().
void check_library(const std::string& case_name) {
  Case c;
  ASSERT_TRUE(make_case(case_name, c));
  const json& ex = c.expected;
  AdapterSet set = AdapterSet::open(c.specs);
  ASSERT_EQ(set.size(), ex["tasks"].size());
  EXPECT_EQ(set.original_params(), ex["params"].get<int64_t>());
  EXPECT_EQ(dtype_name(set.dtype()), ex["dtype"].get<std::string>());

  for (size_t i = 0; i < set.size(); ++i) {
    const Adapter& t = set.task(i);
    const json& et = ex["tasks"][i];
    SCOPED_TRACE("task " + et["name"].get<std::string>());
    EXPECT_EQ(t.name(), et["name"].get<std::string>());
    EXPECT_EQ(t.rank(), et["rank"].get<int64_t>());
    EXPECT_EQ(t.alpha(), et["alpha"].get<double>());
    EXPECT_EQ(t.use_rslora(), et["use_rslora"].get<bool>());
    EXPECT_EQ(dtype_name(t.dtype()), et["dtype"].get<std::string>());
    EXPECT_EQ(t.params(), et["params"].get<int64_t>());
    EXPECT_EQ(t.modules().size(), et["module_info"].size());
    for (size_t k = 1; k < t.modules().size(); ++k) {
      EXPECT_TRUE(natural_less(t.modules()[k - 1].name, t.modules()[k].name))
          << t.modules()[k - 1].name << " listed before " << t.modules()[k].name;
    }
    for (auto& [module, em] : et["module_info"].items()) {
      SCOPED_TRACE("module " + module);
      const AdapterModule* m = t.find(module);
      ASSERT_NE(m, nullptr);
      EXPECT_EQ(m->in, em["in"].get<int64_t>());
      EXPECT_EQ(m->out, em["out"].get<int64_t>());
      EXPECT_EQ(m->rank, em["rank"].get<int64_t>());
      EXPECT_EQ(m->alpha, em["alpha"].get<double>());
      EXPECT_TRUE(near_rel(m->scale, em["scale"].get<double>(), 1e-14, 0));
      EXPECT_EQ(dtype_name(m->dtype), em["dtype"].get<std::string>());
      ModuleLora l = t.load(module);
      EXPECT_TRUE(near_rel(l.scale, em["scale"].get<double>(), 1e-14, 0)) << "ModuleLora.scale";
      EXPECT_TRUE(same_matrix(l.A, matrix_of(em["A"]))) << "lora_A";
      EXPECT_TRUE(same_matrix(l.B, matrix_of(em["B"]))) << "lora_B";
    }
  }

  const auto& mods = set.modules();
  ASSERT_EQ(mods.size(), ex["modules"].size());
  for (size_t m = 0; m < mods.size(); ++m) {
    const json& em = ex["modules"][m];
    SCOPED_TRACE("set module " + em["name"].get<std::string>());
    EXPECT_EQ(mods[m].name, em["name"].get<std::string>());  // natural order
    EXPECT_EQ(mods[m].in, em["in"].get<int64_t>());
    EXPECT_EQ(mods[m].out, em["out"].get<int64_t>());
    EXPECT_EQ(mods[m].ranks, em["ranks"].get<std::vector<int64_t>>());
    auto factors = set.load(m);
    ASSERT_EQ(factors.size(), set.size());
    for (size_t i = 0; i < set.size(); ++i) {
      const json& et = ex["tasks"][i];
      const json& info = et["module_info"];
      if (info.contains(mods[m].name)) {
        const json& ei = info[mods[m].name];
        EXPECT_TRUE(near_rel(factors[i].scale, ei["scale"].get<double>(), 1e-14, 0))
            << "ModuleLora.scale of " << et["name"];
        EXPECT_TRUE(same_matrix(factors[i].A, matrix_of(ei["A"]))) << "lora_A of " << et["name"];
        EXPECT_TRUE(same_matrix(factors[i].B, matrix_of(ei["B"]))) << "lora_B of " << et["name"];
      } else {
        EXPECT_EQ(factors[i].rank(), 0) << et["name"] << " lacks the module";
        EXPECT_EQ(factors[i].A.cols(), mods[m].in);
        EXPECT_EQ(factors[i].B.rows(), mods[m].out);
      }
    }
  }

  Inspection x = inspect(set);
  ASSERT_EQ(x.tasks.size(), ex["tasks"].size());
  for (size_t i = 0; i < x.tasks.size(); ++i) {
    const json& et = ex["tasks"][i];
    SCOPED_TRACE("inspect task " + et["name"].get<std::string>());
    EXPECT_EQ(x.tasks[i].name, et["name"].get<std::string>());
    EXPECT_EQ(x.tasks[i].rank, et["rank"].get<int64_t>());
    EXPECT_EQ(x.tasks[i].alpha, et["alpha"].get<double>());
    EXPECT_EQ(dtype_name(x.tasks[i].dtype), et["dtype"].get<std::string>());
    EXPECT_EQ(x.tasks[i].modules, et["modules"].get<int64_t>());
    EXPECT_EQ(x.tasks[i].params, et["params"].get<int64_t>());
  }
  ASSERT_EQ(x.modules.size(), ex["modules"].size());
  for (size_t m = 0; m < x.modules.size(); ++m) {
    const json& em = ex["modules"][m];
    SCOPED_TRACE("inspect module " + em["name"].get<std::string>());
    EXPECT_EQ(x.modules[m].name, em["name"].get<std::string>());
    EXPECT_EQ(x.modules[m].in, em["in"].get<int64_t>());
    EXPECT_EQ(x.modules[m].out, em["out"].get<int64_t>());
    EXPECT_EQ(x.modules[m].tasks, em["tasks"].get<int>());
    EXPECT_EQ(x.modules[m].min_rank, em["min_rank"].get<int64_t>());
    EXPECT_EQ(x.modules[m].max_rank, em["max_rank"].get<int64_t>());
    EXPECT_TRUE(near_rel(x.modules[m].similarity_a, num_or_nan(em["similarity_A"]))) << "similarity_A";
    EXPECT_TRUE(near_rel(x.modules[m].similarity_b, num_or_nan(em["similarity_B"]))) << "similarity_B";
  }
}

// (b) The command-line tool: `hydraopt inspect --json`.
void check_cli(const std::string& case_name) {
  Case c;
  ASSERT_TRUE(make_case(case_name, c));
  const json& ex = c.expected;
  ASSERT_TRUE(fs::exists(HYDRAOPT_CLI)) << HYDRAOPT_CLI << " has not been built";
  std::string cmd = quote(HYDRAOPT_CLI) + " inspect --json";
  for (auto& s : c.specs) cmd += " " + quote(s);
  const fs::path err = c.dir.parent_path() / ("inspect-stderr-" + std::to_string(::getpid()) + ".txt");
  cmd += " 2>" + quote(err.string());
  Run r = run(cmd);
  ASSERT_EQ(r.status, 0) << cmd << "\nstderr: " << slurp(err) << "\nstdout: " << r.out;
  json j;
  try {
    j = json::parse(r.out);
  } catch (const json::exception& e) {
    FAIL() << "inspect --json printed invalid JSON (" << e.what() << "):\n" << r.out;
  }

  ASSERT_TRUE(j.contains("tasks") && j["tasks"].is_array()) << r.out;
  ASSERT_EQ(j["tasks"].size(), ex["tasks"].size());
  for (size_t i = 0; i < ex["tasks"].size(); ++i) {
    const json& et = ex["tasks"][i];
    const json& t = j["tasks"][i];
    SCOPED_TRACE("cli task " + et["name"].get<std::string>());
    EXPECT_EQ(t.value("name", ""), et["name"].get<std::string>());
    EXPECT_EQ(t.value("rank", int64_t{-1}), et["rank"].get<int64_t>());
    EXPECT_EQ(t.value("alpha", -1.0), et["alpha"].get<double>());
    EXPECT_EQ(t.value("dtype", ""), et["dtype"].get<std::string>());
    EXPECT_EQ(t.value("params", int64_t{-1}), et["params"].get<int64_t>());
    EXPECT_EQ(t.value("modules", int64_t{-1}), et["modules"].get<int64_t>());
  }
  ASSERT_TRUE(j.contains("modules") && j["modules"].is_array()) << r.out;
  ASSERT_EQ(j["modules"].size(), ex["modules"].size());
  for (size_t m = 0; m < ex["modules"].size(); ++m) {
    const json& em = ex["modules"][m];
    const json& mod = j["modules"][m];
    SCOPED_TRACE("cli module " + em["name"].get<std::string>());
    EXPECT_EQ(mod.value("name", ""), em["name"].get<std::string>());
    EXPECT_EQ(mod.value("in", int64_t{-1}), em["in"].get<int64_t>());
    EXPECT_EQ(mod.value("out", int64_t{-1}), em["out"].get<int64_t>());
    EXPECT_EQ(mod.value("tasks", -1), em["tasks"].get<int>());
    EXPECT_EQ(mod.value("min_rank", int64_t{-1}), em["min_rank"].get<int64_t>());
    EXPECT_EQ(mod.value("max_rank", int64_t{-1}), em["max_rank"].get<int64_t>());
    for (const char* key : {"similarity_A", "similarity_B"}) {
      ASSERT_TRUE(mod.contains(key)) << key;
      if (em[key].is_null()) {
        EXPECT_TRUE(mod[key].is_null()) << key << " should be null with fewer than two tasks, got " << mod[key];
      } else {
        ASSERT_TRUE(mod[key].is_number()) << key << " is " << mod[key];
        EXPECT_TRUE(near_rel(mod[key].get<double>(), em[key].get<double>())) << key;
      }
    }
  }
}

TEST(Interop, PythonHasNumpy) { ASSERT_TRUE(python_has_numpy()); }

TEST(Interop, BasicLibrary) { check_library("basic"); }
TEST(Interop, BasicCli) { check_cli("basic"); }
TEST(Interop, DtypesLibrary) { check_library("dtypes"); }
TEST(Interop, DtypesCli) { check_cli("dtypes"); }
TEST(Interop, PatternsLibrary) { check_library("patterns"); }
TEST(Interop, PatternsCli) { check_cli("patterns"); }
TEST(Interop, MissingModuleLibrary) { check_library("missing_module"); }
TEST(Interop, MissingModuleCli) { check_cli("missing_module"); }

// `file` rewritten with its tensors' bytes in reverse header order (the
// header keeps its key order; only data_offsets change). Returns the data
// order before and after, as tensor names.
std::pair<std::vector<std::string>, std::vector<std::string>> reverse_data_order(const fs::path& file) {
  const std::string bytes = slurp(file);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  nlohmann::ordered_json h = nlohmann::ordered_json::parse(bytes.substr(8, n));
  const std::string data = bytes.substr(8 + n);
  std::vector<std::string> names;
  std::vector<std::pair<uint64_t, std::string>> before;
  for (auto& [k, v] : h.items()) {
    if (k == "__metadata__") continue;
    names.push_back(k);
    before.emplace_back(v["data_offsets"][0].get<uint64_t>(), k);
  }
  std::sort(before.begin(), before.end());
  std::string out_data;
  std::vector<std::string> after;
  for (auto it = names.rbegin(); it != names.rend(); ++it) {
    auto& off = h[*it]["data_offsets"];
    const uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
    off = {out_data.size(), out_data.size() + (e - b)};
    out_data += data.substr(b, e - b);
    after.push_back(*it);
  }
  std::string header = h.dump();
  header.append((8 - header.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  std::ofstream(file, std::ios::binary | std::ios::trunc) << out << header << out_data;
  std::vector<std::string> order_before;
  for (auto& [o, k] : before) order_before.push_back(k);
  return {order_before, after};
}

// Tensors are found by their data_offsets, not by their position in the
// header or the buffer: the writer's adapters, with every file's data
// moved into another order, read back to the writer's values.
TEST(Interop, ReaderUsesDataOffsetsNotPositions) {
  Case c;
  ASSERT_TRUE(make_case("basic", c));
  test::TempDir d;
  std::vector<std::string> specs;
  for (size_t i = 0; i < c.specs.size(); ++i) {
    const fs::path dir = d / ("t" + std::to_string(i));
    fs::copy(c.specs[i], dir, fs::copy_options::recursive);
    auto [before, after] = reverse_data_order(dir / "adapter_model.safetensors");
    ASSERT_GE(after.size(), 4u);
    ASSERT_NE(before, after);  // the data really moved
    specs.push_back(dir.string());
  }
  AdapterSet set = AdapterSet::open(specs);
  ASSERT_EQ(set.size(), c.expected["tasks"].size());
  size_t checked = 0;
  for (size_t i = 0; i < set.size(); ++i) {
    for (auto& [module, em] : c.expected["tasks"][i]["module_info"].items()) {
      SCOPED_TRACE("task " + std::to_string(i) + " module " + module);
      ASSERT_NE(set.task(i).find(module), nullptr);
      ModuleLora l = set.task(i).load(module);
      EXPECT_TRUE(same_matrix(l.A, matrix_of(em["A"]))) << "lora_A";
      EXPECT_TRUE(same_matrix(l.B, matrix_of(em["B"]))) << "lora_B";
      ++checked;
    }
  }
  EXPECT_GE(checked, 4u);
}

}  // namespace
}  // namespace hydraopt
