// Export to llama.cpp: a LLaMA base model (Hugging Face config.json +
// model.safetensors) as a GGUF model; a bundle's tasks go through
// Bundle::export_gguf (hydraopt/bundle.h). What is written, key by key, is documented in src/io/gguf_export.h;
// the container itself in src/io/gguf.h.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "hydraopt/dtype.h"

namespace hydraopt {

/// Writes a LLaMA-architecture model directory (config.json +
/// model.safetensors, Hugging Face names, byte-level vocabulary: ids 0-255
/// are bytes, the special ids come from config.json) as a GGUF model file
/// llama.cpp loads. `dtype` of the matrices defaults to F32 (norms are F32).
void export_model_gguf(const std::filesystem::path& model_dir, const std::filesystem::path& out,
                       std::optional<DType> dtype = std::nullopt);

}  // namespace hydraopt
