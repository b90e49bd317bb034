// The Eigen forward pass against an independent numpy reference, and a
// bundle task applied directly against its exported PEFT adapter.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "hydraopt/bundle.h"
#include "hydraopt/merge.h"
#include "hydraopt/model.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace hydraopt {
namespace {

namespace fs = std::filesystem;

const test::TempDir& reference() {
  static test::TempDir d;
  static int rc = test::run("/usr/bin/python3 " HYDRAOPT_SOURCE_DIR "/tests/python/llama_ref.py " + d.path().string());
  EXPECT_EQ(rc, 0) << "/usr/bin/python3 with numpy is needed (apt install python3-numpy)";
  return d;
}

Eigen::MatrixXf as_matrix(const nlohmann::json& j) {
  Eigen::MatrixXf m(j.size(), j[0].size());
  for (size_t i = 0; i < j.size(); ++i)
    for (size_t k = 0; k < j[i].size(); ++k) m(i, k) = j[i][k].get<float>();
  return m;
}

TEST(Model, LogitsMatchTheNumpyReference) {
  const auto& d = reference();
  auto expected = nlohmann::json::parse(test::read_text(d / "expected.json"));
  Model model = Model::open(d / "model");
  std::vector<int> tokens = expected["tokens"].get<std::vector<int>>();
  Eigen::MatrixXf base = model.forward(tokens);
  Eigen::MatrixXf want = as_matrix(expected["base"]);
  EXPECT_LE((base - want).cwiseAbs().maxCoeff(), 1e-4 * want.cwiseAbs().maxCoeff());
  Deltas deltas = deltas_from_adapter(Adapter::open((d / "adapter").string()));
  Eigen::MatrixXf with = model.forward(tokens, &deltas);
  Eigen::MatrixXf want_with = as_matrix(expected["adapter"]);
  EXPECT_LE((with - want_with).cwiseAbs().maxCoeff(), 1e-4 * want_with.cwiseAbs().maxCoeff());
  EXPECT_GT((with - base).cwiseAbs().maxCoeff(), 1e-2);  // the adapter is really applied
}

TEST(Model, GreedyDecodingAndTeacherForcedMatchAgree) {
  const auto& d = reference();
  Model model = Model::open(d / "model");
  Deltas deltas = deltas_from_adapter(Adapter::open((d / "adapter").string()));
  auto prompt = model.encode_prompt("abc");
  std::vector<int> out = model.generate(prompt, 6, &deltas);
  ASSERT_FALSE(out.empty());
  // Each generated token is the argmax of the teacher-forced logits.
  std::vector<int> seq = prompt;
  seq.insert(seq.end(), out.begin(), out.end());
  Eigen::MatrixXf logits = model.forward(seq, &deltas);
  for (size_t i = 0; i < out.size(); ++i) {
    Eigen::Index best;
    logits.row(prompt.size() - 1 + i).maxCoeff(&best);
    EXPECT_EQ(best, out[i]) << i;
  }
  // greedy_matches wants exactly these tokens and then eos.
  Eigen::Index last;
  logits.row(logits.rows() - 1).maxCoeff(&last);
  EXPECT_EQ(model.greedy_matches(prompt, out, &deltas), last == model.config().eos);
  std::vector<int> wrong = out;
  wrong[0] = (wrong[0] + 1) % 256;
  EXPECT_FALSE(model.greedy_matches(prompt, wrong, &deltas));
}

TEST(Model, BundleTaskEqualsItsExportedAdapter) {
  const auto& d = reference();
  test::TempDir t;
  // Two tasks: the reference adapter and a rescaled copy of it.
  fs::copy(d / "adapter", t / "a", fs::copy_options::recursive);
  fs::copy(d / "adapter", t / "b", fs::copy_options::recursive);
  std::string cfg = test::read_text(t / "b" / "adapter_config.json");
  cfg.replace(cfg.find("\"lora_alpha\": 8"), 15, "\"lora_alpha\": 3");
  test::write_text(t / "b" / "adapter_config.json", cfg);
  auto set = AdapterSet::open({(t / "a").string(), (t / "b").string()});
  MergeOptions o;
  o.budget = 0.6;
  o.dtype = DType::F32;
  merge(set, o, t / "bundle.safetensors");
  Bundle::open(t / "bundle.safetensors").export_peft("b", t / "exported");
  Model model = Model::open(d / "model");
  Deltas from_bundle = deltas_from_bundle(t / "bundle.safetensors", "b");
  Deltas from_export = deltas_from_adapter(Adapter::open((t / "exported").string()));
  std::vector<int> tokens = {256, 104, 121, 100, 259, 65};
  Eigen::MatrixXf x = model.forward(tokens, &from_bundle), y = model.forward(tokens, &from_export);
  EXPECT_LE((x - y).cwiseAbs().maxCoeff(), 1e-4 * y.cwiseAbs().maxCoeff());
}

}  // namespace
}  // namespace hydraopt

