// The one LLaMA config.json reader (Model::open and the GGUF export): every
// size checked before use, every bad value an Error naming the file and key.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "hydraopt/error.h"
#include "hydraopt/llama_config.h"
#include "hydraopt/model.h"
#include "io/gguf_export.h"
#include "test_util.h"

namespace hydraopt {
namespace {

namespace fs = std::filesystem;
using test::error_of;

const fs::path kModel = fs::path(HYDRAOPT_SOURCE_DIR) / "assets" / "model";

// The shipped model's config.json with the keys of `patch` (a JSON object)
// set to its values and `remove` (if any) removed.
std::string shipped_with(const std::string& patch, const std::string& remove = "") {
  auto j = nlohmann::ordered_json::parse(test::read_text(kModel / "config.json"));
  const auto changes = nlohmann::ordered_json::parse(patch);
  for (auto& [k, v] : changes.items()) j[k] = v;
  if (!remove.empty()) j.erase(remove);
  return j.dump(1);
}

TEST(LlamaConfig, ReadsTheShippedModel) {
  const LlamaConfig c = llama_config_read(kModel);
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.name, "model");  // no _name_or_path: the directory's name
  EXPECT_EQ(c.hidden, 256);
  EXPECT_EQ(c.intermediate, 688);
  EXPECT_EQ(c.layers, 4);
  EXPECT_EQ(c.heads, 8);
  EXPECT_EQ(c.kv_heads, 4);
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_EQ(c.vocab, 260);
  EXPECT_EQ(c.max_positions, 64);
  EXPECT_EQ(c.rms_eps, 1e-5);
  EXPECT_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.bos, 256);
  EXPECT_EQ(c.sep, 259);
  EXPECT_FALSE(c.tied_embeddings || c.rope_scaling || c.attention_bias || c.mlp_bias);
  EXPECT_EQ(llama_config_read(kModel / "config.json").hidden, 256);  // the file itself
}

TEST(LlamaConfig, DefaultsForAbsentOrNullKeys) {
  const std::string text = R"({"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
    "num_attention_heads": 4, "vocab_size": 300, "num_key_value_heads": null, "head_dim": null,
    "pad_token_id": null, "rope_scaling": null, "_name_or_path": "org/m", "eos_token_id": 290})";
  const LlamaConfig c = llama_config_parse(text, "config.json");
  EXPECT_EQ(c.kv_heads, 4);
  EXPECT_EQ(c.head_dim, 16);  // hidden / heads
  EXPECT_EQ(c.max_positions, 2048);
  EXPECT_EQ(c.pad, 258);
  EXPECT_EQ(c.eos, 290);
  EXPECT_EQ(c.name, "org/m");
  EXPECT_FALSE(c.rope_scaling);
  EXPECT_TRUE(llama_config_parse(R"({"hidden_size": 64, "intermediate_size": 96,
    "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 300,
    "rope_scaling": {"type": "linear", "factor": 2}})",
                                 "config.json")
                  .rope_scaling);
}

struct Bad {
  std::string patch;    // JSON object applied to the shipped config
  std::string key;      // the key the error must name
  std::string message;  // expected in the error after the key
  std::string remove = "";
};

// Each case changes the shipped config. Read directly, by Model::open and by
// the GGUF export, it is an Error naming config.json and the key. (The first
// three made Model::open divide by zero: SIGFPE.)
TEST(LlamaConfig, BadValuesAreErrorsNamingTheFileAndKey) {
  const std::vector<Bad> cases = {
      {R"({"num_attention_heads": 0})", "num_attention_heads",
       "must be an integer in 1..16777216 (got 0)"},
      {R"({"num_attention_heads": 0})", "num_attention_heads", "(got 0)", "head_dim"},
      {R"({"num_key_value_heads": 0})", "num_key_value_heads", "(got 0)"},
      {R"({"hidden_size": 0})", "hidden_size", "(got 0)"},
      {R"({"hidden_size": -256})", "hidden_size", "(got -256)"},
      {R"({"num_hidden_layers": 0})", "num_hidden_layers", "(got 0)"},
      {R"({"num_hidden_layers": -1})", "num_hidden_layers", "(got -1)"},
      {R"({"vocab_size": 0})", "vocab_size", "(got 0)"},
      {R"({"vocab_size": -260})", "vocab_size", "(got -260)"},
      {R"({"intermediate_size": 0})", "intermediate_size", "(got 0)"},
      {R"({"intermediate_size": -688})", "intermediate_size", "(got -688)"},
      {R"({"intermediate_size": 16777217})", "intermediate_size", "(got 16777217)"},
      {R"({"head_dim": 31})", "head_dim", "(31) must be even"},
      {R"({"head_dim": 0})", "head_dim", "(got 0)"},
      {R"({"hidden_size": "256"})", "hidden_size",
       "must be an integer in 1..16777216 (got a string)"},
      {R"({"hidden_size": 256.5})", "hidden_size", "(got 256.5)"},
      {R"({"hidden_size": 256.0})", "hidden_size", "must be an integer"},
      {R"({"vocab_size": 1e300})", "vocab_size", "(got 1e+300)"},
      {R"({"num_hidden_layers": 18446744073709551615})", "num_hidden_layers",
       "(got 18446744073709551615)"},
      {R"({"num_hidden_layers": 9223372036854775808})", "num_hidden_layers",
       "(got 9223372036854775808)"},
      {R"({"num_hidden_layers": -9223372036854775808})", "num_hidden_layers",
       "(got -9223372036854775808)"},
      {R"({"num_hidden_layers": [4]})", "num_hidden_layers", "(got a array)"},
      {R"({})", "hidden_size", "is missing", "hidden_size"},
      {R"({"hidden_size": null})", "hidden_size", "is missing"},
      {R"({"num_key_value_heads": 3})", "num_key_value_heads",
       "(3) must divide num_attention_heads (8)"},
      {R"({"max_position_embeddings": 0})", "max_position_embeddings", "(got 0)"},
      {R"({"max_position_embeddings": 1048577})", "max_position_embeddings", "1..1048576"},
      {R"({"rms_norm_eps": 0})", "rms_norm_eps", "must be a number in (0, 1) (got 0)"},
      {R"({"rms_norm_eps": -1e-5})", "rms_norm_eps", "(0, 1)"},
      {R"({"rms_norm_eps": "1e-5"})", "rms_norm_eps", "(got a string)"},
      {R"({"rope_theta": 0})", "rope_theta", "(got 0)"},
      {R"({"rope_theta": 1e300})", "rope_theta", "(got 1e+300)"},
      {R"({"eos_token_id": 260})", "eos_token_id", "(260) must be below vocab_size (260)"},
      {R"({"eos_token_id": -1})", "eos_token_id", "(got -1)"},
      {R"({"eos_token_id": [257]})", "eos_token_id", "(got a array)"},
      {R"({"tie_word_embeddings": "yes"})", "tie_word_embeddings", "must be true or false"},
      {R"({"model_type": 5})", "model_type", "must be a string"},
  };
  for (const auto& c : cases) {
    test::TempDir d;
    test::write_text(d / "config.json", shipped_with(c.patch, c.remove));
    const std::string want = (d / "config.json").string() + ": " + c.key + " ";
    const std::vector<std::pair<const char*, std::function<void()>>> readers = {
        {"read", [&] { llama_config_read(d.path()); }},
        {"Model::open", [&] { Model::open(d.path()); }},
        {"GGUF export", [&] { io::gguf_base_config(d.path()); }}};
    for (const auto& [how, f] : readers) {
      const std::string e = error_of(f);
      EXPECT_EQ(e.rfind(want, 0), 0u) << c.patch << " (" << how << "): " << e;
      EXPECT_NE(e.find(c.message, want.size()), std::string::npos)
          << c.patch << " (" << how << "): " << e;
    }
  }
}

