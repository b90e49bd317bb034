// adapter_config.json of a PEFT LoRA adapter: the keys hydraopt uses (see
// docs/formats.md), parsed and range-checked from untrusted text.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace hydraopt::io {

struct PeftConfig {
  int64_t r = 8;
  double alpha = 8;  // PEFT's LoraConfig default, independent of r
  bool rslora = false;
  bool fan_in_fan_out = false;
  std::string base_model;
  std::vector<std::string> target_modules;
  std::vector<std::pair<std::string, int64_t>> rank_pattern;
  std::vector<std::pair<std::string, double>> alpha_pattern;
};

/// Parses the text of an adapter_config.json; throws hydraopt::Error naming
/// `file` and the key on anything invalid (r and rank_pattern values must be
/// integers in 1..65536, alphas finite numbers).
PeftConfig parse_peft_config(std::string_view text, const std::string& file);

}  // namespace hydraopt::io
