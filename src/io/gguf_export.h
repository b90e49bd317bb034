// What hydraopt writes into GGUF files for llama.cpp (container: gguf.h).
//
// LoRA adapter (one task of a bundle):
//   general.architecture  string  the base model's ("llama": model_type
//                                 llama or mistral in its config.json)
//   general.type          string  "adapter"
//   general.name          string  the task name
//   adapter.type          string  "lora"
//   adapter.lora.alpha    f32     see "scale" below
//   general.alignment     u32     32
//   tensors, per adapted module of layer N:
//     blk.N.<t>.weight.lora_a   ne = {in, k}   A (k x in), row-major
//     blk.N.<t>.weight.lora_b   ne = {k, out}  B (out x k), row-major
//   with <t> = attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up,
//   ffn_down for q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj,
//   down_proj (llama.cpp's tensor names for the base weights, which it
//   matches by prefix). Any other module is an error naming it.
//
//   Scale: llama.cpp adds (user scale) * alpha / k * B (A x) per module,
//   with one alpha per file and k = that module's rank (B's ne[0]). A
//   bundle task has per-module ranks k_m and scales s_m, so we write
//   alpha = the most common k_m and store B_m = s_m * (k_m / alpha) * H C:
//   the effective update is exactly s_m H C A (up to the dtype rounding of
//   B), whatever the ranks.
//
//   Tensor types: a factor the bundle stores as floats is written in the
//   export's float dtype. One stored as group-wise integers (core/quant.h)
//   is written in llama.cpp's own block type when the values llama.cpp
//   must see are exactly that format's values with its groups along the
//   tensor's rows (ggml's blocks of 32 run along ne[0]): Q8_0 for int8
//   symmetric, Q4_0 for int4/int3/int2 symmetric, Q4_1 for int4/int3/int2
//   asymmetric (gguf.h gives the blocks; a group of 64 or 128 becomes 2 or
//   4 blocks with its scale). The test is exact: the tensor's values,
//   quantized again in the stored format, must give back every value
//   bit for bit. So lora_a (the body, k x in, groups along in; nothing is
//   folded into it) is a block type when in is a multiple of 32. lora_b
//   (out x k) is one only if its groups run along its rows (k >= out), no
//   core is multiplied in and the folded scale leaves the values exact;
//   with LoRA ranks below out that never holds, so lora_b is float. Every
//   other case (int8 asymmetric, rows not a multiple of 32, ...) is
//   written in the float dtype; export_gguf_lora reports the choice and
//   the reason per tensor. Exact values are not exact arithmetic:
//   against a block type, ggml's CPU matrix product rounds the activations
//   to 8-bit blocks first (vec_dot_type Q8_0 for Q8_0 and Q4_0, Q8_1 for
//   Q4_1, in ggml-cpu.c's type traits), which moved the tiny model's
//   logits by up to 1.15e-3 of their scale (the same values as F32
//   tensors: under 1e-6; tests/llama_cpp/run.sh);
//   block_types = false (CLI --float-tensors) writes every tensor in the
//   float dtype.
//
//   Row order: llama.cpp's LLaMA graph rotates adjacent pairs of each
//   head's query/key features, Hugging Face checkpoints rotate the two
//   halves (rotate_half), so llama.cpp's converter reorders the output
//   rows of q_proj (per head, heads = num_attention_heads) and k_proj
//   (heads = num_key_value_heads) of the base model. The LoRA update of
//   those modules must get the same order: B's rows are reordered (A is
//   untouched), with llama_rope_row_order().
//
// Base model (LLaMA, Hugging Face names):
//   general.architecture "llama", general.name, general.file_type (0 all
//   F32, 1 mostly F16, 32 mostly BF16), llama.context_length
//   (max_position_embeddings), llama.embedding_length, llama.block_count,
//   llama.feed_forward_length, llama.attention.head_count,
//   llama.attention.head_count_kv, llama.attention.key_length and
//   value_length (head_dim), llama.rope.dimension_count (head_dim),
//   llama.rope.freq_base, llama.attention.layer_norm_rms_epsilon,
//   llama.vocab_size.
//   Tensors: token_embd, output (absent when embeddings are tied),
//   output_norm, blk.N.{attn_norm, ffn_norm, attn_q, attn_k, attn_v,
//   attn_output, ffn_gate, ffn_up, ffn_down}.weight; attn_q / attn_k rows
//   reordered as above; norms always F32.
//   Vocabulary: a SentencePiece-type ("llama") vocabulary whose ids are
//   ours: ids 0-255 are the byte tokens "<0x00>".."<0xFF>" (type 6, byte),
//   bos/eos/pad/sep from config.json are "<s>", "</s>", "<pad>", "<sep>"
//   (type 3, control), other ids "<unused_N>" (type 5). With
//   add_space_prefix false and add_bos_token true, llama.cpp's tokenizer
//   turns text into bos + its UTF-8 bytes, exactly our encoding (no
//   merges: every byte falls back to its byte token).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include "core/quant.h"
#include "hydraopt/dtype.h"
#include "hydraopt/gguf.h"
#include "hydraopt/llama_config.h"
#include "io/bundle.h"
#include "io/gguf.h"

namespace hydraopt::io {

/// `path`'s config (a model directory or its config.json) if llama.cpp's
/// "llama" graph runs that model: model_type llama or mistral, no
/// rope_scaling, no attention or MLP biases; else an Error naming the file.
LlamaConfig gguf_base_config(const std::filesystem::path& path);

/// The GGUF tensor for `m`, the values llama.cpp should see, of a factor
/// stored in `stored` (nullopt: floats): a block type if `m` is exactly
/// `stored`'s values with its groups along m's rows, else `m` in `dtype`.
/// `folded` says what was multiplied into the stored factor to give m
/// ("" if nothing): it only words the reason. `block_types` false: always
/// `dtype`. Fills `choice` (type, stored, reason; not task or tensor).
GgufTensor gguf_lora_tensor(std::string name, const Eigen::MatrixXd& m,
                            const std::optional<QuantFormat>& stored, DType dtype,
                            const std::string& folded, GgufTensorChoice* choice,
                            bool block_types = true);

/// Task `task` of `b` as a llama.cpp LoRA adapter file; returns how each
/// tensor was written. `block_types` false: every tensor in `dtype`.
std::vector<GgufTensorChoice> export_gguf_lora(const Bundle& b, size_t task,
                                               const LlamaConfig& base,
                                               const std::filesystem::path& file, DType dtype,
                                               const std::string& label = "bundle",
                                               bool block_types = true);

/// Task `task` of `b` (every task, as out/<task>.gguf, when empty) as
/// llama.cpp LoRA files; `label` names the bundle in errors. What
/// Bundle::export_gguf does (include/hydraopt/bundle.h).
std::vector<GgufTensorChoice> export_bundle_gguf(const Bundle& b, const std::string& label,
                                                 const std::string& task,
                                                 const std::filesystem::path& base_model,
                                                 const std::filesystem::path& out,
                                                 std::optional<DType> dtype,
                                                 bool block_types = true);

/// Every task as `dir`/<task>.gguf; the directory appears complete or not at all.
std::vector<GgufTensorChoice> export_gguf_lora_all(const Bundle& b, const LlamaConfig& base,
                                                   const std::filesystem::path& dir, DType dtype,
                                                   const std::string& label = "bundle",
                                                   bool block_types = true);

/// The base model directory as a GGUF model file.
void export_gguf_model(const std::filesystem::path& model_dir, const std::filesystem::path& file,
                       DType dtype);

}  // namespace hydraopt::io