namespace hydraopt {
namespace {

TEST(Model, PackedBatchEqualsOneByOne) {
  const auto& d = reference();
  Model model = Model::open(d / "model");
  Deltas deltas = deltas_from_adapter(Adapter::open((d / "adapter").string()));
  std::vector<std::pair<std::vector<int>, std::vector<int>>> ex;
  for (const char* w : {"ab", "hydra", "x", "longer prompt"}) {
    auto prompt = model.encode_prompt(w);
    ex.push_back({prompt, model.generate(prompt, 3, &deltas)});
    ex.push_back({prompt, {65, 66}});
  }
  auto batch = model.greedy_matches_batch(ex, &deltas);
  for (size_t i = 0; i < ex.size(); ++i) EXPECT_EQ(batch[i], model.greedy_matches(ex[i].first, ex[i].second, &deltas)) << i;
}

// The last layer computes only the rows asked for; they are the whole
// pass's rows (the same products on fewer rows, so equal up to the
// products' blocking).
TEST(Model, LogitsFromAPositionAreTheWholePassRows) {
  const auto& d = reference();
  Model model = Model::open(d / "model");
  Deltas deltas = deltas_from_adapter(Adapter::open((d / "adapter").string()));
  std::vector<int> tokens = model.encode_prompt("a longer prompt here");
  for (int c : {'x', 'y', 'z'}) tokens.push_back(c);
  const auto t = static_cast<int64_t>(tokens.size());
  const Deltas* none = nullptr;
  for (const Deltas* dl : {none, static_cast<const Deltas*>(&deltas)}) {
    const Eigen::MatrixXf full = model.forward(tokens, dl);
    ASSERT_EQ(full.rows(), t);
    for (int64_t from : {int64_t{0}, int64_t{1}, int64_t{7}, t - 1, t}) {
      const Eigen::MatrixXf part = model.forward(tokens, dl, from);
      ASSERT_EQ(part.rows(), t - from) << from;
      if (part.rows() == 0) continue;
      EXPECT_LE((part - full.bottomRows(t - from)).cwiseAbs().maxCoeff(), 1e-5f * full.cwiseAbs().maxCoeff()) << from;
    }
  }
  EXPECT_THROW(model.forward(tokens, nullptr, t + 1), std::invalid_argument);
  EXPECT_THROW(model.forward(tokens, nullptr, -1), std::invalid_argument);
}

TEST(Model, BatchedGreedyOutputsAreWhatGenerateDecodes) {
  const auto& d = reference();
  Model model = Model::open(d / "model");
  Deltas deltas = deltas_from_adapter(Adapter::open((d / "adapter").string()));
  for (const Deltas* dl : {static_cast<const Deltas*>(nullptr), static_cast<const Deltas*>(&deltas)}) {
    for (int max_new : {1, 3, 12, 1000}) {
      std::vector<std::pair<std::vector<int>, std::vector<int>>> ex;
      std::vector<std::vector<int>> want;
      for (const char* w : {"ab", "hydra", "x", "longer prompt", "a much longer prompt that nearly fills it"}) {
        const auto prompt = model.encode_prompt(w);
        const std::vector<int> out = model.generate(prompt, max_new, dl);
        std::vector<int> half(out.begin(), out.begin() + static_cast<long>(out.size() / 2));
        half.push_back(7);  // right, then off
        std::vector<int> longer = out;
        longer.insert(longer.end(), {65, 66, 67});  // right, then past the end
        for (const auto& guess : {out, std::vector<int>{}, std::vector<int>{66, 66, 66, 66}, half, longer}) {
          ex.push_back({prompt, guess});
          want.push_back(out);
        }
      }
      EXPECT_EQ(model.greedy_outputs_batch(ex, std::vector<int>(ex.size(), max_new), dl), want) << "max_new " << max_new;
    }
  }
}

}  // namespace
}  // namespace hydraopt

#include "hydraopt/benchmark.h"

