// Calibration statistics: the second moment of the inputs one task feeds
// each module, C = X^T X / rows (X: one row per token), as a sketch that
// scales to wide modules (format: docs/formats.md, "Calibration statistics").
//
// One safetensors file per task. __metadata__:
//   "format": "hydraopt-calibration", "version": "1",
//   "task": the task's name (non-empty), "base_model": the adapters' base
//   model (may be empty), "examples": examples run (decimal), "rows": input
//   rows summed (decimal; both plain digits, < 2^63),
//   "sites": a JSON object, input site -> array of the module names that
//            read that input (q/k/v read one; gate/up read one).
// All are required; other keys are ignored.
// Tensors, for every site S (and nothing else):
//   "S.values"   F32 [k]       top eigenvalues of C, descending, >= 0
//   "S.vectors"  F32 [k, in]   their eigenvectors, one per row, orthonormal
//   "S.diagonal" F32 [in]      diag(C - vectors^T diag(values) vectors), >= 0
// so C ~ V^T diag(values) V + diag(diagonal), exact when k = in; in >= 1,
// 0 <= k <= in. Site names hold dots: a tensor's site is its name up to
// the last dot.
//
// The reader rejects, naming the file, the tensor and the reason: another
// format or version, missing or extra tensors, wrong dtype or shapes, k > in,
// non-finite values, negative eigenvalues or diagonal, eigenvalues out of
// order, eigenvectors that are not orthonormal (to 1e-3), a module in two
// sites, a site without modules, and malformed metadata.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "io/safetensors.h"

namespace hydraopt::io {

/// One input site's second-moment sketch.
struct InputStats {
  Eigen::MatrixXd vectors;   ///< k x in, orthonormal rows
  Eigen::VectorXd values;    ///< k, descending, >= 0
  Eigen::VectorXd diagonal;  ///< in, >= 0

  int64_t in() const { return diagonal.size(); }
  /// V^T diag(values) V + diag(diagonal), dense (in x in; small sizes only).
  Eigen::MatrixXd dense() const;
  /// trace of C
  double trace() const;
};

struct CalibrationStats {
  std::string task, base_model;
  int64_t examples = 0, rows = 0;
  std::map<std::string, InputStats> sites;
  std::map<std::string, std::vector<std::string>> modules;  ///< site -> module names

  /// The site module `name` reads, or nullptr (also when that site has no
  /// entry in `sites`, which a file as read always has).
  const InputStats* for_module(const std::string& name) const;
  /// The name of that site, or nullptr.
  const std::string* site_of(const std::string& name) const;
};

/// The sketch of a dense second moment c (in x in, symmetric PSD up to
/// rounding; made symmetric first, eigenvalues clamped at 0): the fewest
/// top eigenpairs whose remainder's trace is at most `tail` of the trace,
/// at most `max_rank` of them; the remainder's diagonal (clamped at 0) is
/// kept; each eigenvector's largest entry is positive (reproducible files).
/// Throws hydraopt::Error if c is not square or not finite, or
/// max_rank < 0, or tail is outside [0, 1].
InputStats sketch_second_moment(const Eigen::MatrixXd& c, int64_t max_rank = 256, double tail = 1e-3);

/// Reads and validates a statistics file; throws hydraopt::Error.
CalibrationStats read_calibration_stats(const std::filesystem::path& path);

/// A statistics file read one site at a time: opened (mapped) and
/// validated whole once (as read_calibration_stats), keeping its header;
/// site() reads one site's tensors from the mapping when asked (shapes
/// checked again, values not: they were) and then releases the mapping's
/// pages, so memory holds what is in use (a llama-1b file with 256
/// eigenpairs per site is 67 MB). A file whose size or modification time
/// changed since is refused; one replaced by another (rename) is still
/// read from the file validated.
class CalibrationFileReader {
 public:
  explicit CalibrationFileReader(std::filesystem::path path);
  /// task, base_model, examples, rows, modules; `sites` is empty.
  const CalibrationStats& header() const { return header_; }
  /// Each site's input width.
  const std::map<std::string, int64_t>& widths() const { return widths_; }
  InputStats site(const std::string& name) const;

 private:
  std::filesystem::path path_;
  SafetensorsFile file_;
  CalibrationStats header_;
  std::map<std::string, int64_t> widths_;
  std::uintmax_t size_ = 0;
  std::filesystem::file_time_type mtime_;
};
/// The same from bytes in memory (tests, fuzzers); `label` names the source.
CalibrationStats parse_calibration_stats(std::span<const std::byte> file, const std::string& label);
/// Writes atomically (temp + rename); the stats must be valid as the reader
/// checks them (after rounding to F32), and `sites` and `modules` must have
/// the same keys: otherwise an Error naming `path`, and nothing is written.
void write_calibration_stats(const std::filesystem::path& path, const CalibrationStats& stats);

}  // namespace hydraopt::io
