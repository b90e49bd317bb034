// GGUF export of integer-stored factors: llama.cpp's own block types
// (Q8_0, Q4_0, Q4_1) where the stored values map onto them exactly, the
// float dtype otherwise. Every check decodes the bytes with ggml's block
// formulas written out in gguf_reader.h, not with our dequantize.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <set>

#include "core/quant.h"
#include "gguf_reader.h"
#include "hydraopt/error.h"
#include "io/bundle.h"
#include "io/gguf.h"
#include "io/gguf_export.h"
#include "test_util.h"

namespace hydraopt {
namespace {

namespace fs = std::filesystem;
using Eigen::MatrixXd;
using io::GgmlType;

// A tensor's bytes decoded row by row as ggml does.
MatrixXd decode(const io::GgufTensor& t) {
  const int64_t cols = t.ne[0], rows = t.ne.size() > 1 ? t.ne[1] : 1;
  const int64_t row_bytes = cols / 32 * test::ggml_test_block_bytes(static_cast<uint32_t>(t.type));
  EXPECT_EQ(static_cast<int64_t>(t.bytes.size()), rows * row_bytes);
  MatrixXd m(rows, cols);
  for (int64_t r = 0; r < rows; ++r) {
    const auto y = test::ggml_test_dequantize_row(
        static_cast<uint32_t>(t.type),
        reinterpret_cast<const char*>(t.bytes.data()) + r * row_bytes, cols);
    for (int64_t c = 0; c < cols; ++c) m(r, c) = y[static_cast<size_t>(c)];
  }
  return m;
}

// An F32 tensor's bytes as a matrix.
MatrixXd decode_f32(const io::GgufTensor& t) {
  EXPECT_EQ(t.type, GgmlType::F32);
  const int64_t cols = t.ne[0], rows = t.ne.size() > 1 ? t.ne[1] : 1;
  MatrixXd m(rows, cols);
  for (int64_t i = 0; i < rows * cols; ++i) {
    float f;
    std::memcpy(&f, t.bytes.data() + 4 * i, 4);
    m(i / cols, i % cols) = f;
  }
  return m;
}

uint8_t byte_at(const io::GgufTensor& t, size_t i) { return static_cast<uint8_t>(t.bytes.at(i)); }

TEST(GgufBlocks, HandPackedRows) {
  // x_j = j - 16: the largest magnitude is x_0 = -16.
  MatrixXd x(1, 32);
  for (int j = 0; j < 32; ++j) x(0, j) = j - 16;

  // int4 symmetric: d = -16 / -8 = 2 (f16 0x4000), q_j = round((j - 16) / 2)
  // clamped to -8..7, stored as q + 8: element 0 -> 0, 16 -> 8, 1 -> 0
  // (-7.5 rounds away from zero), 17 -> 9, 15 -> 7, 31 -> 15 (7.5 -> 8 -> 7).
  const io::GgufTensor q4 = io::gguf_block_tensor("x", quantize(x, {4, 32, true}));
  EXPECT_EQ(q4.type, GgmlType::Q4_0);
  ASSERT_EQ(q4.bytes.size(), 18u);
  EXPECT_EQ(byte_at(q4, 0), 0x00);
  EXPECT_EQ(byte_at(q4, 1), 0x40);
  EXPECT_EQ(byte_at(q4, 2), 0x80);   // element 0 low, element 16 high
  EXPECT_EQ(byte_at(q4, 3), 0x90);   // element 1 low, element 17 high
  EXPECT_EQ(byte_at(q4, 17), 0xF7);  // element 15 low, element 31 high

  // int8 symmetric: d = -16 / -128 = 0.125 (f16 0x3000), q_j = 8 (j - 16):
  // element 0 is -128 (0x80 as int8), element 31 is 120 (0x78).
  const io::GgufTensor q8 = io::gguf_block_tensor("x", quantize(x, {8, 32, true}));
  EXPECT_EQ(q8.type, GgmlType::Q8_0);
  ASSERT_EQ(q8.bytes.size(), 34u);
  EXPECT_EQ(byte_at(q8, 0), 0x00);
  EXPECT_EQ(byte_at(q8, 1), 0x30);
  EXPECT_EQ(byte_at(q8, 2), 0x80);
  EXPECT_EQ(byte_at(q8, 33), 0x78);
  EXPECT_EQ(decode(q8), x);  // every value on the grid: exact

  // int4 asymmetric: m = -16 (f16 0xCC00), d = f16(31 / 15) = 2 (1 + 34/1024)
  // (0x4022), q_16 = round(16 / d) = 8.
  const io::GgufTensor q41 = io::gguf_block_tensor("x", quantize(x, {4, 32, false}));
  EXPECT_EQ(q41.type, GgmlType::Q4_1);
  ASSERT_EQ(q41.bytes.size(), 20u);
  EXPECT_EQ(byte_at(q41, 0), 0x22);
  EXPECT_EQ(byte_at(q41, 1), 0x40);
  EXPECT_EQ(byte_at(q41, 2), 0x00);
  EXPECT_EQ(byte_at(q41, 3), 0xCC);
  EXPECT_EQ(byte_at(q41, 4), 0x80);  // element 0 -> 0, element 16 -> 8
}

TEST(GgufBlocks, EveryFormatWithABlockTypeIsCarriedBitExactly) {
  // Odd shapes: rows shorter than a group of 64 or 128, a last group cut
  // short (160 = 128 + 32), an all-zero row (scale 0), a wide range.
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{1, 32}, {3, 96}, {2, 160}, {5, 128}};
  int checked = 0;
  for (const QuantFormat& f : all_quant_formats()) {
    const std::optional<GgmlType> type = io::ggml_block_type(f);
    if (f.bits == 8 && !f.symmetric) {
      EXPECT_FALSE(type) << f.name();  // Q8_0 has no minimum
      continue;
    }
    ASSERT_TRUE(type) << f.name();
    EXPECT_EQ(*type, f.bits == 8   ? GgmlType::Q8_0
                     : f.symmetric ? GgmlType::Q4_0
                                   : GgmlType::Q4_1)
        << f.name();
    for (auto [rows, cols] : shapes) {
      MatrixXd m = test::random_matrix(rows, cols, 7 + rows * cols + f.bits);
      m.col(0) *= 40;  // one large value per row: other groups keep small scales
      if (rows > 2) m.row(1).setZero();
      const QuantizedMatrix q = quantize(m, f);
      const io::GgufTensor t = io::gguf_block_tensor("t", q);
      EXPECT_EQ(t.type, *type);
      EXPECT_EQ(t.ne, (std::vector<int64_t>{cols, rows}));
      EXPECT_EQ(static_cast<int64_t>(t.bytes.size()),
                rows * cols / 32 * io::ggml_block_bytes(*type));
      const MatrixXd stored = dequantize(q);
      EXPECT_EQ(decode(t), stored) << f.name() << " " << rows << " x " << cols;
      // The codes use exactly the levels of the format: q + 8 for
      // symmetric 4/3/2 bits (4-11 for int3, 6-9 for int2), all of int8.
      std::set<int> levels;
      const int64_t block = io::ggml_block_bytes(*type), head = *type == GgmlType::Q4_1 ? 4 : 2;
      for (size_t b = 0; b < t.bytes.size(); b += static_cast<size_t>(block)) {
        for (int64_t i = head; i < block; ++i) {
          const uint8_t v = byte_at(t, b + static_cast<size_t>(i));
          if (*type == GgmlType::Q8_0) {
            levels.insert(static_cast<int8_t>(v));
          } else {
            levels.insert(v & 15);
            levels.insert(v >> 4);
          }
        }
      }
      const int half = 1 << (f.bits - 1);
      const auto [lo, hi] = *type == GgmlType::Q8_0 ? std::pair{-128, 127}
                            : f.symmetric           ? std::pair{8 - half, 8 + half - 1}
                                                    : std::pair{0, 2 * half - 1};
      EXPECT_GE(*levels.begin(), lo) << f.name();
      EXPECT_LE(*levels.rbegin(), hi) << f.name();
      if (*type == GgmlType::Q8_0)
        EXPECT_EQ(*levels.begin(), -128) << f.name();  // each group's largest value
      ++checked;
    }
  }
  EXPECT_EQ(checked, 21 * 4);  // 24 formats but int8 asymmetric, 4 shapes each
}

TEST(GgufBlocks, LayoutsThatDoNotCutIntoRowBlocksAreRefused) {
  const QuantFormat int4{4, 32, true};
  // Groups down the columns (rows > cols), rows of 48, int8 asymmetric.
  EXPECT_THROW(io::gguf_block_tensor("t", quantize(test::random_matrix(64, 8, 1), int4)),
               std::logic_error);
  EXPECT_THROW(io::gguf_block_tensor("t", quantize(test::random_matrix(2, 48, 2), int4)),
               std::logic_error);
  EXPECT_THROW(io::gguf_block_tensor("t", quantize(test::random_matrix(2, 64, 3), {8, 32, false})),
               std::logic_error);
  // The container refuses a block tensor whose rows are not whole blocks,
  // and one whose bytes do not match.
  io::GgufTensor t = io::gguf_block_tensor("t", quantize(test::random_matrix(2, 64, 4), int4));
  io::GgufTensor odd = t;
  odd.ne = {48, 2};
  odd.bytes.resize(3 * 18);
  EXPECT_NE(test::error_of([&] { io::gguf_serialize({}, {odd}); }).find("not whole blocks of 32"),
            std::string::npos);
  t.bytes.pop_back();
  EXPECT_NE(test::error_of([&] { io::gguf_serialize({}, {t}); }).find("byte count"),
            std::string::npos);
}

// gguf_lora_tensor's choice, and the values it writes.
struct Choice {
  io::GgufTensor tensor;
  GgufTensorChoice choice;
};
Choice choose(const MatrixXd& m, const std::optional<QuantFormat>& stored, DType dtype = DType::F32,
              const std::string& folded = "") {
  Choice c;
  c.tensor = io::gguf_lora_tensor("t", m, stored, dtype, folded, &c.choice);
  return c;
}

TEST(GgufLoraTensor, BlockTypeOnlyWhereTheValuesAreExactlyTheStoredFormat) {
  const QuantFormat a4{4, 64, false}, s8{8, 32, true};
  const MatrixXd body = round_to_format(test::random_matrix(4, 64, 11), a4);

  Choice c = choose(body, a4);
  EXPECT_EQ(c.tensor.type, GgmlType::Q4_1);
  EXPECT_EQ(c.choice.type, "Q4_1");
  EXPECT_EQ(c.choice.stored, "int4-g64-asym");
  EXPECT_EQ(c.choice.reason, "");
  EXPECT_EQ(decode(c.tensor), body);

  // A factor of 4 keeps int8 values exact (scales times 4 stay f16): Q8_0.
  const MatrixXd head = round_to_format(test::random_matrix(8, 32, 12), s8);
  c = choose(4 * head, s8, DType::F32, "the scale 4 is folded in");
  EXPECT_EQ(c.choice.type, "Q8_0");
  EXPECT_EQ(decode(c.tensor), 4 * head);
  // A factor of 3 does not: floats, and the reason says why.
  c = choose(3 * head, s8, DType::F16, "the scale 3 is folded in");
  EXPECT_EQ(c.tensor.type, GgmlType::F16);
  EXPECT_EQ(c.choice.reason, "its values are not int8-g32-sym's once the scale 3 is folded in");

  // Floats stay floats, in the export dtype.
  c = choose(test::random_matrix(4, 64, 13), std::nullopt, DType::BF16);
  EXPECT_EQ(c.choice.type, "BF16");
  EXPECT_EQ(c.choice.stored, "float");
  EXPECT_EQ(c.choice.reason, "");

  struct Case {
    MatrixXd m;
    QuantFormat f;
    std::string reason;
  };
  const std::vector<Case> cases = {
      {round_to_format(test::random_matrix(4, 64, 14), {8, 32, false}),
       {8, 32, false},
       "int8-g32-asym has no exact ggml type (Q8_0 has no minimum)"},
      {round_to_format(test::random_matrix(64, 4, 15), {4, 32, true}),
       {4, 32, true},
       "its groups run down the columns; ggml's blocks run along the rows"},
      {round_to_format(test::random_matrix(4, 80, 16), {3, 32, true}),
       {3, 32, true},
       "its rows of 80 are not whole ggml blocks of 32"},
      {test::random_matrix(4, 64, 17), {4, 32, true}, "its values are not int4-g32-sym's"},
  };
  for (const auto& k : cases) {
    c = choose(k.m, k.f);
    EXPECT_EQ(c.choice.type, "F32") << k.reason;
    EXPECT_EQ(c.choice.reason, k.reason);
    EXPECT_EQ(decode_f32(c.tensor), k.m.cast<float>().cast<double>()) << k.reason;
  }
}

// One layer of a small LLaMA: hidden 64, 2 heads of 32, 1 kv head, MLP 80.
LlamaConfig small_config() {
  LlamaConfig c;
  c.model_type = "llama";
  c.hidden = 64;
  c.intermediate = 80;
  c.layers = 1;
  c.heads = 2;
  c.kv_heads = 1;
  c.head_dim = 32;
  c.vocab = 260;
  c.max_positions = 64;
  return c;
}

// Two tasks whose integer roles hold exactly their formats' values (what
// bundle_read gives):
//   q_proj    64 x 64, rank 4: body int4-g32-sym (shared), heads int3-g32-asym
//   k_proj    32 x 64, rank 4: body int2-g64-asym, heads float
//   v_proj    32 x 64, rank 32: body int8-g32-asym, heads int8-g32-sym; task 1 has a core
//   down_proj 64 x 80, rank 4: body int8-g32-sym (rows of 80)
io::Bundle quantized_bundle() {
  io::Bundle b;
  b.method = "test";
  b.dtype = DType::F32;
  for (const char* n : {"t0", "t1"}) b.tasks.push_back({.name = n});
  uint64_t seed = 100;
  auto stored = [&](int64_t r, int64_t c, const std::optional<QuantFormat>& f) {
    const MatrixXd m = test::random_matrix(r, c, seed++);
    return f ? round_to_format(m, *f) : m;
  };
  auto module = [&](std::string name, int64_t out, int64_t in, int64_t k, Precision p,
                    std::vector<double> scale) {
    io::BundleModule m;
    m.name = std::move(name);
    m.out = out;
    m.in = in;
    m.precision = p;
    m.fit.heads = {stored(out, k, p.heads), stored(out, k, p.heads)};
    m.fit.bodies = {stored(k, in, p.bodies)};
    m.fit.head_of = {0, 1};
    m.fit.body_of = {0, 0};
    m.fit.core_of = {-1, -1};
    m.fit.scale = std::move(scale);
    b.modules.push_back(std::move(m));
  };
  module("model.layers.0.self_attn.q_proj", 64, 64, 4,
         {QuantFormat{4, 32, true}, QuantFormat{3, 32, false}, {}}, {2.0, 0.5});
  module("model.layers.0.self_attn.k_proj", 32, 64, 4, {QuantFormat{2, 64, false}, {}, {}},
         {2.0, 0.5});
  // alpha = the most common rank, 4: v's fold is 32 / 4 = 8, so task 0's
  // scale 1/8 leaves its head as stored.
  module("model.layers.0.self_attn.v_proj", 32, 64, 32,
         {QuantFormat{8, 32, false}, QuantFormat{8, 32, true}, {}}, {0.125, 0.125});
  b.modules.back().fit.cores = {test::random_matrix(32, 32, seed++)};
  b.modules.back().fit.core_of = {-1, 0};
  module("model.layers.0.mlp.down_proj", 64, 80, 4, {QuantFormat{8, 32, true}, {}, {}}, {2.0, 0.5});
  return b;
}

TEST(GgufLoraExport, IntegerFactorsInBlockTypesAndTheUpdateUnchanged) {
  test::TempDir dir;
  const io::Bundle b = quantized_bundle();
  const LlamaConfig base = small_config();
  const auto choices = io::export_gguf_lora_all(b, base, dir / "out", DType::F32);
  ASSERT_EQ(choices.size(), 2u * 8u);
  std::map<std::string, GgufTensorChoice> by_name;
  for (const auto& c : choices) by_name[c.task + "/" + c.tensor] = c;

  struct Expect {
    std::string tensor, t0, t1, stored;
  };
  const std::vector<Expect> expect = {
      {"blk.0.attn_q.weight.lora_a", "Q4_0", "Q4_0", "int4-g32-sym"},
      {"blk.0.attn_q.weight.lora_b", "F32", "F32", "int3-g32-asym"},
      {"blk.0.attn_k.weight.lora_a", "Q4_1", "Q4_1", "int2-g64-asym"},
      {"blk.0.attn_k.weight.lora_b", "F32", "F32", "float"},
      {"blk.0.attn_v.weight.lora_a", "F32", "F32", "int8-g32-asym"},
      {"blk.0.attn_v.weight.lora_b", "Q8_0", "F32", "int8-g32-sym"},
      {"blk.0.ffn_down.weight.lora_a", "F32", "F32", "int8-g32-sym"},
      {"blk.0.ffn_down.weight.lora_b", "F32", "F32", "float"},
  };
  for (const auto& e : expect) {
    EXPECT_EQ(by_name.at("t0/" + e.tensor).type, e.t0) << e.tensor;
    EXPECT_EQ(by_name.at("t1/" + e.tensor).type, e.t1) << e.tensor;
    EXPECT_EQ(by_name.at("t0/" + e.tensor).stored, e.stored) << e.tensor;
  }
  EXPECT_EQ(by_name.at("t0/blk.0.attn_q.weight.lora_b").reason,
            "its groups run down the columns; ggml's blocks run along the rows");
  EXPECT_EQ(by_name.at("t1/blk.0.attn_v.weight.lora_b").reason,
            "its values are not int8-g32-sym's once the task's core is multiplied in");
  EXPECT_EQ(by_name.at("t0/blk.0.ffn_down.weight.lora_a").reason,
            "its rows of 80 are not whole ggml blocks of 32");

  // What llama.cpp computes from the files, alpha / rank * B A with every
  // tensor decoded by ggml's formulas, against the bundle's update.
  // Block-typed factors are the stored values bit
  // for bit; F32 ones are those values rounded to f32. (q and k rows in
  // llama.cpp's rotary order.)
  for (size_t task = 0; task < 2; ++task) {
    const test::Parsed g = test::Parsed::read(dir / "out" / (b.tasks[task].name + ".gguf"));
    const float alpha = g.f32_kv("adapter.lora.alpha");
    EXPECT_EQ(alpha, 4.0f);
    for (size_t m = 0; m < b.modules.size(); ++m) {
      const std::string t = expect[2 * m].tensor.substr(0, expect[2 * m].tensor.size() - 7);
      const MatrixXd a = g.values(t + ".lora_a"), bb = g.values(t + ".lora_b");
      const auto& fit = b.modules[m].fit;
      if (g.tensors.at(t + ".lora_a").type != 0) EXPECT_EQ(a, fit.right(task)) << t;
      MatrixXd dense = fit.left(task) * fit.right(task);
      if (m < 2)
        dense = io::permute_rows(dense, io::llama_rope_row_order(m == 0 ? 2 : 1, 32));  // q, k
      const MatrixXd effective = alpha / static_cast<double>(bb.cols()) * bb * a;
      EXPECT_LT((effective - dense).norm(), 1e-6 * dense.norm()) << t << " task " << task;
      if (g.tensors.at(t + ".lora_b").type ==
          8) {  // both sides as stored: exact up to the sums' order
        EXPECT_LT((effective - dense).norm(), 1e-13 * dense.norm()) << t;
      }
    }
  }
}

TEST(GgufLoraExport, FloatBundlesKeepFloatTypes) {
  test::TempDir dir;
  io::Bundle b = quantized_bundle();
  for (auto& m : b.modules) m.precision = {};
  for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
    const auto choices = io::export_gguf_lora(b, 0, small_config(), dir / "x.gguf", dt);
    for (const auto& c : choices) {
      EXPECT_EQ(c.type, dt == DType::F32 ? "F32" : dt == DType::F16 ? "F16" : "BF16");
      EXPECT_EQ(c.stored, "float");
      EXPECT_EQ(c.reason, "");
    }
  }
}

