// Export to llama.cpp: bundle tasks as GGUF LoRA adapters, and a LLaMA
// base model (Hugging Face config.json + model.safetensors) as a GGUF
// model. What is written, key by key, is documented in src/io/gguf_export.h;
// the container itself in src/io/gguf.h.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "hydraopt/dtype.h"

namespace hydraopt {

/// Writes one task of a bundle as a llama.cpp LoRA adapter file `out`
/// (.gguf), or every task as `out`/<task>.gguf when `task` is empty (the
/// directory created complete or not at all). `base_model` is the base
/// model's directory (or its config.json): GGUF needs its architecture and
/// head counts. `dtype` (F32, F16 or BF16) defaults to the bundle's.
void export_bundle_gguf(const std::filesystem::path& bundle, const std::string& task,
                        const std::filesystem::path& base_model, const std::filesystem::path& out,
                        std::optional<DType> dtype = std::nullopt);

/// Writes a LLaMA-architecture model directory (config.json +
/// model.safetensors, Hugging Face names, byte-level vocabulary: ids 0-255
/// are bytes, the special ids come from config.json) as a GGUF model file
/// llama.cpp loads. `dtype` of the matrices defaults to F32 (norms are F32).
void export_model_gguf(const std::filesystem::path& model_dir, const std::filesystem::path& out,
                       std::optional<DType> dtype = std::nullopt);

}  // namespace hydraopt
