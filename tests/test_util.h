// Helpers shared by the tests: temporary directories and tiny adapters
// written on the fly.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <Eigen/Core>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "hydraopt/error.h"
#include "core/fit.h"
#include "hydraopt/synth.h"
#include "io/safetensors.h"
#include <nlohmann/json.hpp>

namespace hydraopt::test {

namespace fs = std::filesystem;

/// The message of the hydraopt::Error that f() throws (a test failure if
/// it throws none).
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected hydraopt::Error";
  return "";
}

/// A fresh directory removed at the end of the test.
class TempDir {
 public:
  explicit TempDir(const fs::path& base = fs::temp_directory_path()) {
    std::string templ = (base / "hydraopt-test-XXXXXX").string();
    path_ = ::mkdtemp(templ.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }
  fs::path operator/(const std::string& s) const { return path_ / s; }

 private:
  fs::path path_;
};

/// The task directories of a synthetic adapter set (`preset`, `tasks`
/// adapters, the generator's defaults otherwise), written once per test
/// binary run and kept until it ends.
inline std::vector<std::string> synth_specs(int tasks, const std::string& preset = "tiny") {
  static std::map<std::pair<std::string, int>, std::pair<std::unique_ptr<TempDir>, std::vector<std::string>>> made;
  auto& entry = made[{preset, tasks}];
  if (!entry.first) {
    entry.first = std::make_unique<TempDir>();
    SynthOptions o;
    o.preset = preset;
    o.tasks = tasks;
    for (const auto& dir : synth_write(entry.first->path() / preset, o)) entry.second.push_back(dir.string());
  }
  return entry.second;
}

/// Directories to write outputs into: a temporary one here and, where
/// /dev/shm is writable, one on tmpfs (another file system's features:
/// O_TMPFILE, but no FALLOC_FL_INSERT_RANGE). Removed on destruction.
inline std::vector<std::unique_ptr<TempDir>> output_dirs() {
  std::vector<std::unique_ptr<TempDir>> dirs;
  dirs.push_back(std::make_unique<TempDir>());
  if (::access("/dev/shm", W_OK) == 0) dirs.push_back(std::make_unique<TempDir>("/dev/shm"));
  return dirs;
}

inline void write_text(const fs::path& p, const std::string& text) {
  std::ofstream(p, std::ios::binary) << text;
}

inline std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

/// Rewrites the hydraopt metadata of a bundle file through `edit`.
inline void rewrite_metadata(const fs::path& path, const std::function<void(nlohmann::ordered_json&)>& edit) {
  std::string image = read_text(path);
  auto st = io::SafetensorsFile::parse({reinterpret_cast<const std::byte*>(image.data()), image.size()}, "t");
  auto j = nlohmann::ordered_json::parse(st.metadata().at("hydraopt"));
  edit(j);
  std::vector<io::TensorSlot> slots;
  for (const auto& t : st.tensors()) slots.push_back({t.name, t.dtype, t.shape, t.begin, t.end});
  std::string out = io::safetensors_header(std::move(slots), {{"hydraopt", j.dump()}, {"format", "pt"}});
  out.append(image.substr(st.data_offset()));
  write_text(path, out);
}

inline Eigen::MatrixXd random_matrix(Eigen::Index r, Eigen::Index c, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> n(0, 1);
  Eigen::MatrixXd m(r, c);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = n(g);
  return m;
}

struct TestModule {
  std::string name;
  Eigen::MatrixXd A, B;
};

/// Writes a PEFT adapter directory with the given config JSON and factors.
inline void write_adapter(const fs::path& dir, const std::string& config,
                          const std::vector<TestModule>& modules, DType dtype = DType::F32) {
  fs::create_directories(dir);
  write_text(dir / "adapter_config.json", config);
  std::vector<io::TensorData> ts;
  for (auto& m : modules) {
    ts.push_back(io::tensor_from_matrix("base_model.model." + m.name + ".lora_A.weight", m.A, dtype));
    ts.push_back(io::tensor_from_matrix("base_model.model." + m.name + ".lora_B.weight", m.B, dtype));
  }
  io::safetensors_write(dir / "adapter_model.safetensors", std::move(ts));
}

/// Runs a shell command; returns exit status and captures stdout+stderr.
inline int run(const std::string& cmd, std::string* output = nullptr) {
  std::string full = cmd + " 2>&1";
  FILE* p = ::popen(full.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int status = ::pclose(p);
  if (output) *output = out;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

inline std::string cli() { return HYDRAOPT_CLI; }

/// Every matrix, index list and scale of `got` equals `want`'s.
inline void expect_same_fit(const ModuleFit& got, const ModuleFit& want) {
  EXPECT_EQ(got.heads, want.heads);
  EXPECT_EQ(got.bodies, want.bodies);
  EXPECT_EQ(got.cores, want.cores);
  EXPECT_EQ(got.head_of, want.head_of);
  EXPECT_EQ(got.body_of, want.body_of);
  EXPECT_EQ(got.core_of, want.core_of);
  EXPECT_EQ(got.scale, want.scale);
}

}  // namespace hydraopt::test
