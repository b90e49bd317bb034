// LoRA adapters in the PEFT format, and sets of them trained from one base.
//
// An adapter is a directory with adapter_config.json and
// adapter_model.safetensors. For each target module (e.g.
// "model.layers.0.self_attn.q_proj") it holds
//   base_model.model.<module>.lora_A.weight   r x in
//   base_model.model.<module>.lora_B.weight   out x r
// and the update it applies to that module's weight is
//   dW = s * B @ A,  s = alpha / r   (alpha / sqrt(r) with use_rslora),
// where r and alpha come from rank_pattern / alpha_pattern when a key
// matches the module name as a suffix (PEFT's `(.*\.)?(key)$`, first key
// in file order wins), else from r / lora_alpha. With fan_in_fan_out the
// base layer stores its weight transposed (GPT-2 Conv1D); A and B keep the
// shapes above, so dW is still out x in here and the flag only travels
// with the adapter into exports.
//
// Factors are read from a memory-mapped file on demand, one module at a
// time, and converted to double whatever their stored dtype; the mapping's
// pages are dropped right after each read.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "hydraopt/dtype.h"

namespace hydraopt {

struct LoadOptions {
  /// Skip tensors that cannot be merged (DoRA magnitudes, lora_embedding_*,
  /// LoRA biases, modules_to_save copies) with a warning instead of failing.
  bool skip_unmergeable = false;
  /// Receives warnings; defaults to printing them on stderr.
  std::function<void(const std::string&)> warn;
};

/// One task's LoRA factors on one module, in double. Scaling not applied.
struct ModuleLora {
  Eigen::MatrixXd A;  ///< r x in
  Eigen::MatrixXd B;  ///< out x r
  double scale = 1;   ///< PEFT scaling s; the update is s * B * A

  int64_t rank() const { return A.rows(); }
};

/// A module's factors as the file stores them (row-major), seen column-major:
/// At = A^T (in x r) and Bt = B^T (r x out). Reading them so needs no
/// transposition, about twice as fast as ModuleLora's.
struct ModuleLoraT {
  Eigen::MatrixXd At;  ///< in x r
  Eigen::MatrixXd Bt;  ///< r x out
  double scale = 1;

  int64_t rank() const { return At.cols(); }
};

struct AdapterModule {
  std::string name;  ///< module path without the "base_model.model." prefix
  int64_t in = 0, out = 0, rank = 0;
  double alpha = 0, scale = 0;
  DType dtype = DType::F32;  ///< wider of lora_A's and lora_B's dtypes
};

class Adapter {
 public:
  /// `spec` is a directory, or NAME=DIRECTORY to name the task.
  static Adapter open(const std::string& spec, const LoadOptions& options = {});

  const std::string& name() const;
  const std::filesystem::path& dir() const;
  const std::string& base_model() const;
  int64_t rank() const;          ///< config `r`
  double alpha() const;          ///< config `lora_alpha`
  bool use_rslora() const;
  bool fan_in_fan_out() const;
  DType dtype() const;           ///< widest dtype among its LoRA tensors
  const std::vector<std::string>& target_modules() const;
  /// Modules sorted in natural order (layers.2 before layers.10).
  const std::vector<AdapterModule>& modules() const;
  const AdapterModule* find(const std::string& module) const;
  /// sum over modules of rank * (in + out)
  int64_t params() const;
  /// Reads one module's factors; throws if the adapter lacks it. The file's
  /// pages are unmapped again after the copy, so a pass over all modules
  /// keeps only the factors it holds in memory.
  ModuleLora load(const std::string& module) const;
  /// The same, transposed (ModuleLoraT).
  ModuleLoraT load_transposed(const std::string& module) const;
  /// ||s B A||_F^2 of one module (throws if the adapter lacks it), without
  /// keeping its factors; read in file order, as load_transposed.
  double update_norm2(const std::string& module) const;
  /// One pass over the weights file in byte order: ||s B A||_F^2 of each of
  /// `modules` (0 for one the adapter lacks), as update_norm2 gives it, and,
  /// with `sha256`, the file's SHA-256 (as util::sha256_file). Each tensor is
  /// converted right after it is hashed, while its bytes are in cache.
  std::vector<double> scan(const std::vector<std::string>& modules, std::string* sha256) const;
  /// Path of adapter_model.safetensors.
  std::filesystem::path weights_path() const;

 private:
  struct Impl;
  std::shared_ptr<const Impl> impl_;
};

/// Adapters of one base model, checked to be mergeable together.
class AdapterSet {
 public:
  struct Module {
    std::string name;
    int64_t in = 0, out = 0;
    std::vector<int64_t> ranks;  ///< per task; 0 where a task lacks the module
  };

  /// Checks: at least one adapter, unique task names, one base model (an
  /// adapter that does not name one is accepted), and one (in, out) per
  /// module across adapters.
  explicit AdapterSet(std::vector<Adapter> adapters);
  static AdapterSet open(const std::vector<std::string>& specs, const LoadOptions& options = {});

  size_t size() const { return tasks_.size(); }
  const std::vector<Adapter>& tasks() const { return tasks_; }
  const Adapter& task(size_t i) const { return tasks_[i]; }
  const std::string& base_model() const { return base_model_; }
  /// Union of the tasks' modules, natural order.
  const std::vector<Module>& modules() const { return modules_; }
  /// Every task's factors for module m; a task without it gets rank 0
  /// (a zero update).
  std::vector<ModuleLora> load(size_t m) const;
  /// Task i's factors for module m: load(m)[i].
  ModuleLora load(size_t m, size_t i) const;
  /// The same, transposed (ModuleLoraT).
  ModuleLoraT load_transposed(size_t m, size_t i) const;
  /// Every task's ||s B A||_F^2 on module m (0 where a task lacks it).
  std::vector<double> update_norms2(size_t m) const;
  /// Task i's ||s B A||_F^2 on every module (0 where it lacks one), in one
  /// pass over its file that also takes the file's SHA-256 when asked
  /// (Adapter::scan).
  std::vector<double> scan(size_t i, std::string* sha256) const;
  /// sum over tasks of their LoRA parameter counts
  int64_t original_params() const;
  /// Widest stored dtype over all tasks.
  DType dtype() const;

 private:
  std::vector<Adapter> tasks_;
  std::vector<Module> modules_;
  std::string base_model_;
};

/// Natural order of module names: digit runs compare as numbers.
bool natural_less(const std::string& a, const std::string& b);

}  // namespace hydraopt
