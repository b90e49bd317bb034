// hydraopt bundles: many tasks' adapters in one safetensors file.
//
// Tensors, per module (module = the PEFT module path):
//   <module>.head.<j>   out x k      head j (a B-side factor)
//   <module>.core.<j>   k x k'       core j (or a k-vector when diagonal)
//   <module>.body.<j>   k' x in      body j (an A-side factor)
// Task i's update on the module is
//   scale_i * head[head_of[i]] * core[core_of[i]] * body[body_of[i]]
// (no core when core_of[i] = -1; a diagonal core multiplies columns).
// Shared heads/bodies are stored once.
// A role may be stored as group-wise integers (core/quant.h; format
// version 2): the module's entry then has
//   "precision": {"head"|"body"|"core": "int4-g32-sym", ...}   (roles absent: the float dtype)
//   "shapes":    {"head": [[rows, cols], ...], ...}          (each stored matrix of those roles)
// and each such matrix X is stored as the tensors
//   X          U8  [bytes]    the packed codes (quant.h's bit stream)
//   X.scales   F16 [groups]   one scale per group
//   X.minima   F16 [groups]   asymmetric formats only
// in that order; readers dequantize, so every consumer (forward pass,
// exports, verify) sees the stored values. A bundle with no integer role is
// written as version 1. All index lists, scales, the plan and
// provenance live in __metadata__["hydraopt"], a JSON string:
//   {"format": "hydraopt.bundle", "version": 1 or 2, "hydraopt_version",
//    "method", "parameters": {name: value}, "budget", "dtype",
//    "base_model", "fan_in_fan_out",
//    "storage": {"params", "original_params"},
//    "tasks": [{"name", "source", "sha256", "rank", "alpha", "use_rslora",
//               "target_modules"}],
//    "modules": [{"name", "in", "out", "structure", "family", "rank",
//                 "groups", "params", ["precision", "shapes"],
//                 "diagonal_cores", "head_of", "core_of",
//                 "body_of", "scale", "sha256"}],
//    "history": [{"op", "tasks", "refit", "reconstructed", "rel_errors"}],
//    "calibration": {"shrinkage", "statistics", "plan", "rounds"}}
// "tasks[i].sha256" is the SHA-256 of the source adapter_model.safetensors;
// "modules[m].sha256" that of the module's stored tensor bytes (heads, then
// bodies, then cores, each in index order, an integer matrix's codes,
// scales and minima together: one contiguous range).
// "history" (optional; absent in a bundle as one merge wrote it) lists the
// edits since, oldest first (`hydraopt add` / `remove`, engine/edit.cc):
// "op" is "add" or "remove"; "tasks" the tasks it added or removed (names);
// "refit" "none" (the stored factors kept, the new tasks' own appended),
// "touched" or "all" (factors fitted again); "reconstructed" the tasks whose
// refit targets were their reconstructions from the bundle, not their
// adapters; "rel_errors" (add only: one per added task) each added task's
// relative error against its adapter, as fitted. A task's place in the list
// of edits says when it came or went.
// The header is padded with spaces so that the data starts at a multiple
// of 4096 bytes (see BundleWriter::expect).
// Readers check the format tag and version, that every referenced tensor
// exists with a shape that chains (out x k)(k x k')(k' x in), that integer
// tensors have the sizes their format and shape give (codes, padding bits,
// scales per group, finite scales), and that no stray tensor is present.
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/fit.h"
#include "core/storage.h"
#include "io/safetensors.h"
#include "core/structure.h"

