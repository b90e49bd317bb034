// Reading bundles back: their tasks, modules and factors, each task's
// update, export to PEFT and GGUF adapters, and verification.
// The byte format is documented in src/io/bundle.h.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "hydraopt/adapter.h"
#include "hydraopt/dtype.h"
#include "hydraopt/gguf.h"
#include "hydraopt/merge.h"

namespace hydraopt {

namespace io {
struct Bundle;
struct BundleModule;
}  // namespace io

/// What `hydraopt verify` found.
struct VerifyReport {
  std::vector<std::string> problems;  ///< one line each; empty: every check passed
  size_t modules = 0;                 ///< modules in the bundle
  size_t modules_checksummed = 0;     ///< of which had a stored SHA-256 (all, since format 1 + checksums)
  bool sources_checked = false;       ///< adapters were given
  std::vector<TaskError> tasks;       ///< recomputed errors, in the bundle's task order (with sources)
  double mean_rel_error = 0;
};

/// One task's update on one module, factored: dW = left * right with left
/// (out x k, the scaling folded in) and right (k x in).
struct FactoredUpdate {
  std::string module;
  Eigen::MatrixXd left, right;
};

/// One module of a bundle as stored. Task i's update is
///   scale[i] * heads[head_of[i]] * C_i * bodies[body_of[i]]
/// with C_i = cores[core_of[i]] (a diagonal, stored as a column, when
/// diagonal_cores(); the identity when core_of[i] < 0). A view: valid while
/// the Bundle it came from lives.
class BundleModule {
 public:
  const std::string& name() const;
  int64_t in() const;
  int64_t out() const;
  /// "shared-A k=8", "exact", ...
  std::string structure() const;
  /// Stored numbers.
  int64_t params() const;
  /// The plan entry {"name","in","out","structure","family","rank","groups","params"} as JSON.
  std::string plan_json() const;
  const std::vector<Eigen::MatrixXd>& heads() const;
  const std::vector<Eigen::MatrixXd>& cores() const;
  const std::vector<Eigen::MatrixXd>& bodies() const;
  const std::vector<int>& head_of() const;
  const std::vector<int>& core_of() const;
  const std::vector<int>& body_of() const;
  const std::vector<double>& scale() const;
  bool diagonal_cores() const;
  /// Task i's update on this module.
  FactoredUpdate task_update(size_t task) const;

 private:
  friend class Bundle;
  explicit BundleModule(const io::BundleModule* m) : m_(m) {}
  const io::BundleModule* m_;
};

/// A bundle written by merge, read and checked (format: src/io/bundle.h).
class Bundle {
 public:
  /// Reads and checks `path`; throws hydraopt::Error naming the file.
  static Bundle open(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return path_; }
  const std::string& method() const;
  const std::string& base_model() const;
  DType dtype() const;
  double budget() const;
  /// Stored numbers, and those of the adapters merged.
  int64_t params() const;
  int64_t original_params() const;
  /// The method's parameters as recorded.
  const std::map<std::string, std::string>& parameters() const;

  /// Task names, in order.
  std::vector<std::string> tasks() const;
  /// The index of task `name`; an Error naming the bundle and its tasks if none.
  size_t task_index(const std::string& name) const;
  size_t module_count() const;
  BundleModule module(size_t m) const;
  /// The index of module `name`; an Error if none.
  size_t module_index(const std::string& name) const;
  /// Every module's plan entry, as a JSON list (as in merge reports).
  std::string plan_json() const;
  /// Task i's update on every module, in module order.
  std::vector<FactoredUpdate> task_update(size_t task) const;

  /// Task `task` as a PEFT adapter, in memory: what export_peft writes,
  /// without writing it. `tensors` holds
  /// base_model.model.<module>.lora_A.weight (k x in) and .lora_B.weight
  /// (out x k) per module the task has, as stored; `config_json` is
  /// adapter_config.json (per-module rank_pattern / alpha_pattern keep
  /// each scale exact).
  struct PeftAdapter {
    std::vector<std::pair<std::string, Eigen::MatrixXd>> tensors;
    std::string config_json;
  };
  /// With `least_rank`, each module's update is refactored to the least
  /// rank that holds it (scale folded into lora_B, lora_alpha = r): the
  /// targets `hydraopt add --refit` merges for the stored tasks.
  PeftAdapter task_adapter(const std::string& task, bool least_rank = false) const;
  /// Writes task `task` (every task, as dir/<task>/, when empty) as standard
  /// PEFT adapter directories; `dtype` defaults to the bundle's. The output
  /// appears complete or not at all.
  void export_peft(const std::string& task, const std::filesystem::path& dir,
                   std::optional<DType> dtype = std::nullopt) const;
  /// Writes task `task` as a llama.cpp LoRA file `out` (.gguf), or every
  /// task as out/<task>.gguf when `task` is empty. `base_model` is the base
  /// model's directory (or its config.json): GGUF needs its architecture
  /// and head counts. Factors stored as integers go out in llama.cpp's
  /// block types where exact (`block_types` false: all in the float
  /// dtype). Returns how each LoRA tensor was written (ggml type, and why
  /// floats where the bundle stores integers).
  std::vector<GgufTensorChoice> export_gguf(const std::string& task, const std::filesystem::path& base_model,
                                            const std::filesystem::path& out,
                                            std::optional<DType> dtype = std::nullopt,
                                            bool block_types = true) const;
  /// verify_bundle(path(), sources, options).
  VerifyReport verify(const std::vector<std::string>& sources = {}, const LoadOptions& options = {}) const;

 private:
  std::filesystem::path path_;
  std::shared_ptr<const io::Bundle> data_;
};

/// Checks a bundle file: its structure (as Bundle::open does), every
/// module's stored SHA-256 against its tensor bytes, and that every value
/// is finite; problems are listed, not thrown, so a damaged file is
/// described. Given the source adapters (`specs`, as for merge; each bundle
/// task once), also checks their SHA-256 against the recorded ones and
/// recomputes each task's relative error as merge reports it. Throws
/// hydraopt::Error if the bundle cannot be read or the adapters are not the
/// bundle's tasks.
VerifyReport verify_bundle(const std::filesystem::path& bundle, const std::vector<std::string>& specs,
                           const LoadOptions& options = {});

}  // namespace hydraopt