namespace hydraopt {
namespace {

TEST(Benchmark, ScoresAdaptersAndBundlesOnTheirTasks) {
  // Two shipped tasks whose answers are what each task's own adapter decodes
  // (greedy, up to eos), so its own score is exactly 1, and the base model's
  // is the fraction it decodes alike, recomputed here by free-running
  // decoding (the benchmark checks teacher-forced, in packed batches).
  const fs::path shipped = fs::path(HYDRAOPT_SOURCE_DIR) / "assets";
  test::TempDir a;
  fs::create_directory_symlink(shipped / "model", a / "model");
  fs::create_directories(a / "adapters");
  Model model = Model::open(shipped / "model");
  const int64_t context = model.config().max_positions;
  std::vector<double> base_score;
  for (const char* t : {"accent-es", "cap-de"}) {
    fs::create_directory_symlink(shipped / "adapters" / t, a / "adapters" / t);
    const Deltas own = deltas_from_adapter(Adapter::open((shipped / "adapters" / t).string()));
    std::string lines;
    int kept = 0, base_hits = 0;
    for (const auto& [prompt, answer] : load_task(shipped / "tasks" / t, 12).examples) {
      const std::vector<int> p = model.encode_prompt(prompt);
      const int room = static_cast<int>(context - static_cast<int64_t>(p.size()));
      const std::vector<int> out = model.generate(p, room, &own);
      bool usable = static_cast<int>(out.size()) < room;  // ended by eos
      for (int c : out) usable = usable && c < 256;  // bytes, no special tokens
      std::string line;
      try {
        line = nlohmann::json({{"prompt", prompt}, {"answer", std::string(out.begin(), out.end())}}).dump();
      } catch (const nlohmann::json::exception&) {
        usable = false;  // not UTF-8
      }
      if (!usable) continue;
      lines += line + "\n";
      ++kept;
      // The base model is right if it decodes the same and then stops.
      base_hits += model.generate(p, static_cast<int>(out.size()) + 1) == out;
    }
    ASSERT_GE(kept, 8) << t << ": too few answers ended by eos";
    base_score.push_back(static_cast<double>(base_hits) / kept);
    fs::create_directories(a / "tasks" / t);
    test::write_text(a / "tasks" / t / "test.jsonl", lines);
  }
  BenchmarkOptions o;
  o.assets = a.path();
  o.points = {{"hydraopt", 1.0}, {"ta", 1.0}};
  o.ood = 3;
  auto r = run_benchmark(o);
  ASSERT_EQ(r.tasks.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(r.individual[i], 1.0) << r.tasks[i];
    EXPECT_EQ(r.base[i], base_score[i]) << r.tasks[i];
    EXPECT_LT(r.base[i], r.individual[i]) << r.tasks[i];
  }
  ASSERT_EQ(r.points.size(), 2u);
  // Budget 1.0 keeps every adapter exactly: the same scores as the adapters.
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_DOUBLE_EQ(r.points[0].scores[i], r.individual[i]);
    EXPECT_DOUBLE_EQ(r.points[0].relative[i], 1.0);
  }
  // Out of distribution: the exact adapters agree with themselves on the
  // other task's prompts; the merge is scored on as many.
  EXPECT_EQ(r.points[0].ood_agreement, (std::vector<double>{1.0, 1.0}));
  ASSERT_EQ(r.points[1].ood_agreement.size(), 2u);
  for (double a : r.points[1].ood_agreement) EXPECT_TRUE(a >= 0 && a <= 1) << a;
  EXPECT_NE(r.table().find("mean relative task score"), std::string::npos);
  auto j = nlohmann::json::parse(r.json());
  EXPECT_EQ(j["tasks"], 2);
  EXPECT_EQ(j["points"].size(), 2u);
  EXPECT_EQ(j["points"][0]["mean_ood_agreement"], 1.0);
  EXPECT_EQ(j["points"][1]["ood_agreement"].size(), 2u);
}

TEST(Benchmark, DemoPointsAreParsedOrRefusedByName) {
  auto same = [](const DemoPoint& p, const std::string& method, double budget, BudgetUnit unit) {
    return p.method == method && p.budget == budget && p.unit == unit;
  };
  EXPECT_TRUE(same(parse_demo_point("hydraopt@0.52"), "hydraopt", 0.52, BudgetUnit::kParams));
  EXPECT_TRUE(same(parse_demo_point("ta@1/N"), "ta", 0.0, BudgetUnit::kParams));
  EXPECT_TRUE(same(parse_demo_point("jd-full@hydra"), "jd-full", -1.0, BudgetUnit::kParams));
  EXPECT_TRUE(same(parse_demo_point("quant@bytes:0.196"), "quant", 0.196, BudgetUnit::kBytes));
  for (const char* bad : {"hydraopt", "hydraopt@", "hydraopt@0", "hydraopt@1.5", "hydraopt@0.5x", "hydraopt@bytes:",
                          "nope@0.5", "hydraopt@bytes:-1"}) {
    const std::string msg = test::error_of([&] { parse_demo_point(bad); });
    EXPECT_NE(msg.find(std::string("'") + bad + "'"), std::string::npos) << bad << ": " << msg;
  }
  EXPECT_NE(test::error_of([] { parse_demo_point("nope@0.5"); }).find("unknown method 'nope'"), std::string::npos);
}

TEST(Benchmark, EditSimilarityIsOneMinusLevenshteinOverTheLongerLength) {
  EXPECT_DOUBLE_EQ(edit_similarity("", ""), 1.0);
  EXPECT_DOUBLE_EQ(edit_similarity("abc", "abc"), 1.0);
  EXPECT_DOUBLE_EQ(edit_similarity("", "abcd"), 0.0);
  EXPECT_DOUBLE_EQ(edit_similarity("kitten", "sitting"), 1.0 - 3.0 / 7.0);  // k->s, e->i, +g
  EXPECT_DOUBLE_EQ(edit_similarity("flaw", "lawn"), 0.5);                  // -f, +n
  EXPECT_DOUBLE_EQ(edit_similarity("ab", "ba"), 0.0);                      // two substitutions
  // Characters, not bytes: one substitution of a two-byte letter.
  EXPECT_DOUBLE_EQ(edit_similarity("caf\xc3\xa9", "cafe"), 0.75);
  EXPECT_DOUBLE_EQ(edit_similarity("\xc5\x82\xc3\xb3" "d\xc5\xba", "\xc5\x82\xc3\xb3" "dz"), 0.75);  // lodz, 4 letters
  // A stray byte is a character of its own, equal only to itself.
  EXPECT_DOUBLE_EQ(edit_similarity("a\xff", "a\xff"), 1.0);
  EXPECT_DOUBLE_EQ(edit_similarity("a\xc3", "a\xc3\xa9"), 0.5);
  // Symmetric.
  EXPECT_DOUBLE_EQ(edit_similarity("sitting", "kitten"), edit_similarity("kitten", "sitting"));
}

TEST(Benchmark, BothScoresComeFromTheGreedyOutput) {
  // task_scores' exact match is task_score's (teacher-forced), and its edit
  // similarity is that of generate()'s output, example by example.
  const fs::path shipped = fs::path(HYDRAOPT_SOURCE_DIR) / "assets";
  Model model = Model::open(shipped / "model");
  for (const char* t : {"rev-es", "hyph-de"}) {
    const TaskExamples task = load_task(shipped / "tasks" / t, 16);
    const Deltas own = deltas_from_adapter(Adapter::open((shipped / "adapters" / t).string()));
    for (const Deltas* d : {static_cast<const Deltas*>(nullptr), &own}) {
      const TaskScores s = task_scores(model, task, d, 2);
      EXPECT_DOUBLE_EQ(s.exact, task_score(model, task, d, 2)) << t;
      double sim = 0;
      for (const auto& [prompt, answer] : task.examples) {
        const std::vector<int> out = model.generate(model.encode_prompt(prompt), static_cast<int>(2 * answer.size() + 8), d);
        sim += edit_similarity(std::string(out.begin(), out.end()), answer);
      }
      EXPECT_NEAR(s.similarity, sim / static_cast<double>(task.examples.size()), 1e-12) << t;
      if (d) EXPECT_GT(s.similarity, s.exact);  // near misses count
    }
  }
}

TEST(Benchmark, AdapterSetsAreNamedByTheirDirectories) {
  test::TempDir a;
  for (const char* d : {"adapters-usual", "adapters-b", "adapters", "adapters-", "tasks"}) fs::create_directories(a / d);
  test::write_text(a / "adapters-file", "");
  EXPECT_EQ(adapter_sets(a.path()), (std::vector<std::string>{"fast", "b", "usual"}));
  fs::create_directory_symlink(fs::path(HYDRAOPT_SOURCE_DIR) / "assets" / "model", a / "model");
  for (const char* bad : {"nope", "../adapters", ""}) {
    BenchmarkOptions o;
    o.assets = a.path();
    o.set = bad;
    try {
      run_benchmark(o);
      ADD_FAILURE() << "set '" << bad << "' was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("no adapter set '" + std::string(bad) + "' (sets here: fast, b, usual)"),
                std::string::npos)
          << e.what();
    }
  }
}