namespace hydraopt::io {

/// The newest format version this writes and reads. Bundles whose
/// factors are all floats are still written as version 1 (readable by
/// older hydraopt); integer storage needs version 2.
inline constexpr int kBundleVersion = 2;

struct BundleTask {
  std::string name, source, sha256;
  int64_t rank = 0;
  double alpha = 0;
  bool use_rslora = false;
  std::vector<std::string> target_modules;
};

struct BundleModule {
  std::string name;
  int64_t in = 0, out = 0;
  StructureSpec spec;
  ModuleFit fit;  ///< as stored (rounded to the bundle dtype, or dequantized)
  /// SHA-256 of the module's tensor bytes, heads then bodies then cores in
  /// index order (contiguous in the file); empty in bundles from before it.
  std::string sha256;
  Precision precision;  ///< roles stored as integers (fit holds their values)
};

/// One entry of a bundle's "history": an edit since its merge.
struct BundleEdit {
  std::string op;                          ///< "add" or "remove"
  std::vector<std::string> tasks;          ///< the tasks added or removed
  std::string refit = "none";              ///< "none", "touched" or "all"
  std::vector<std::string> reconstructed;  ///< tasks whose refit targets were their reconstructions
  std::vector<double> rel_errors;          ///< add: per added task, its relative error as fitted
};

/// How a calibrated merge measured its errors (merge --calibration): the
/// shrinkage and each task's statistics file's SHA-256 ("" for a task that
/// had none), and how it planned and fitted (--calibration-plan,
/// --calibration-rounds). In the metadata: "calibration": {"shrinkage",
/// "statistics": {task: sha256}, "plan", "rounds"}; "plan" and "rounds"
/// are optional (absent in bundles written before them: "calibrated", 0).
struct BundleCalibration {
  double shrinkage = 0;
  std::map<std::string, std::string> statistics;  ///< task -> sha256
  std::string plan = "calibrated";
  int rounds = 0;
};

struct Bundle {
  std::string method, base_model;
  std::map<std::string, std::string> params;
  double budget = 0;
  DType dtype = DType::F32;
  bool fan_in_fan_out = false;
  int64_t params_stored = 0, original_params = 0;
  std::vector<BundleTask> tasks;
  std::vector<BundleModule> modules;
  std::vector<BundleEdit> history;  ///< empty for a bundle as merge wrote it
  std::optional<BundleCalibration> calibration;  ///< a calibrated merge's
};

/// The name of module `module`'s stored matrix `j` of `kind` ("head",
/// "body" or "core"): "<module>.<kind>.<j>".
std::string tensor_name(const std::string& module, const char* kind, size_t j);

/// A module's plan entry {"name","in","out","structure","family","rank",
/// "groups","params"[,"precision"]} as JSON text, as written in bundles and
/// reports ("precision" only where a role is stored as integers).
std::string plan_entry_json(const std::string& name, int64_t in, int64_t out, const StructureSpec& spec,
                            int64_t params, const Precision& precision = {});

/// Writes a bundle module by module, so a merge holds only the modules it
/// is working on. write_module() may be called from several threads in any
/// order: each module's tensor bytes are appended to an unlinked spool file
/// beside the target, and finish() writes the header, then copies the
/// modules' bytes in module order (copy_file_range), so the file does not
/// depend on the order of completion. The target appears only when
/// finish() succeeds (fsync + rename); otherwise nothing is left behind.
///
/// A module can also travel between processes as an encoded record (its
/// tensors' names, shapes and bytes, its plan entry and storage):
/// encoded_module() on a spool-only writer (an MPI rank other than 0)
/// and write_encoded() on the writer of the bundle store exactly what
/// write_module() would have stored.
class BundleWriter {
 public:
  BundleWriter(std::filesystem::path path, DType dtype, size_t modules);
  /// A writer that only keeps modules (spooled in the temporary directory,
  /// $TMPDIR or /tmp) to hand them on with encoded_module(); it cannot finish().
  BundleWriter(DType dtype, size_t modules);
  ~BundleWriter();
  BundleWriter(const BundleWriter&) = delete;
  BundleWriter& operator=(const BundleWriter&) = delete;

