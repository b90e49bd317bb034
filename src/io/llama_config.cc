// The LLaMA config.json reader (see include/hydraopt/llama_config.h).
#include "hydraopt/llama_config.h"

#include <fmt/format.h>

#include <cfloat>
#include <cmath>
#include <nlohmann/json.hpp>
#include <optional>

#include "hydraopt/error.h"
#include "io/text_file.h"

namespace hydraopt {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr size_t kMaxConfigBytes = 16 << 20;
constexpr int64_t kMaxSize = int64_t{1} << 24;
constexpr int64_t kMaxPositions = int64_t{1} << 20;

// What a value is, for an error message; never dump() (it recurses, and a
// deeply nested value would overflow the stack).
std::string describe(const json& v) {
  if (v.is_number_unsigned()) return std::to_string(v.get<uint64_t>());
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  if (v.is_number_float()) return fmt::format("{}", v.get<double>());
  if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
  return std::string("a ") + v.type_name();
}

class Reader {
 public:
  Reader(const json& j, const std::string& file) : j_(j), file_(file) {}

  [[noreturn]] void fail(const std::string& key, const std::string& why) const {
    throw Error(file_, "", key + " " + why);
  }

  // The value of `key`, or null if it is absent or null.
  const json* find(const char* key) const {
    auto it = j_.find(key);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }

  // An integer in lo..hi; `def` when absent, an error when absent without one.
  int64_t integer(const char* key, int64_t lo, int64_t hi, std::optional<int64_t> def = {}) const {
    const json* v = find(key);
    if (!v) {
      if (!def) fail(key, "is missing");
      return *def;
    }
    const std::string range = fmt::format("an integer in {}..{}", lo, hi);
    if (!v->is_number_integer()) fail(key, "must be " + range + " (got " + describe(*v) + ")");
    // Non-negative integers parse as unsigned: compare before any narrowing.
    const bool in_range = v->is_number_unsigned()
                              ? v->get<uint64_t>() <= static_cast<uint64_t>(hi) &&
                                    static_cast<int64_t>(v->get<uint64_t>()) >= lo
                              : v->get<int64_t>() >= lo && v->get<int64_t>() <= hi;
    if (!in_range) fail(key, "must be " + range + " (got " + describe(*v) + ")");
    return v->get<int64_t>();
  }

  // A finite number in (lo, hi] (or (lo, hi) when `open_hi`).
  double number(const char* key, double lo, double hi, bool open_hi, double def) const {
    const json* v = find(key);
    if (!v) return def;
    const std::string range = fmt::format("a number in ({}, {}{}", lo, hi, open_hi ? ")" : "]");
    if (!v->is_number()) fail(key, "must be " + range + " (got " + describe(*v) + ")");
    const double x = v->get<double>();
    if (!std::isfinite(x) || !(x > lo) || x > hi || (open_hi && x == hi)) {
      fail(key, "must be " + range + " (got " + describe(*v) + ")");
    }
    return x;
  }

  bool boolean(const char* key) const {
    const json* v = find(key);
    if (!v) return false;
    if (!v->is_boolean()) fail(key, "must be true or false (got " + describe(*v) + ")");
    return v->get<bool>();
  }

  std::string string(const char* key) const {
    const json* v = find(key);
    if (!v) return "";
    if (!v->is_string()) fail(key, "must be a string (got " + describe(*v) + ")");
    return v->get<std::string>();
  }

 private:
  const json& j_;
  const std::string& file_;
};

}  // namespace

LlamaConfig llama_config_parse(std::string_view text, const std::string& file) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(file, "", std::string("not valid JSON: ") + e.what());
  }
  if (!j.is_object()) throw Error(file, "", "not a JSON object");
  const Reader r(j, file);
  LlamaConfig c;
  c.name = r.string("_name_or_path");
  c.model_type = r.string("model_type");
  c.hidden = r.integer("hidden_size", 1, kMaxSize);
  c.intermediate = r.integer("intermediate_size", 1, kMaxSize);
  c.layers = r.integer("num_hidden_layers", 1, kMaxSize);
  c.heads = r.integer("num_attention_heads", 1, kMaxSize);
  c.kv_heads = r.integer("num_key_value_heads", 1, kMaxSize, c.heads);
  if (c.heads % c.kv_heads != 0) {
    r.fail("num_key_value_heads",
           fmt::format("({}) must divide num_attention_heads ({})", c.kv_heads, c.heads));
  }
  if (r.find("head_dim")) {
    c.head_dim = r.integer("head_dim", 1, kMaxSize);
  } else if (c.hidden % c.heads != 0) {
    r.fail("head_dim", fmt::format("is missing and hidden_size ({}) is not a multiple of "
                                   "num_attention_heads ({})",
                                   c.hidden, c.heads));
  } else {
    c.head_dim = c.hidden / c.heads;
  }
  if (c.head_dim % 2 != 0) {
    r.fail("head_dim",
           fmt::format("({}) must be even (rotary embeddings rotate pairs)", c.head_dim));
  }
  if (c.heads * c.head_dim > kMaxSize) {  // both <= 2^24: no overflow
    r.fail("num_attention_heads", fmt::format("times head_dim must be at most {}", kMaxSize));
  }
  c.vocab = r.integer("vocab_size", 1, kMaxSize);
  c.max_positions = r.integer("max_position_embeddings", 1, kMaxPositions, c.max_positions);
  c.rms_eps = r.number("rms_norm_eps", 0, 1, true, c.rms_eps);
  c.rope_theta = r.number("rope_theta", 0, FLT_MAX, false, c.rope_theta);  // GGUF stores f32
  for (auto [key, id] : {std::pair{"bos_token_id", &c.bos}, std::pair{"eos_token_id", &c.eos},
                         std::pair{"pad_token_id", &c.pad}, std::pair{"sep_token_id", &c.sep}}) {
    const bool given = r.find(key) != nullptr;
    const int64_t v = r.integer(key, 0, kMaxSize, *id);
    if (v >= c.vocab) {
      r.fail(key, fmt::format("{}({}) must be below vocab_size ({})", given ? "" : "default ", v,
                              c.vocab));
    }
    *id = static_cast<int32_t>(v);
  }
  c.tied_embeddings = r.boolean("tie_word_embeddings");
  c.attention_bias = r.boolean("attention_bias");
  c.mlp_bias = r.boolean("mlp_bias");
  c.rope_scaling = r.find("rope_scaling") != nullptr;
  return c;
}

LlamaConfig llama_config_read(const fs::path& path) {
  const fs::path file = fs::is_directory(path) ? path / "config.json" : path;
  LlamaConfig c = llama_config_parse(io::read_text(file, kMaxConfigBytes), file.string());
  if (c.name.empty()) c.name = fs::absolute(file).parent_path().filename().string();
  return c;
}

}  // namespace hydraopt
