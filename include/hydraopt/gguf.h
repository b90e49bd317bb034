// Export to llama.cpp: a LLaMA base model (Hugging Face config.json +
// model.safetensors) as a GGUF model; a bundle's tasks go through
// Bundle::export_gguf (hydraopt/bundle.h). What is written, key by key, is documented in src/io/gguf_export.h;
// the container itself in src/io/gguf.h.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "hydraopt/dtype.h"

namespace hydraopt {

/// How a LoRA export (Bundle::export_gguf) wrote one tensor. A factor the
/// bundle stores as group-wise integers goes out in llama.cpp's own block
/// type when its values map onto it exactly (Q8_0, Q4_0, Q4_1), else as
/// the export's float dtype, with the reason.
struct GgufTensorChoice {
  std::string task;    ///< the task, i.e. the file
  std::string tensor;  ///< e.g. "blk.0.attn_q.weight.lora_a"
  std::string type;    ///< the ggml type written: "Q8_0", "Q4_0", "Q4_1", "F32", "F16" or "BF16"
  std::string stored;  ///< the bundle's storage of that factor: "int4-g32-sym", or "float"
  std::string reason;  ///< why an integer factor was written as floats; empty otherwise
};

/// Writes a LLaMA-architecture model directory (config.json +
/// model.safetensors, Hugging Face names, byte-level vocabulary: ids 0-255
/// are bytes, the special ids come from config.json) as a GGUF model file
/// llama.cpp loads. `dtype` of the matrices defaults to F32 (norms are F32).
void export_model_gguf(const std::filesystem::path& model_dir, const std::filesystem::path& out,
                       std::optional<DType> dtype = std::nullopt);

}  // namespace hydraopt
