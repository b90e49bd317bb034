// A tiny LLaMA-architecture language model and its forward pass (Eigen),
// for measuring task quality of adapters and bundles without Python.
//
// Files: a directory with config.json (Hugging Face LLaMA keys, read by
// llama_config_read: see llama_config.h) and model.safetensors (Hugging Face tensor names, any float dtype). Tokens
// are bytes 0..255 plus special ids from the config (bos, eos, pad, sep).
// The forward pass is pre-norm: RMSNorm, multi-head attention with
// grouped-query heads and rotary embeddings (Hugging Face rotate_half
// convention), SwiGLU MLP, final RMSNorm and an untied lm_head.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "hydraopt/adapter.h"
#include "hydraopt/calibration.h"
#include "hydraopt/llama_config.h"

namespace hydraopt {

using ModelConfig = LlamaConfig;

/// Low-rank updates per module name ("model.layers.0.self_attn.q_proj"):
/// the module computes W x + L (R x), L (out x k) with any scaling folded in,
/// R (k x in).
struct LowRank {
  Eigen::MatrixXf left, right;
};
using Deltas = std::map<std::string, LowRank>;

/// The updates of one PEFT adapter (scaling folded into L).
Deltas deltas_from_adapter(const Adapter& adapter);
/// The updates of one task of a bundle, as the bundle stores them.
Deltas deltas_from_bundle(const std::filesystem::path& bundle, const std::string& task);
/// Every task's updates from a bundle, read once (in the bundle's task order).
std::vector<Deltas> bundle_deltas(const std::filesystem::path& bundle);

class Model {
 public:
  static Model open(const std::filesystem::path& dir);
  Model(Model&&) noexcept;
  Model& operator=(Model&&) noexcept;
  ~Model();

  const ModelConfig& config() const;
  /// Logits for the positions of `tokens` from `from` on ((T - from) x
  /// vocab; every position by default). The rows are those of the whole
  /// pass: the last layer computes only the rows asked for.
  Eigen::MatrixXf forward(const std::vector<int>& tokens, const Deltas* deltas = nullptr, int64_t from = 0) const;
  /// Greedy decoding after `prompt` until eos or `max_new` tokens; returns
  /// the new tokens (eos excluded).
  std::vector<int> generate(const std::vector<int>& prompt, int max_new, const Deltas* deltas = nullptr) const;
  /// Whether greedy decoding after `prompt` yields exactly `answer` then eos,
  /// checked with one teacher-forced forward pass (each step's argmax must
  /// be the next answer token: the same decision greedy decoding makes).
  bool greedy_matches(const std::vector<int>& prompt, const std::vector<int>& answer,
                      const Deltas* deltas = nullptr) const;
  /// greedy_matches for many (prompt, answer) pairs in one packed forward pass.
  std::vector<bool> greedy_matches_batch(const std::vector<std::pair<std::vector<int>, std::vector<int>>>& examples,
                                         const Deltas* deltas = nullptr) const;

  /// Greedy decoding after each prompt until eos, `max_new[e]` tokens or the
  /// context's end, as generate() gives it, for many (prompt, guess) pairs
  /// at once. Packed teacher-forced passes over prompt + confirmed + guess:
  /// each pass confirms the argmaxes as long as they agree with the guess,
  /// and one more (Jacobi decoding), so an example whose greedy output is
  /// its guess then eos takes one pass, and every pass confirms a token. The
  /// guess for the next pass is the rest of the last pass's argmaxes.
  /// `eos`, where given, gets whether each output ended with eos.
  std::vector<std::vector<int>> greedy_outputs_batch(
      const std::vector<std::pair<std::vector<int>, std::vector<int>>>& examples, const std::vector<int>& max_new,
      const Deltas* deltas = nullptr, std::vector<bool>* eos = nullptr) const;

  /// Adds to `sites` what each linear module of every layer reads over
  /// the tokens of `seqs` (one forward pass, `deltas` applied): X^T X and the
  /// row count, one site per distinct input (q/k/v: the attention's
  /// normalised input; o; gate/up; down).
  void add_input_moments(const std::vector<std::vector<int>>& seqs, const Deltas* deltas, InputSites* sites) const;

  /// bos + UTF-8 bytes of `prompt` + sep.
  std::vector<int> encode_prompt(const std::string& prompt) const;

 private:
  Model();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace hydraopt
