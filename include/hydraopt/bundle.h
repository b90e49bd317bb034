// Reading bundles back: the tasks they hold, and export to PEFT adapters.
// The byte format is documented in src/io/bundle.h.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "hydraopt/dtype.h"

namespace hydraopt {

/// Task names stored in a bundle, in order.
std::vector<std::string> bundle_tasks(const std::filesystem::path& bundle);

/// Writes one task (or every task when `task` is empty, as DIR/<task>/) of
/// a bundle as standard PEFT adapter directories; `dtype` defaults to the
/// bundle's. The output appears complete or not at all.
void export_bundle(const std::filesystem::path& bundle, const std::string& task, const std::filesystem::path& dir,
                   std::optional<DType> dtype = std::nullopt);

}  // namespace hydraopt