// Through the CLI, on a bundle the planner stored with integer bodies:
// every lora_a whose body has a block type and rows of whole blocks is
// written in it and decodes to the bundle's stored values bit for bit;
// --float-tensors writes the same values as F32.
TEST(GgufLoraExport, CliWritesPlannedIntegerBodiesAsBlocks) {
  test::TempDir d;
  const std::string dir = d.path().string();
  ASSERT_EQ(test::run(test::cli() + " synth " + dir + "/a --preset tiny --tasks 3"), 0);
  std::string out;
  ASSERT_EQ(test::run(test::cli() + " merge " + dir + "/a/task00 " + dir + "/a/task01 " + dir +
                          "/a/task02 --budget-bf16 0.2 -o " + dir + "/b.safetensors",
                      &out),
            0)
      << out;
  fs::create_directories(d / "base");  // the synth tiny preset's shapes
  test::write_text(
      d / "base" / "config.json",
      R"({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 260})");
  const std::string args =
      dir + "/b.safetensors --all --format gguf --base-model " + dir + "/base -o ";
  ASSERT_EQ(test::run(test::cli() + " export " + args + dir + "/q --list-tensors", &out), 0) << out;
  const io::Bundle b = io::bundle_read(d / "b.safetensors");
  // One line per tensor, after "wrote", the title and the column heads.
  EXPECT_EQ(static_cast<size_t>(std::count(out.begin(), out.end(), '\n')),
            3 + b.tasks.size() * b.modules.size() * 2)
      << out;
  std::string floats;
  ASSERT_EQ(test::run(test::cli() + " export " + args + dir + "/f --float-tensors", &floats), 0)
      << floats;
  EXPECT_NE(floats.find("block types turned off"), std::string::npos) << floats;

  int blocks = 0;
  for (size_t task = 0; task < b.tasks.size(); ++task) {
    const test::Parsed q = test::Parsed::read(d / "q" / (b.tasks[task].name + ".gguf"));
    const test::Parsed f = test::Parsed::read(d / "f" / (b.tasks[task].name + ".gguf"));
    for (const auto& m : b.modules) {
      const std::string layer = m.name.substr(13, m.name.find('.', 13) - 13);  // model.layers.N.
      const std::string proj = m.name.substr(m.name.rfind('.') + 1);
      const std::map<std::string, std::string> gguf = {{"q_proj", "attn_q"},
                                                       {"k_proj", "attn_k"},
                                                       {"v_proj", "attn_v"},
                                                       {"o_proj", "attn_output"}};
      const std::string a = "blk." + layer + "." + gguf.at(proj) + ".weight.lora_a";
      const MatrixXd& body = m.fit.right(task);
      const auto& stored = m.precision.bodies;
      const bool expect_block = stored && !(stored->bits == 8 && !stored->symmetric) &&
                                body.cols() >= body.rows() && body.cols() % 32 == 0;
      EXPECT_EQ(q.tensors.at(a).type != 0, expect_block)
          << a << " " << (stored ? stored->name() : "float");
      EXPECT_EQ(f.tensors.at(a).type, 0u) << a;
      if (expect_block) {
        ++blocks;
        EXPECT_EQ(q.values(a), body) << a;  // bit for bit
      }
      EXPECT_EQ(f.values(a), body.cast<float>().cast<double>()) << a;
      const std::string bt = a.substr(0, a.size() - 1) + "b";
      EXPECT_EQ(q.values(bt), f.values(bt)) << bt;
    }
  }
  ASSERT_GT(blocks, 0)
      << "the planner stored no body in a format with a block type at --budget-bf16 0.2";

  EXPECT_EQ(test::run(test::cli() + " export " + dir +
                          "/b.safetensors --task task00 --float-tensors -o " + dir + "/p",
                      &out),
            1);
  EXPECT_NE(out.find("only used with --format gguf"), std::string::npos) << out;
}

}  // namespace
}  // namespace hydraopt