TEST(LlamaConfig, SizesThatOnlyFailTogether) {
  auto parse = [](const std::string& extra) {
    return llama_config_parse(
        R"({"hidden_size": 250, "intermediate_size": 96, "num_hidden_layers": 2,
      "num_attention_heads": 8, "vocab_size": 300)" +
            extra + "}",
        "m/config.json");
  };
  // No head_dim: hidden / heads must divide exactly and be even.
  EXPECT_NE(
      error_of([&] { parse(""); }).find("m/config.json: head_dim is missing and hidden_size (250)"),
      std::string::npos);
  EXPECT_NE(error_of([&] { parse(R"(, "hidden_size": 248)"); }).find("head_dim (31) must be even"),
            std::string::npos);
  EXPECT_EQ(parse(R"(, "hidden_size": 248, "head_dim": 32)").head_dim, 32);
  // Both in range, their product not.
  EXPECT_NE(error_of([&] {
              parse(R"(, "num_attention_heads": 4096, "head_dim": 8192)");
            }).find("m/config.json: num_attention_heads times head_dim"),
            std::string::npos);
  // Default special ids need a vocabulary of 260.
  EXPECT_NE(error_of([&] {
              parse(R"(, "hidden_size": 256, "vocab_size": 100)");
            }).find("bos_token_id default (256) must be below vocab_size (100)"),
            std::string::npos);
}

TEST(LlamaConfig, NotAConfigIsAnError) {
  for (const std::string text :
       {"", "[]", "{\"hidden_size\": 1e400}", "{\"hidden_size\": 256,", "null"}) {
    const std::string e = error_of([&] { llama_config_parse(text, "x/config.json"); });
    EXPECT_EQ(e.rfind("x/config.json: not ", 0), 0u) << text << ": " << e;
  }
  // A deeply nested value is described by its type, not printed recursively.
  const size_t depth = 100000;
  const std::string nested =
      R"({"hidden_size":)" + std::string(depth, '[') + std::string(depth, ']') + "}";
  EXPECT_NE(
      error_of([&] { llama_config_parse(nested, "config.json"); }).find("hidden_size must be"),
      std::string::npos);
  test::TempDir d;
  EXPECT_NE(error_of([&] { llama_config_read(d.path()); }).find("config.json: cannot open"),
            std::string::npos);
}

// Export-only restrictions: the runtime reads these configs, the export refuses them.
TEST(LlamaConfig, GgufExportRefusesWhatLlamaCppDoesNotRun) {
  const std::vector<Bad> cases = {
      {R"({"model_type": "gpt2"})", "", "model_type 'gpt2' is not supported"},
      {R"({})", "", "model_type '' is not supported", "model_type"},
      {R"({"rope_scaling": {"type": "linear", "factor": 2.0}})", "",
       "rope_scaling is not supported"},
      {R"({"attention_bias": true})", "", "attention or MLP biases are not supported"},
      {R"({"mlp_bias": true})", "", "attention or MLP biases are not supported"},
  };
  for (const auto& c : cases) {
    test::TempDir d;
    test::write_text(d / "config.json", shipped_with(c.patch, c.remove));
    EXPECT_NO_THROW(llama_config_read(d.path())) << c.patch;
    EXPECT_NE(error_of([&] {
                io::gguf_base_config(d.path());
              }).find((d / "config.json").string() + ": " + c.message),
              std::string::npos)
        << c.patch;
  }
  test::TempDir d;
  test::write_text(d / "config.json", shipped_with(R"({"model_type": "mistral"})"));
  EXPECT_EQ(io::gguf_base_config(d.path()).heads, 8);
}

}  // namespace
}  // namespace hydraopt
