// GGUF export: the container read back by an independent little reader,
// the q/k row order against a dense rotary reference, the LoRA scale fold,
// and bad inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>

#include "gguf_reader.h"
#include "hydraopt/error.h"
#include "io/gguf.h"
#include "io/gguf_export.h"
#include "test_util.h"

namespace hydraopt {
namespace {

namespace fs = std::filesystem;
using Eigen::MatrixXd;
using Eigen::VectorXd;
using test::Parsed;

TEST(Gguf, ContainerReadsBackWithAlignedTensors) {
  test::TempDir dir;
  const MatrixXd a = test::random_matrix(3, 5, 1);  // odd sizes: padding between tensors
  const VectorXd v = test::random_matrix(7, 1, 2).col(0);
  io::gguf_write(dir / "x.gguf",
                 {io::gguf_kv_string("general.architecture", "llama"), io::gguf_kv_u32("n", 7),
                  io::gguf_kv_f32("f", 0.5f), io::gguf_kv_bool("b", true),
                  io::gguf_kv_strings("s", {"a", "bc"}), io::gguf_kv_i32s("i", {-1, 2})},
                 {io::gguf_tensor("a", a, DType::F32), io::gguf_tensor("h", a, DType::F16),
                  io::gguf_tensor("v", v, DType::F32), io::gguf_tensor("bf", a, DType::BF16)});
  Parsed g = Parsed::read(dir / "x.gguf");
  EXPECT_EQ(g.version, 3u);
  EXPECT_EQ(g.string_kv("general.architecture"), "llama");
  EXPECT_EQ(g.u32_kv("general.alignment"), 32u);  // added when absent
  EXPECT_EQ(g.u32_kv("n"), 7u);
  EXPECT_EQ(g.f32_kv("f"), 0.5f);
  EXPECT_EQ(g.kv.at("b").second, std::string(1, '\1'));
  ASSERT_EQ(g.order, (std::vector<std::string>{"a", "h", "v", "bf"}));
  EXPECT_EQ(g.tensors["a"].ne, (std::vector<uint64_t>{5, 3}));  // ne[0] = columns
  EXPECT_EQ(g.tensors["h"].type, 1u);
  EXPECT_EQ(g.tensors["bf"].type, 30u);
  EXPECT_EQ(g.tensors["v"].ne, (std::vector<uint64_t>{7}));
  uint64_t expect = 0;
  for (const auto& [name, bytes] :
       std::vector<std::pair<std::string, uint64_t>>{{"a", 60}, {"h", 30}, {"v", 28}, {"bf", 30}}) {
    EXPECT_EQ(g.tensors[name].offset, expect) << name;
    EXPECT_EQ(g.tensors[name].offset % 32, 0u) << name;
    expect += (bytes + 31) / 32 * 32;
  }
  EXPECT_EQ(g.data_start % 32, 0u);
  EXPECT_EQ(g.file_size, g.data_start + expect);  // the last tensor padded too
  EXPECT_TRUE(g.matrix("a").isApprox(a.cast<float>().cast<double>(), 0));
}

TEST(Gguf, RejectsWhatLlamaCppCannotRead) {
  const MatrixXd a = MatrixXd::Ones(2, 2);
  auto t = io::gguf_tensor("a", a, DType::F32);
  EXPECT_THROW(io::gguf_serialize({}, {t, t}), Error);  // duplicate name
  EXPECT_THROW(io::gguf_serialize({io::gguf_kv_u32("k", 1), io::gguf_kv_u32("k", 2)}, {}), Error);
  EXPECT_THROW(io::gguf_serialize({}, {io::gguf_tensor(std::string(64, 'x'), a, DType::F32)}),
               Error);
  t.bytes.pop_back();
  EXPECT_THROW(io::gguf_serialize({}, {t}), Error);
  EXPECT_THROW(io::gguf_tensor("a", a, DType::F64), Error);
}

// Hugging Face rotary embedding (rotate_half: feature j pairs with j + hd/2).
VectorXd rope_halves(const VectorXd& q, int64_t heads, int64_t hd, double pos) {
  VectorXd out = q;
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t j = 0; j < hd / 2; ++j) {
      const double th = pos * std::pow(10000.0, -2.0 * j / hd);
      const double a = q(h * hd + j), b = q(h * hd + j + hd / 2);
      out(h * hd + j) = a * std::cos(th) - b * std::sin(th);
      out(h * hd + j + hd / 2) = b * std::cos(th) + a * std::sin(th);
    }
  }
  return out;
}