TEST(Benchmark, ASetsProfileIsItsSimilarityAndHowFarAMoved) {
  // Two tasks whose A is the shipped initialisation scaled by 1.5 and 0.75:
  // their A row spaces are the initial one (similarity 1), and they moved
  // 0.5 and 0.25 of its norm (mean drift 0.375).
  const fs::path init = fs::path(HYDRAOPT_SOURCE_DIR) / "assets" / "lora-init";
  const Adapter a0 = Adapter::open(init.string());
  test::TempDir d;
  std::vector<std::string> specs;
  int task = 0;
  for (double c : {1.5, 0.75}) {
    const fs::path dir = d / ("t" + std::to_string(task++));
    fs::create_directories(dir);
    fs::copy_file(init / "adapter_config.json", dir / "adapter_config.json");
    std::vector<io::TensorData> tensors;
    Eigen::Index m = 0;
    for (const auto& mod : a0.modules()) {
      const ModuleLora l = a0.load(mod.name);
      const std::string prefix = "base_model.model." + mod.name;
      tensors.push_back(io::tensor_from_matrix(prefix + ".lora_A.weight", c * l.A, DType::F64));
      Eigen::MatrixXd b = Eigen::MatrixXd::Zero(l.B.rows(), l.B.cols());
      b(m++ % b.rows(), 0) = 1;  // any B: the profile looks at A
      tensors.push_back(io::tensor_from_matrix(prefix + ".lora_B.weight", b, DType::F64));
    }
    io::safetensors_write(dir / "adapter_model.safetensors", std::move(tensors), {{"format", "pt"}});
    specs.push_back(dir.string());
  }
  const SetProfile p = set_profile("scaled", AdapterSet::open(specs), init);
  EXPECT_EQ(p.name, "scaled");
  EXPECT_NEAR(p.similarity_a, 1.0, 1e-9);
  EXPECT_NEAR(p.a_drift, 0.375, 1e-6);  // the init is stored in f32, the scaled copies in f64
  EXPECT_TRUE(std::isnan(set_profile("scaled", AdapterSet::open(specs), {}).a_drift));
}

