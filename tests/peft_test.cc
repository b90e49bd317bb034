#include <gtest/gtest.h>

#include <cmath>

#include "core/rounding.h"
#include "hydraopt/adapter.h"
#include "hydraopt/error.h"
#include "util/sha256.h"
#include "test_util.h"

namespace hydraopt {
namespace {

using test::TestModule;
using test::write_adapter;
using test::error_of;
namespace fs = std::filesystem;

const char* kQ0 = "model.layers.0.self_attn.q_proj";
const char* kQ1 = "model.layers.1.self_attn.q_proj";
const char* kQ11 = "model.layers.11.self_attn.q_proj";
const char* kV0 = "model.layers.0.self_attn.v_proj";

TestModule mod(const std::string& name, int r, int in, int out, uint64_t seed) {
  return {name, test::random_matrix(r, in, seed), test::random_matrix(out, r, seed + 1000)};
}

TEST(Peft, LoadsFactorsAndDefaultScaling) {
  test::TempDir d;
  auto m = mod(kQ0, 4, 8, 6, 1);
  write_adapter(d / "sum", R"({"r":4,"lora_alpha":16,"base_model_name_or_path":"m"})", {m});
  auto a = Adapter::open((d / "sum").string());
  EXPECT_EQ(a.name(), "sum");
  EXPECT_EQ(a.base_model(), "m");
  ASSERT_EQ(a.modules().size(), 1u);
  EXPECT_EQ(a.modules()[0].in, 8);
  EXPECT_EQ(a.modules()[0].out, 6);
  EXPECT_EQ(a.params(), 4 * (8 + 6));
  auto l = a.load(kQ0);
  EXPECT_DOUBLE_EQ(l.scale, 4.0);
  EXPECT_LE((l.A - m.A).norm(), 1e-6 * m.A.norm());
  EXPECT_LE((l.B - m.B).norm(), 1e-6 * m.B.norm());
}

TEST(Peft, NameEqualsPathNamesTheTask) {
  test::TempDir d;
  write_adapter(d / "dir", R"({"r":4,"lora_alpha":4})", {mod(kQ0, 4, 8, 6, 1)});
  EXPECT_EQ(Adapter::open("reply-de=" + (d / "dir").string()).name(), "reply-de");
}

TEST(Peft, RsloraScalesByRootRank) {
  test::TempDir d;
  write_adapter(d / "a", R"({"r":16,"lora_alpha":8,"use_rslora":true})", {mod(kQ0, 16, 8, 6, 1)});
  EXPECT_DOUBLE_EQ(Adapter::open((d / "a").string()).load(kQ0).scale, 8.0 / 4.0);
}

TEST(Peft, PatternsMatchDottedSuffixesFirstKeyWins) {
  test::TempDir d;
  // "1.self_attn.q_proj" must not match layer 11 (suffix after a dot only);
  // for layer 1 both keys match and the first one in file order wins.
  write_adapter(d / "a",
                R"({"r":4,"lora_alpha":8,
                    "rank_pattern":{"layers.1.self_attn.q_proj":2,"q_proj":6},
                    "alpha_pattern":{"q_proj":12,"layers.1.self_attn.q_proj":100}})",
                {mod(kQ0, 6, 8, 6, 1), mod(kQ1, 2, 8, 6, 2), mod(kQ11, 6, 8, 6, 3), mod(kV0, 4, 8, 4, 4)});
  auto a = Adapter::open((d / "a").string());
  EXPECT_DOUBLE_EQ(a.find(kQ0)->scale, 12.0 / 6);
  EXPECT_DOUBLE_EQ(a.find(kQ1)->scale, 12.0 / 2);   // rank from key 1, alpha from key 1 ("q_proj")
  EXPECT_DOUBLE_EQ(a.find(kQ11)->scale, 12.0 / 6);  // "layers.1..." must not match layer 11
  EXPECT_DOUBLE_EQ(a.find(kV0)->scale, 8.0 / 4);
  // natural order: layers.1 before layers.11
  EXPECT_EQ(a.modules()[2].name, kQ1);
  EXPECT_EQ(a.modules()[3].name, kQ11);
}

TEST(Peft, RankDisagreeingWithConfigIsAnError) {
  test::TempDir d;
  write_adapter(d / "a", R"({"r":8,"lora_alpha":8})", {mod(kQ0, 4, 8, 6, 1)});
  auto e = error_of([&] { Adapter::open((d / "a").string()); });
  EXPECT_NE(e.find("has rank 4 but adapter_config.json gives 8"), std::string::npos) << e;
  EXPECT_NE(e.find("lora_A.weight"), std::string::npos) << e;
}