// llama.cpp's LLaMA rotary embedding (adjacent pairs 2j, 2j + 1).
VectorXd rope_pairs(const VectorXd& q, int64_t heads, int64_t hd, double pos) {
  VectorXd out = q;
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t j = 0; j < hd / 2; ++j) {
      const double th = pos * std::pow(10000.0, -2.0 * j / hd);
      const double a = q(h * hd + 2 * j), b = q(h * hd + 2 * j + 1);
      out(h * hd + 2 * j) = a * std::cos(th) - b * std::sin(th);
      out(h * hd + 2 * j + 1) = b * std::cos(th) + a * std::sin(th);
    }
  }
  return out;
}

TEST(Gguf, RowOrderMakesPairRotaryEqualHalfRotary) {
  const int64_t heads = 4, kv_heads = 2, hd = 8, in = 6;
  const MatrixXd wq = test::random_matrix(heads * hd, in, 3),
                 wk = test::random_matrix(kv_heads * hd, in, 4);
  const VectorXd x = test::random_matrix(in, 1, 5).col(0), y = test::random_matrix(in, 1, 6).col(0);
  const MatrixXd pq = io::permute_rows(wq, io::llama_rope_row_order(heads, hd));
  const MatrixXd pk = io::permute_rows(wk, io::llama_rope_row_order(kv_heads, hd));
  const VectorXd q_hf = rope_halves(wq * x, heads, hd, 5),
                 k_hf = rope_halves(wk * y, kv_heads, hd, 2);
  const VectorXd q_ll = rope_pairs(pq * x, heads, hd, 5),
                 k_ll = rope_pairs(pk * y, kv_heads, hd, 2);
  for (int64_t h = 0; h < heads; ++h) {  // every attention score is unchanged (grouped heads)
    const int64_t g = h / (heads / kv_heads);
    EXPECT_NEAR(q_hf.segment(h * hd, hd).dot(k_hf.segment(g * hd, hd)),
                q_ll.segment(h * hd, hd).dot(k_ll.segment(g * hd, hd)), 1e-9);
  }
  // Without the reordering the scores differ: the test can tell.
  const VectorXd q_bad = rope_pairs(wq * x, heads, hd, 5),
                 k_bad = rope_pairs(wk * y, kv_heads, hd, 2);
  EXPECT_GT(std::abs(q_hf.head(hd).dot(k_hf.head(hd)) - q_bad.head(hd).dot(k_bad.head(hd))), 1e-3);
}

// A two-task bundle of a tiny LLaMA (hidden 16, 2 heads of 8, 1 kv head):
// layer 0 q_proj (rank 2, shared body) and v_proj (rank 4), layer 1 mlp.down_proj (rank 2).
io::Bundle tiny_bundle() {
  io::Bundle b;
  b.method = "test";
  b.dtype = DType::F32;
  for (const char* n : {"task-a", "task-b"}) b.tasks.push_back({.name = n});
  auto module = [&](std::string name, int64_t out, int64_t in, int64_t k, uint64_t seed) {
    io::BundleModule m;
    m.name = std::move(name);
    m.out = out;
    m.in = in;
    m.fit.heads = {test::random_matrix(out, k, seed), test::random_matrix(out, k, seed + 1)};
    m.fit.bodies = {test::random_matrix(k, in, seed + 2)};
    m.fit.head_of = {0, 1};
    m.fit.body_of = {0, 0};
    m.fit.core_of = {-1, -1};
    m.fit.scale = {2.0, 0.5};
    b.modules.push_back(std::move(m));
  };
  module("model.layers.0.self_attn.q_proj", 16, 16, 2, 10);
  module("model.layers.0.self_attn.v_proj", 8, 16, 4, 20);
  module("model.layers.1.mlp.down_proj", 16, 24, 2, 30);
  return b;
}

LlamaConfig tiny_config() {
  LlamaConfig c;
  c.model_type = "llama";
  c.hidden = 16;
  c.intermediate = 24;
  c.layers = 2;
  c.heads = 2;
  c.kv_heads = 1;
  c.head_dim = 8;
  c.vocab = 260;
  c.max_positions = 64;
  return c;
}