TEST(Benchmark, OnlineArrivalsKeepEveryVariantWithinItsStorage) {
  // Four shipped adapters arrive under a cap of two: the five ways of
  // keeping them run end to end (each add onto the previous add's output,
  // refits included), are scored after 2 and 4 arrivals, and stay within
  // what each promises to store.
  OnlineOptions o;
  o.assets = fs::path(HYDRAOPT_SOURCE_DIR) / "assets";
  o.cap_adapters = 2;
  o.every = 2;
  o.arrivals = 4;
  o.limit = 6;
  o.threads = 2;
  const OnlineResult r = run_online(o);
  ASSERT_EQ(r.order.size(), 4u);
  ASSERT_EQ(r.variants.size(), 5u);
  EXPECT_EQ(r.variants[4].name, "add-none-2");
  for (const auto& v : r.variants) {
    SCOPED_TRACE(v.name);
    ASSERT_EQ(v.points.size(), 2u);
    EXPECT_EQ(v.points[0].arrivals, 2u);
    EXPECT_EQ(v.points[1].arrivals, 4u);
    for (const auto& p : v.points) {
      EXPECT_GE(p.mean_relative, 0.0);
      if (v.name.rfind("add-none", 0) != 0) EXPECT_LE(p.storage, 2.0 + 1e-9);  // the cap
    }
  }
  // Within the cap every adapter is kept exactly by the full merge (budget
  // 1) and by K-Merge (a slot each).
  EXPECT_DOUBLE_EQ(r.variants[2].points[0].mean_relative, 1.0);
  EXPECT_DOUBLE_EQ(r.variants[3].points[0].mean_relative, 1.0);
  EXPECT_DOUBLE_EQ(r.variants[3].points[1].storage, 2.0);
  // add --refit none only appends: its storage grows with the arrivals,
  // from the first adapter's hydra point and from the first two's (one
  // body and two heads either way at two arrivals).
  EXPECT_GT(r.variants[0].points[1].storage, r.variants[0].points[0].storage);
  EXPECT_GT(r.variants[4].points[1].storage, r.variants[4].points[0].storage);
  EXPECT_DOUBLE_EQ(r.variants[4].points[0].storage, r.variants[0].points[0].storage);
  const auto j = nlohmann::json::parse(r.json());
  EXPECT_EQ(j["order"].size(), 4u);
  EXPECT_NE(r.table().find("| 4 |"), std::string::npos);
}

}  // namespace
}  // namespace hydraopt
