// The lab's tiny byte-level LLaMA in libtorch, with optional PEFT-style LoRA
// on q/k/v/o_proj. The exact specification is in lab/README.md; the Eigen
// forward pass in src/runtime/ must reproduce these logits.
#pragma once

#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "hydraopt/dtype.h"

namespace lab {

inline constexpr int64_t kBos = 256, kEos = 257, kPad = 258, kSep = 259;

struct Config {
  int64_t vocab = 260, hidden = 256, intermediate = 688, layers = 4, heads = 8, kv_heads = 4,
          head_dim = 32, max_positions = 64;
  double rms_eps = 1e-5, rope_theta = 10000.0;

  nlohmann::json to_json() const;
  /// From a model directory's config.json (hydraopt's reader: every size
  /// checked before use).
  static Config read(const std::filesystem::path& dir);
  /// Throws std::runtime_error when sizes are inconsistent.
  void check() const;
};

/// LoRA factors of one linear module: y = W x + scale * B (A x).
struct LoraPair {
  torch::Tensor A;  ///< r x in
  torch::Tensor B;  ///< out x r
};

struct Layer {
  torch::Tensor q, k, v, o, gate, up, down;  // out x in
  torch::Tensor ln1, ln2;                    // hidden
};

/// Keys and values of past positions, per layer ([B, KV, T, hd], RoPE applied).
struct KVCache {
  std::vector<torch::Tensor> k, v;
};

/// Names of the LoRA target modules, in the order their A matrices are drawn.
inline const std::array<const char*, 4> kLoraModules = {"q_proj", "k_proj", "v_proj", "o_proj"};

class Model {
 public:
  Config cfg;
  torch::Tensor embed, final_norm, lm_head;
  std::vector<Layer> layers;

  // LoRA (empty unless add_lora / load_lora was called).
  int64_t lora_r = 0;
  double lora_alpha = 0;
  std::vector<std::array<LoraPair, 4>> lora;  // [layer][q,k,v,o]

  /// Hugging Face LLaMA-style init: N(0, 0.02) matrices, norms 1.
  static Model random(const Config& cfg, uint64_t seed);
  /// config.json + model.safetensors from `dir`.
  static Model load(const std::filesystem::path& dir);
  void save(const std::filesystem::path& dir) const;

  /// Fresh LoRA: A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming_uniform_(a=sqrt(5)))
  /// drawn from a generator seeded with `seed_a` in the order layer 0..L-1,
  /// q,k,v,o; B = 0.
  void add_lora(int64_t r, double alpha, uint64_t seed_a);
  /// A PEFT adapter directory.
  void load_lora(const std::filesystem::path& dir);
  /// The PEFT directory; factors stored as `dtype` (f32, or bf16 / f16 rounded to nearest).
  void save_lora(const std::filesystem::path& dir, hydraopt::DType dtype = hydraopt::DType::F32) const;
  bool has_lora() const { return !lora.empty(); }
  double lora_scale() const { return lora_alpha / static_cast<double>(lora_r); }

  std::vector<torch::Tensor> base_parameters() const;
  std::vector<torch::Tensor> lora_parameters() const;
  /// name -> tensor, Hugging Face names.
  std::vector<std::pair<std::string, torch::Tensor>> named_base() const;
  std::vector<std::pair<std::string, torch::Tensor>> named_lora() const;

  /// tokens: [B, T] int64. Returns logits [B, T, vocab]. With a cache, the
  /// tokens continue the cached positions and the cache is extended.
  torch::Tensor forward(const torch::Tensor& tokens, KVCache* cache = nullptr) const;

 private:
  torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w, int64_t layer, int module) const;
};

/// Number of elements in all tensors.
int64_t count_params(const std::vector<torch::Tensor>& ts);

}  // namespace lab