TEST(Gguf, LoraExportFoldsScaleAndReordersQueryRows) {
  test::TempDir dir;
  const io::Bundle b = tiny_bundle();
  io::export_gguf_lora(b, 1, tiny_config(), dir / "b.gguf", DType::F32);
  Parsed g = Parsed::read(dir / "b.gguf");
  EXPECT_EQ(g.string_kv("general.type"), "adapter");
  EXPECT_EQ(g.string_kv("general.architecture"), "llama");
  EXPECT_EQ(g.string_kv("adapter.type"), "lora");
  const float alpha = g.f32_kv("adapter.lora.alpha");
  EXPECT_EQ(alpha, 2.0f);  // the most common rank
  EXPECT_EQ(g.tensors.size(), 6u);
  EXPECT_EQ(g.tensors.at("blk.0.attn_q.weight.lora_a").ne, (std::vector<uint64_t>{16, 2}));
  EXPECT_EQ(g.tensors.at("blk.0.attn_q.weight.lora_b").ne, (std::vector<uint64_t>{2, 16}));
  EXPECT_EQ(g.tensors.at("blk.1.ffn_down.weight.lora_a").ne, (std::vector<uint64_t>{24, 2}));
  // What llama.cpp computes, alpha / rank * B A, against the dense update
  // (rows of q in llama.cpp's order).
  auto effective = [&](const std::string& t) {
    const MatrixXd a = g.matrix(t + ".lora_a"), bb = g.matrix(t + ".lora_b");
    return MatrixXd(alpha / static_cast<double>(bb.cols()) * bb * a);
  };
  auto dense = [&](size_t m) {
    return MatrixXd(b.modules[m].fit.left(1) * b.modules[m].fit.right(1));
  };
  const MatrixXd q_ref = io::permute_rows(dense(0), io::llama_rope_row_order(2, 8));
  EXPECT_LT((effective("blk.0.attn_q.weight") - q_ref).norm(), 1e-5 * q_ref.norm());
  EXPECT_GT((effective("blk.0.attn_q.weight") - dense(0)).norm(),
            0.1 * q_ref.norm());  // rows did move
  EXPECT_LT((effective("blk.0.attn_v.weight") - dense(1)).norm(),
            1e-5 * dense(1).norm());  // rank 4 != alpha
  EXPECT_LT((effective("blk.1.ffn_down.weight") - dense(2)).norm(), 1e-5 * dense(2).norm());
}

TEST(Gguf, LoraExportRejectsBadInputAndLeavesNothing) {
  test::TempDir dir;
  io::Bundle b = tiny_bundle();
  LlamaConfig small = tiny_config();
  small.intermediate = 32;  // down_proj no longer fits
  EXPECT_THROW(io::export_gguf_lora(b, 0, small, dir / "x.gguf", DType::F32), Error);
  b.modules[2].name = "model.layers.1.mlp.experts.0.down_proj";
  EXPECT_THROW(io::export_gguf_lora(b, 0, tiny_config(), dir / "x.gguf", DType::F32), Error);
  b = tiny_bundle();
  b.modules[0].name = "model.layers.2.self_attn.q_proj";  // beyond the 2 layers
  EXPECT_THROW(io::export_gguf_lora(b, 0, tiny_config(), dir / "x.gguf", DType::F32), Error);
  b = tiny_bundle();
  b.tasks[1].name = "../escape";
  EXPECT_THROW(io::export_gguf_lora_all(b, tiny_config(), dir / "all", DType::F32), Error);
  EXPECT_FALSE(fs::exists(dir / "escape.gguf"));
  EXPECT_TRUE(fs::is_empty(dir.path()));  // no file, no temporary left behind
  b = tiny_bundle();
  io::export_gguf_lora_all(b, tiny_config(), dir / "all", DType::F16);
  EXPECT_TRUE(fs::exists(dir / "all" / "task-a.gguf"));
  EXPECT_EQ(Parsed::read(dir / "all" / "task-b.gguf").tensors.at("blk.0.attn_v.weight.lora_b").type,
            1u);
}