TEST(Peft, FanInFanOutIsRecordedAndMustAgree) {
  test::TempDir d;
  write_adapter(d / "a", R"({"r":4,"lora_alpha":4,"fan_in_fan_out":true})", {mod(kQ0, 4, 8, 6, 1)});
  write_adapter(d / "b", R"({"r":4,"lora_alpha":4})", {mod(kQ0, 4, 8, 6, 2)});
  auto a = Adapter::open((d / "a").string());
  EXPECT_TRUE(a.fan_in_fan_out());
  EXPECT_EQ(a.modules()[0].in, 8);  // A stays r x in whatever the flag
  auto e = error_of([&] { AdapterSet::open({(d / "a").string(), (d / "b").string()}); });
  EXPECT_NE(e.find("fan_in_fan_out"), std::string::npos) << e;
}

TEST(Peft, UnmergeableTensorsAreListedOrSkippedOnRequest) {
  test::TempDir d;
  fs::create_directories(d / "a");
  test::write_text(d / "a" / "adapter_config.json", R"({"r":4,"lora_alpha":4})");
  auto m = mod(kQ0, 4, 8, 6, 1);
  std::vector<io::TensorData> ts = {
      io::tensor_from_matrix(std::string("base_model.model.") + kQ0 + ".lora_A.weight", m.A, DType::F32),
      io::tensor_from_matrix(std::string("base_model.model.") + kQ0 + ".lora_B.weight", m.B, DType::F32),
      io::tensor_from_vector(std::string("base_model.model.") + kQ0 + ".lora_magnitude_vector",
                             Eigen::VectorXd::Ones(6), DType::F32),
      io::tensor_from_matrix("base_model.model.lm_head.weight", Eigen::MatrixXd::Ones(2, 2), DType::F32),
      io::tensor_from_matrix("base_model.model.model.embed_tokens.lora_embedding_A",
                             Eigen::MatrixXd::Ones(2, 2), DType::F32)};
  io::safetensors_write(d / "a" / "adapter_model.safetensors", ts);
  auto e = error_of([&] { Adapter::open((d / "a").string()); });
  EXPECT_NE(e.find("3 tensor(s) cannot be merged"), std::string::npos) << e;
  EXPECT_NE(e.find("DoRA magnitude vector"), std::string::npos) << e;
  EXPECT_NE(e.find("lm_head.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("LoRA embedding"), std::string::npos) << e;
  std::vector<std::string> warnings;
  LoadOptions skip{true, [&](const std::string& w) { warnings.push_back(w); }};
  auto a = Adapter::open((d / "a").string(), skip);
  EXPECT_EQ(a.modules().size(), 1u);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("skipping 3"), std::string::npos);
}

TEST(Peft, MalformedConfigsAreClearErrors) {
  test::TempDir d;
  auto m = mod(kQ0, 4, 8, 6, 1);
  struct Case {
    const char* config;
    const char* message;
  } cases[] = {
      {R"({"r":4,)", "not valid JSON"},
      {R"([4])", "not a JSON object"},
      {R"({"r":"four"})", "r must be an integer"},
      {R"({"r":0})", "r must be an integer"},
      {R"({"r":4,"lora_alpha":"x"})", "lora_alpha must be a number"},
      {R"({"r":4,"use_dora":true})", "DoRA"},
      {R"({"r":4,"peft_type":"IA3"})", "only LORA"},
      {R"({"r":4,"rank_pattern":{"(":2}})", "not a valid regular expression"},
      {R"({"r":4,"rank_pattern":[1]})", "rank_pattern must be an object"},
      {R"({"r":4,"target_modules":[1]})", "target_modules"},
  };
  for (auto& c : cases) {
    write_adapter(d / "a", c.config, {m});
    auto e = error_of([&] { Adapter::open((d / "a").string()); });
    EXPECT_NE(e.find(c.message), std::string::npos) << c.config << " -> " << e;
    EXPECT_NE(e.find("adapter_config.json"), std::string::npos) << e;
  }
}

TEST(Peft, MissingFilesAndHalfModulesAreErrors) {
  test::TempDir d;
  EXPECT_NE(error_of([&] { Adapter::open((d / "nope").string()); }).find("not a directory"), std::string::npos);
  fs::create_directories(d / "a");
  EXPECT_NE(error_of([&] { Adapter::open((d / "a").string()); }).find("adapter_config.json"), std::string::npos);
  test::write_text(d / "a" / "adapter_config.json", R"({"r":4})");
  EXPECT_NE(error_of([&] { Adapter::open((d / "a").string()); }).find("adapter_model.safetensors: missing"),
            std::string::npos);
  io::safetensors_write(d / "a" / "adapter_model.safetensors",
                        {io::tensor_from_matrix(std::string("base_model.model.") + kQ0 + ".lora_A.weight",
                                                Eigen::MatrixXd::Ones(4, 8), DType::F32)});
  EXPECT_NE(error_of([&] { Adapter::open((d / "a").string()); }).find("lora_A present without lora_B"),
            std::string::npos);
}

TEST(PeftSet, ChecksBaseModelShapesAndNames) {
  test::TempDir d;
  write_adapter(d / "a", R"({"r":4,"base_model_name_or_path":"llama"})", {mod(kQ0, 4, 8, 6, 1)});
  write_adapter(d / "b", R"({"r":4,"base_model_name_or_path":"mistral"})", {mod(kQ0, 4, 8, 6, 2)});
  write_adapter(d / "c", R"({"r":4,"base_model_name_or_path":"llama"})", {mod(kQ0, 4, 9, 6, 3)});
  auto s = [&](const char* x) { return (d / x).string(); };
  auto e1 = error_of([&] { AdapterSet::open({s("a"), s("b")}); });
  EXPECT_NE(e1.find("base model 'mistral' differs"), std::string::npos) << e1;
  auto e2 = error_of([&] { AdapterSet::open({s("a"), s("c")}); });
  EXPECT_NE(e2.find("6 x 9 but a has 6 x 8"), std::string::npos) << e2;
  EXPECT_NE(e2.find(kQ0), std::string::npos) << e2;
  auto e3 = error_of([&] { AdapterSet::open({s("a"), s("a")}); });
  EXPECT_NE(e3.find("task name 'a' is also used"), std::string::npos) << e3;
  EXPECT_NE(error_of([&] { AdapterSet::open({}); }).find("no adapters"), std::string::npos);
}

TEST(PeftSet, MissingModuleIsAZeroUpdate) {
  test::TempDir d;
  write_adapter(d / "a", R"({"r":4})", {mod(kQ0, 4, 8, 6, 1), mod(kV0, 4, 8, 4, 2)});
  write_adapter(d / "b", R"({"r":2})", {mod(kQ0, 2, 8, 6, 3)});
  auto set = AdapterSet::open({(d / "a").string(), (d / "b").string()});
  ASSERT_EQ(set.modules().size(), 2u);
  EXPECT_EQ(set.modules()[1].name, kV0);
  EXPECT_EQ(set.modules()[1].ranks, (std::vector<int64_t>{4, 0}));
  auto f = set.load(1);
  // Norms read without the factors: ||s B A||^2, 0 for the missing module.
  for (size_t m = 0; m < 2; ++m) {
    const auto loaded = set.load(m);
    const auto n2 = set.update_norms2(m);
    ASSERT_EQ(n2.size(), 2u);
    for (size_t i = 0; i < 2; ++i) {
      const double dense = (loaded[i].scale * loaded[i].B * loaded[i].A).squaredNorm();
      EXPECT_NEAR(n2[i], dense, 1e-12 * dense) << m << " " << i;
    }
  }
  EXPECT_EQ(set.update_norms2(1)[1], 0.0);
  // One pass per file: the same norms, bit for bit, and the file's SHA-256.
  for (size_t i = 0; i < 2; ++i) {
    std::string sha;
    const std::vector<double> col = set.scan(i, &sha);
    ASSERT_EQ(col.size(), 2u);
    for (size_t m = 0; m < 2; ++m) EXPECT_EQ(col[m], set.update_norms2(m)[i]) << m << " " << i;
    EXPECT_EQ(sha, util::sha256_file(set.task(i).weights_path()));
    EXPECT_EQ(set.scan(i, nullptr), col);
  }
  EXPECT_EQ(f[1].rank(), 0);
  EXPECT_EQ(f[1].A.cols(), 8);
  EXPECT_EQ(f[1].B.rows(), 4);
  EXPECT_EQ(set.original_params(), 4 * 14 + 4 * 12 + 2 * 14);
}

TEST(Peft, DtypesAreReadIntoDouble) {
  test::TempDir d;
  auto m = mod(kQ0, 4, 8, 6, 1);
  for (DType dt : {DType::F16, DType::BF16, DType::F64}) {
    write_adapter(d / "a", R"({"r":4})", {m}, dt);
    auto a = Adapter::open((d / "a").string());
    EXPECT_EQ(a.dtype(), dt);
    EXPECT_EQ(a.load(kQ0).A, round_to_dtype(m.A, dt));
  }
}

TEST(Natural, OrdersDigitRunsNumerically) {
  EXPECT_TRUE(natural_less("layers.2.q", "layers.10.q"));
  EXPECT_FALSE(natural_less("layers.10.q", "layers.2.q"));
  EXPECT_TRUE(natural_less("a.k_proj", "a.q_proj"));
  EXPECT_FALSE(natural_less("x", "x"));
}

}  // namespace
}  // namespace hydraopt
