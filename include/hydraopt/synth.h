// Synthetic PEFT adapter sets that look like adapters trained from one base.
//
// Generative model, per module (in, out, rank r), documented in docs/synth.md:
//   A0   r x in   the shared LoRA initialisation (PEFT's Kaiming-uniform,
//                 U(-1/sqrt(in), 1/sqrt(in))): every task trained with one
//                 seed starts from it.
//   D    k x in   shared drift directions (k = 2r): training moves A mostly
//                 along input-activation directions all tasks see.
//   A_i = A0 + d_i * M_i D + e * N_i      M_i r x k, N_i isotropic noise
//   B_i = b * (C_{c(i)} + h * H_i)        C_c a head per task cluster c(i)
// Task i belongs to cluster i mod clusters. Drift d_i varies per task.
// Everything is a deterministic function of (seed, module, task), so the
// result does not depend on the thread count.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "hydraopt/dtype.h"

namespace hydraopt {

struct SynthOptions {
  std::string preset = "tiny";  ///< tiny | small | llama-1b | llama-1b-shared | llama-7b
  int tasks = 0;                ///< 0: the preset's default
  int64_t rank = 0;             ///< LoRA rank; 0: the preset's (alpha keeps alpha / r)
  uint64_t seed = 0;
  int clusters = 0;             ///< task clusters for B heads; 0: preset default
  /// Unset: the preset's (0.45, 0.15, 0.6; llama-1b-shared 0.045, 0.015, 0.6).
  std::optional<double> drift;       ///< mean relative drift of A along shared directions
  std::optional<double> noise;       ///< relative isotropic drift of A
  std::optional<double> head_noise;  ///< within-cluster spread of B heads
  /// Non-empty: also write synthetic calibration statistics there, one
  /// file per task (<task>.safetensors, as `hydraopt calibrate` writes;
  /// model in docs/synth.md), each site's sketch of rank statistics_rank.
  std::filesystem::path statistics;
  int64_t statistics_rank = 64;
};

struct SynthPreset {
  std::string name;
  int64_t hidden = 0, intermediate = 0, kv_out = 0;
  int layers = 0;
  std::vector<std::string> projections;  ///< e.g. q_proj, k_proj, ...
  int64_t rank = 0;
  double alpha = 0;
  int tasks = 0;
  int clusters = 0;
  DType dtype = DType::F32;
  double drift = 0.45, noise = 0.15, head_noise = 0.6;
};

SynthPreset synth_preset(const std::string& name);

/// Writes one PEFT adapter directory per task into `out_dir` (created if
/// needed); returns the task directories in order.
std::vector<std::filesystem::path> synth_write(const std::filesystem::path& out_dir,
                                               const SynthOptions& options);

}  // namespace hydraopt