TEST(Gguf, ModelExportOfTheShippedTinyLlama) {
  test::TempDir dir;
  const fs::path model = fs::path(HYDRAOPT_SOURCE_DIR) / "assets" / "model";
  io::export_gguf_model(model, dir / "m.gguf", DType::F32);
  Parsed g = Parsed::read(dir / "m.gguf");
  EXPECT_EQ(g.string_kv("general.architecture"), "llama");
  EXPECT_EQ(g.u32_kv("llama.attention.head_count"), 8u);
  EXPECT_EQ(g.u32_kv("llama.attention.head_count_kv"), 4u);
  EXPECT_EQ(g.u32_kv("llama.context_length"), 64u);
  EXPECT_EQ(g.u32_kv("tokenizer.ggml.bos_token_id"), 256u);
  EXPECT_EQ(g.string_kv("tokenizer.ggml.model"), "llama");
  EXPECT_EQ(g.tensors.size(), 3u + 9u * 4u);
  EXPECT_EQ(g.tensors.at("token_embd.weight").ne, (std::vector<uint64_t>{256, 260}));
  EXPECT_EQ(g.tensors.at("blk.0.attn_k.weight").ne, (std::vector<uint64_t>{256, 128}));
  // Vocabulary: token 0x41 is "<0x41>", a byte token; 259 is "<sep>".
  uint64_t p = 0;
  const std::string& raw = g.kv.at("tokenizer.ggml.tokens").second;
  Parsed s;
  s.bytes = raw;
  p = 4;
  EXPECT_EQ(s.at<uint64_t>(&p), 260u);
  std::vector<std::string> tokens;
  for (int i = 0; i < 260; ++i) tokens.push_back(s.str(&p));
  EXPECT_EQ(tokens[0x41], "<0x41>");
  EXPECT_EQ(tokens[259], "<sep>");
  // q rows reordered against the safetensors source; v untouched.
  auto st = io::SafetensorsFile::open(model / "model.safetensors");
  const MatrixXd q = st.matrix(*st.find("model.layers.1.self_attn.q_proj.weight"));
  const MatrixXd v = st.matrix(*st.find("model.layers.1.self_attn.v_proj.weight"));
  EXPECT_EQ(g.matrix("blk.1.attn_q.weight"), io::permute_rows(q, io::llama_rope_row_order(8, 32)));
  EXPECT_EQ(g.matrix("blk.1.attn_v.weight"), v);
}

}  // namespace
}  // namespace hydraopt

namespace hydraopt {
namespace {

using test::cli;

TEST(GgufCli, ExportsSynthBundleAndRejectsBadRequests) {
  test::TempDir d;
  const std::string dir = d.path().string();
  ASSERT_EQ(test::run(cli() + " synth " + dir + "/a --preset tiny --tasks 2"), 0);
  ASSERT_EQ(test::run(cli() + " merge " + dir + "/a/task00 " + dir +
                      "/a/task01 --method hydra -o " + dir + "/b.safetensors"),
            0);
  // The synth tiny preset's shapes: hidden 64, k/v out 32 (2 of 4 heads of 16), 2 layers.
  fs::create_directories(d / "base");
  test::write_text(
      d / "base" / "config.json",
      R"({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 260})");
  const std::string base = " --base-model " + dir + "/base";
  std::string out;
  EXPECT_EQ(test::run(cli() + " export " + dir + "/b.safetensors --all --format gguf" + base +
                          " -o " + dir + "/g",
                      &out),
            0)
      << out;
  EXPECT_TRUE(fs::exists(d / "g" / "task00.gguf"));
  EXPECT_EQ(test::run(cli() + " export " + dir + "/b.safetensors --task task01 --format gguf" +
                          base + " -o " + dir + "/sub/t1.gguf",
                      &out),
            0)
      << out;
  EXPECT_EQ(test::read_text(d / "sub" / "t1.gguf"), test::read_text(d / "g" / "task01.gguf"));

  struct Bad {
    std::string args, message;
  };
  const std::vector<Bad> bad = {
      {"--task task00 --format onnx" + base, "--format must be peft or gguf"},
      {"--task task00 --format gguf", "needs --base-model"},
      {"--task nope --format gguf" + base, "no task 'nope'"},
      {"--task task00 --format gguf --base-model " + dir + "/missing", "cannot open"},
  };
  for (const auto& b : bad) {
    EXPECT_EQ(
        test::run(cli() + " export " + dir + "/b.safetensors " + b.args + " -o " + dir + "/x.gguf",
                  &out),
        1)
        << b.args;
    EXPECT_NE(out.find(b.message), std::string::npos) << b.args << ": " << out;
    EXPECT_FALSE(fs::exists(d / "x.gguf")) << b.args;
  }
  // A base whose head layout does not fit the adapters: an error naming the module.
  test::write_text(
      d / "base" / "config.json",
      R"({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 260})");
  EXPECT_EQ(test::run(cli() + " export " + dir + "/b.safetensors --task task00 --format gguf" +
                          base + " -o " + dir + "/x.gguf",
                      &out),
            1);
  EXPECT_NE(out.find("k_proj': shape 32 x 64 differs"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(d / "x.gguf"));
  EXPECT_EQ(test::run(cli() + " export-model " + dir + "/base -o " + dir + "/m.gguf", &out),
            1);  // no weights
  EXPECT_NE(out.find("model.safetensors"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(d / "m.gguf"));
}

}  // namespace
}  // namespace hydraopt
