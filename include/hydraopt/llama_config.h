// config.json of a Hugging Face LLaMA model directory: the one reader used
// by the forward pass (Model::open) and the llama.cpp GGUF export.
//
// Keys read (anything else is ignored):
//   hidden_size, intermediate_size, num_hidden_layers,
//   num_attention_heads, vocab_size          integers in 1..2^24, required
//   num_key_value_heads                      integer, divides num_attention_heads
//                                            (default: num_attention_heads)
//   head_dim                                 even integer (default:
//                                            hidden_size / num_attention_heads,
//                                            which must then divide exactly)
//   max_position_embeddings                  integer in 1..2^20 (default 2048;
//                                            the forward pass tabulates rotary
//                                            angles for every position)
//   rms_norm_eps                             number in (0, 1) (default 1e-5)
//   rope_theta                               number in (0, FLT_MAX] (default 1e4)
//   bos/eos/pad/sep_token_id                 integers below vocab_size
//                                            (default 256, 257, 258, 259)
//   tie_word_embeddings, attention_bias,
//   mlp_bias                                 true/false (default false)
//   model_type, _name_or_path                strings
//   rope_scaling                             only whether it is present
// A null value counts as absent. Every problem (not JSON, a wrong type, a
// float or a negative value where a size belongs, a size out of range or
// inconsistent) throws hydraopt::Error naming the file and the key; no size
// is used in arithmetic before it is checked.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace hydraopt {

struct LlamaConfig {
  std::string name;        ///< _name_or_path, else the model directory's name
  std::string model_type;  ///< as written ("llama", "mistral", ...); "" if absent
  int64_t hidden = 0, intermediate = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0,
          vocab = 0;
  int64_t max_positions = 2048;  ///< max_position_embeddings
  double rms_eps = 1e-5, rope_theta = 10000;
  int32_t bos = 256, eos = 257, pad = 258, sep = 259;
  bool tied_embeddings = false;
  /// What the forward pass and the GGUF export do not implement; the
  /// export refuses them.
  bool rope_scaling = false, attention_bias = false, mlp_bias = false;
};

/// Reads `path`: a model directory (its config.json) or the file itself.
LlamaConfig llama_config_read(const std::filesystem::path& path);

/// Parses the text of a config.json; `file` names it in errors. `name` is
/// left empty when the text has no _name_or_path.
LlamaConfig llama_config_parse(std::string_view text, const std::string& file);

}  // namespace hydraopt
