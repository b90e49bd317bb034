// Calibration statistics (issue 19): the second moment of the inputs each
// adapted module reads while a task runs, from which `merge --calibration`
// fits every module's error on those inputs. The file format is in
// docs/formats.md ("Calibration statistics").
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace hydraopt {

/// One input of a layer and what it has seen: X^T X summed over `rows`
/// input rows (tokens), and the modules that read it (q/k/v read one).
struct InputSite {
  std::vector<std::string> modules;
  Eigen::MatrixXd xtx;
  int64_t rows = 0;
};

/// A LLaMA layer's input sites, as `hydraopt calibrate` records them: the
/// projections (named under "model.layers.<l>.") that read one input; a
/// site is named after its first reader.
inline const std::vector<std::string> kAttentionInputs = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"};
inline const std::vector<std::string> kAttentionOutputs = {"self_attn.o_proj"};
inline const std::vector<std::string> kMlpInputs = {"mlp.gate_proj", "mlp.up_proj"};
inline const std::vector<std::string> kMlpHidden = {"mlp.down_proj"};

/// By site name (the first module reading it).
using InputSites = std::map<std::string, InputSite>;

struct CalibrationFile {
  std::string task, base_model;
  int64_t examples = 0;
  InputSites sites;
};

/// Writes one task's statistics file (atomically): each site's second
/// moment X^T X / rows as its top eigenpairs, the fewest whose remainder
/// keeps at most 1e-3 of the trace and at most `max_rank` of them, plus the
/// remainder's diagonal.
void write_calibration(const std::filesystem::path& path, const CalibrationFile& stats, int64_t max_rank = 256);

}  // namespace hydraopt