  /// Optional, before any module is written: every module's stored bytes
  /// (fit_bytes). The modules then go straight to their places in
  /// the output file, in whatever order they come, and finish() needs no
  /// copy (where the file system can insert the header in front: ext4,
  /// xfs). A module of another size is then a logic error. Ignored by a
  /// spool-only writer.
  void expect(const std::vector<int64_t>& bytes);
  /// Stores module m (name, shape, spec and its fit, already rounded).
  void write_module(size_t m, const BundleModule& module);
  bool has_module(size_t m) const;
  /// Forgets module m (written or not) so that it can be written again: a
  /// fit stored early and then replaced by another choice. Spooled bytes
  /// are left unused in the spool; not once expect() fixed the layout.
  void discard(size_t m);
  /// Module m, once written, as one message for write_encoded().
  std::string encoded_module(size_t m) const;
  /// Stores module m from encoded_module()'s message. Thread-safe like
  /// write_module().
  void write_encoded(size_t m, std::string_view message);
  /// A tensor already in the bundle's dtype: its name, shape and bytes.
  struct StoredTensor {
    std::string name;
    std::vector<int64_t> shape;
    std::span<const std::byte> bytes;
  };
  /// Stores module m from tensor bytes as they are (another bundle's,
  /// copied by hydraopt add / remove): `module` gives the name, shape, spec
  /// and layout (its fit's index lists, scales and diagonal_cores; its
  /// matrices are not read), `tensors` the heads, bodies and cores in index
  /// order, `params` their element count and `sha256` that of their bytes in
  /// that order. Thread-safe like write_module().
  void write_stored(size_t m, const BundleModule& module, const std::vector<StoredTensor>& tensors, int64_t params,
                    const std::string& sha256);
  /// Writes the file. `b` gives everything but the modules, which must all
  /// have been written; b.params_stored must equal their sum.
  void finish(const Bundle& b);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

void bundle_write(const std::filesystem::path& path, const Bundle& b);
Bundle bundle_read(const std::filesystem::path& path);
/// The bundle in a validated safetensors file (bundle_read's checks; used by
/// the fuzzers on files held in memory). Without `values`, the same checks
/// but the factors are not decoded: every matrix of the fits is left empty
/// (0 x 0), for callers that copy stored bytes as they are and decode only
/// what they need (hydraopt add / remove, engine/edit.cc).
Bundle bundle_parse(const SafetensorsFile& st, bool values = true);

/// Task `task` of `b` as a PEFT adapter in memory: the tensors
/// (base_model.model.<module>.lora_A.weight, k x in, and .lora_B.weight,
/// out x k, as stored: no rounding) and adapter_config.json's text. The
/// scale is kept exact through alpha: lora_alpha = scale * r per module.
/// With `least_rank`, each module's update refactored to the least rank
/// that holds it (a head times a wider core is still of the head's rank;
/// the scale folded into lora_B): what a refit merges (engine/edit.cc).
struct PeftImage {
  std::vector<std::pair<std::string, Eigen::MatrixXd>> tensors;
  std::string config;
};
PeftImage peft_image(const Bundle& b, size_t task, bool least_rank = false);

/// Writes task `task` of `b` as a PEFT adapter directory at `dir` (created
/// complete or not at all). The scale is kept exact through alpha:
/// lora_alpha = scale * r per module (r = lora_alpha where the scale is 1).
void export_peft(const Bundle& b, size_t task, const std::filesystem::path& dir, DType dtype);

/// Every task of `b` as `dir`/<task name>/, the whole directory created
/// complete or not at all.
void export_peft_all(const Bundle& b, const std::filesystem::path& dir, DType dtype);

/// The index of task `name` in `b`; an Error naming `file` and listing the
/// tasks if there is none.
size_t task_index(const Bundle& b, const std::string& name, const std::string& file);

/// Throws unless `name` is safe as one path component (no '/', '\\',
/// control characters, "." or "..", at most 255 bytes).
void check_task_name(const std::string& name, const std::string& file);

}  // namespace hydraopt::io
