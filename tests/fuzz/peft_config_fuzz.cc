// libFuzzer target: adapter_config.json parsing, then rank_pattern /
// alpha_pattern compilation and matching as Adapter::open does.
// Input: the config text.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "hydraopt/error.h"
#include "io/pattern.h"
#include "io/peft_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace hydraopt;
  try {
    auto c = io::parse_peft_config({reinterpret_cast<const char*>(data), size}, "fuzz");
    std::vector<std::string> rank_keys, alpha_keys;
    for (auto& [k, v] : c.rank_pattern) rank_keys.push_back(k);
    for (auto& [k, v] : c.alpha_pattern) alpha_keys.push_back(k);
    io::SuffixPatterns ranks(rank_keys, "fuzz"), alphas(alpha_keys, "fuzz");
    for (const char* m :
         {"model.layers.0.self_attn.q_proj", "model.layers.11.mlp.down_proj", "q_proj", ""}) {
      ranks.match(m);
      alphas.match(m);
    }
    for (auto& t : c.target_modules) ranks.match(t);
  } catch (const Error&) {
  }
  return 0;
}
