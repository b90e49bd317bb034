// What the two task benchmarks (benchmark.cc, online.cc) share: the
// shipped adapters' directories and a scratch directory for their bundles.
#pragma once

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include "hydraopt/error.h"

namespace hydraopt::demo_files {

/// assets/adapters/*/, sorted; an Error if there are none.
inline std::vector<std::string> adapter_dirs(const std::filesystem::path& assets) {
  std::vector<std::string> dirs;
  for (auto& e : std::filesystem::directory_iterator(assets / "adapters")) {
    if (e.is_directory()) dirs.push_back(e.path().string());
  }
  std::sort(dirs.begin(), dirs.end());
  if (dirs.empty()) throw Error((assets / "adapters").string(), "", "no adapters");
  return dirs;
}

/// $TMPDIR/hydraopt-<what>-<pid>, removed with everything in it at the end.
class Scratch {
 public:
  explicit Scratch(const std::string& what)
      : path_(std::filesystem::temp_directory_path() / fmt::format("hydraopt-{}-{}", what, ::getpid())) {
    std::filesystem::create_directories(path_);
  }
  ~Scratch() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

}  // namespace hydraopt::demo_files
