// libFuzzer target: a LLaMA model's config.json as Model::open and the GGUF
// export read it. Input: the config text. Beyond crashes and UB, a config
// that is accepted must satisfy what its users rely on without checking
// (sizes positive and bounded, heads divisible, head_dim even, token ids
// in the vocabulary); a violation aborts.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "hydraopt/error.h"
#include "hydraopt/llama_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace hydraopt;
  try {
    const LlamaConfig c = llama_config_parse({reinterpret_cast<const char*>(data), size}, "fuzz");
    const int64_t cap = int64_t{1} << 24;
    for (int64_t v : {c.hidden, c.intermediate, c.layers, c.heads, c.kv_heads, c.head_dim, c.vocab,
                      c.max_positions}) {
      if (v <= 0 || v > cap) std::abort();
    }
    if (c.heads % c.kv_heads != 0 || c.head_dim % 2 != 0 || c.heads * c.head_dim > cap)
      std::abort();
    for (int32_t id : {c.bos, c.eos, c.pad, c.sep}) {
      if (id < 0 || id >= c.vocab) std::abort();
    }
    if (!(c.rms_eps > 0 && c.rms_eps < 1 && c.rope_theta > 0 && c.rope_theta < 3.5e38))
      std::abort();
  } catch (const Error&) {
  }
  return 0;
}
