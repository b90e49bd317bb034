// Reading bundles back: the tasks they hold, and export to PEFT adapters.
// The byte format is documented in src/io/bundle.h.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "hydraopt/adapter.h"
#include "hydraopt/dtype.h"
#include "hydraopt/merge.h"

namespace hydraopt {

/// Task names stored in a bundle, in order.
std::vector<std::string> bundle_tasks(const std::filesystem::path& bundle);

/// Writes one task (or every task when `task` is empty, as DIR/<task>/) of
/// a bundle as standard PEFT adapter directories; `dtype` defaults to the
/// bundle's. The output appears complete or not at all.
void export_bundle(const std::filesystem::path& bundle, const std::string& task, const std::filesystem::path& dir,
                   std::optional<DType> dtype = std::nullopt);

/// What `hydraopt verify` found.
struct VerifyReport {
  std::vector<std::string> problems;  ///< one line each; empty: every check passed
  size_t modules = 0;                 ///< modules in the bundle
  size_t modules_checksummed = 0;     ///< of which had a stored SHA-256 (all, since format 1 + checksums)
  bool sources_checked = false;       ///< adapters were given
  std::vector<TaskError> tasks;       ///< recomputed errors, in the bundle's task order (with sources)
  double mean_rel_error = 0;
};

/// Checks a bundle: its structure (as bundle reading does), every module's
/// stored SHA-256 against its tensor bytes, and that every value is finite.
/// Given the source adapters (`specs`, as for merge; each bundle task once),
/// also checks their SHA-256 against the recorded ones and recomputes each
/// task's relative error as merge reports it. Throws hydraopt::Error if the
/// bundle cannot be read or the adapters are not the bundle's tasks.
VerifyReport verify_bundle(const std::filesystem::path& bundle, const std::vector<std::string>& specs,
                           const LoadOptions& options = {});

}  // namespace hydraopt
