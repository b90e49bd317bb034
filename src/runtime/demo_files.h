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

/// The directory of adapter set `set` (see adapter_sets()): assets/adapters
/// for "fast", assets/adapters-<set> otherwise; an Error naming the sets
/// there if it does not exist.
std::filesystem::path set_dir(const std::filesystem::path& assets, const std::string& set);

/// <dir>/*/, sorted; an Error if there are none.
inline std::vector<std::string> adapter_dirs(const std::filesystem::path& dir) {
  std::vector<std::string> dirs;
  std::error_code ec;
  for (auto& e : std::filesystem::directory_iterator(dir, ec)) {
    if (e.is_directory()) dirs.push_back(e.path().string());
  }
  if (ec) throw Error(dir.string(), "", "cannot list: " + ec.message());
  std::sort(dirs.begin(), dirs.end());
  if (dirs.empty()) throw Error(dir.string(), "", "no adapters");
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
