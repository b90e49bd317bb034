// The public API beside merge: the method registry as users see it, the
// Bundle class, and TensorFile.
#include <gtest/gtest.h>

#include <cmath>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <set>

#include "hydraopt/adapter.h"
#include "hydraopt/bundle.h"
#include "hydraopt/error.h"
#include "hydraopt/merge.h"
#include "hydraopt/synth.h"
#include "hydraopt/tensors.h"
#include "plan/registry.h"
#include "test_util.h"

namespace hydraopt {
namespace {

const MethodInfo& info(const std::string& name) {
  const MethodInfo* m = find_method(name);
  EXPECT_NE(m, nullptr) << name;
  return *m;
}

std::vector<std::string> param_names(const MethodInfo& m) {
  std::vector<std::string> v;
  for (auto& p : m.params) v.push_back(p.name);
  return v;
}

TEST(Registry, PublicViewIsTheRegistryInOrder) {
  ASSERT_EQ(methods().size(), registry().size());
  for (size_t i = 0; i < methods().size(); ++i) {
    EXPECT_EQ(methods()[i].name, registry()[i].info.name);
    EXPECT_EQ(methods()[i].params.size(), registry()[i].params.size());
    EXPECT_TRUE(registry()[i].run) << methods()[i].name;
  }
  std::set<std::string> names;
  for (auto& m : methods()) EXPECT_TRUE(names.insert(m.name).second) << "twice: " << m.name;
  EXPECT_EQ(methods()[0].name, "hydraopt");
  EXPECT_EQ(find_method("TIES"), nullptr);
  EXPECT_THROW(method_named("nope"), Error);
}

// The single merges' parameters follow from their pieces (baselines.cc).
TEST(Registry, SingleMergeParametersFollowTheirPieces) {
  using V = std::vector<std::string>;
  EXPECT_EQ(param_names(info("ta")), (V{"lambda", "rank"}));
  EXPECT_EQ(param_names(info("ties")), (V{"density", "sign_method", "lambda", "rank"}));
  EXPECT_EQ(param_names(info("dare-linear")), (V{"density", "seed", "lambda", "rank"}));
  EXPECT_EQ(param_names(info("dare-ties")), (V{"density", "sign_method", "seed", "lambda", "rank"}));
  EXPECT_EQ(info("ta").params[0].default_value, "1/N");
  EXPECT_EQ(info("ties").params[2].default_value, "1");
  for (auto& m : methods()) {
    EXPECT_EQ(m.single_adapter, m.kind == MethodKind::kSingleAdapter) << m.name;
    if (m.single_adapter) EXPECT_FALSE(m.uses_budget) << m.name;
  }
  EXPECT_EQ(info("hydraopt").kind, MethodKind::kPlanner);
  EXPECT_EQ(param_names(info("hydra")), V{});
}

TEST(Registry, ParametersAreCheckedAgainstTheirRanges) {
  const auto& specs = method_named("dare-ties").params;
  auto error = [&](std::map<std::string, std::string> given) {
    return test::error_of([&] { Params::resolve("dare-ties", specs, given); });
  };
  EXPECT_NO_THROW(Params::resolve("dare-ties", specs,
                                  {{"density", "0.5"}, {"seed", "7"}, {"lambda", "1/N"}, {"sign_method", "frequency"}}));
  EXPECT_NE(error({{"density", "0"}}).find("density must be in (0, 1]"), std::string::npos);
  EXPECT_NE(error({{"density", "1.5"}}).find("(0, 1]"), std::string::npos);
  EXPECT_NE(error({{"density", "abc"}}).find("is not a number"), std::string::npos);
  EXPECT_NE(error({{"seed", "1.5"}}).find("non-negative integer"), std::string::npos);
  EXPECT_NE(error({{"seed", "-1"}}).find("non-negative integer"), std::string::npos);
  EXPECT_NE(error({{"sign_method", "majority"}}).find("total or frequency"), std::string::npos);
  EXPECT_NE(error({{"lambda", "inf"}}).find("is not a number"), std::string::npos);
  EXPECT_NE(error({{"tol", "1"}}).find("has no parameter 'tol'"), std::string::npos);
  const Params p = Params::resolve("dare-ties", specs, {{"density", "0.50"}});
  EXPECT_EQ(p.text("density"), "0.50");  // as given: reports record it so
  EXPECT_EQ(p.real("density"), 0.5);
  EXPECT_EQ(p.text("seed"), "0");       // defaults filled in
  EXPECT_NE(test::error_of([&] { Params::resolve("hydraopt", method_named("hydraopt").params, {{"tol", "-1"}}); })
                .find("tol must be >= 0"),
            std::string::npos);
}

// --plan goes with the planner only; before this check other methods
// ignored it silently.
TEST(Registry, PlanFileGoesWithThePlannerOnly) {
  test::TempDir d;
  SynthOptions o;
  o.tasks = 2;
  std::vector<std::string> specs;
  for (auto& p : synth_write(d / "s", o)) specs.push_back(p.string());
  auto set = AdapterSet::open(specs);
  MergeOptions mo;
  mo.method = "hydra";
  mo.plan_file = (d / "plan.json").string();
  EXPECT_NE(test::error_of([&] { merge(set, mo, ""); }).find("goes with --method hydraopt"), std::string::npos);
}

class BundleApi : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    SynthOptions o;
    o.tasks = 3;
    std::vector<std::string> specs;
    for (auto& p : synth_write(*dir_ / "s", o)) specs.push_back(p.string());
    set_ = new AdapterSet(AdapterSet::open(specs));
    MergeOptions mo;
    mo.budget = 1.0;  // every task exact
    mo.dtype = DType::F32;
    merge(*set_, mo, *dir_ / "exact.safetensors");
    mo.method = "hydra";
    mo.budget.reset();
    report_ = new MergeReport(merge(*set_, mo, *dir_ / "hydra.safetensors"));
  }
  static void TearDownTestSuite() {
    delete report_;
    delete set_;
    delete dir_;
  }
  static test::TempDir* dir_;
  static AdapterSet* set_;
  static MergeReport* report_;
};
test::TempDir* BundleApi::dir_ = nullptr;
AdapterSet* BundleApi::set_ = nullptr;
MergeReport* BundleApi::report_ = nullptr;

// At budget 1 every task is stored exactly: a task's update from the
// bundle is the adapter's own s B A (F32 both).
TEST_F(BundleApi, ExactBundleGivesBackEachAdaptersUpdate) {
  const Bundle b = Bundle::open(*dir_ / "exact.safetensors");
  ASSERT_EQ(b.tasks().size(), set_->size());
  ASSERT_EQ(b.module_count(), set_->modules().size());
  for (size_t i = 0; i < set_->size(); ++i) {
    EXPECT_EQ(b.task_index(set_->task(i).name()), i);
    const auto updates = b.task_update(i);
    ASSERT_EQ(updates.size(), b.module_count());
    for (size_t m = 0; m < updates.size(); ++m) {
      const ModuleLora l = set_->load(m)[i];
      const Eigen::MatrixXd want = l.scale * l.B * l.A;
      const Eigen::MatrixXd got = updates[m].left * updates[m].right;
      EXPECT_EQ(updates[m].module, set_->modules()[m].name);
      EXPECT_LE((got - want).norm(), 1e-6 * want.norm()) << "task " << i << " module " << m;
    }
  }
}

// The hydra bundle: one body per module shared by every task, its factors
// as the module view shows them, and the plan the report gave.
TEST_F(BundleApi, ModulesShowTheirStoredFactors) {
  const Bundle b = Bundle::open(*dir_ / "hydra.safetensors");
  EXPECT_EQ(b.method(), "hydra");
  EXPECT_EQ(b.params(), report_->params);
  EXPECT_EQ(nlohmann::json::parse(b.plan_json()), nlohmann::json::parse(report_->plan_json));
  for (size_t m = 0; m < b.module_count(); ++m) {
    const BundleModule bm = b.module(m);
    EXPECT_EQ(b.module_index(bm.name()), m);
    ASSERT_EQ(bm.bodies().size(), 1u);
    EXPECT_EQ(bm.heads().size(), set_->size());
    for (size_t i = 0; i < set_->size(); ++i) {
      const FactoredUpdate u = bm.task_update(i);
      const Eigen::MatrixXd want = bm.scale()[i] * bm.heads()[bm.head_of()[i]] * bm.bodies()[bm.body_of()[i]];
      EXPECT_LE((u.left * u.right - want).norm(), 1e-12 * (1 + want.norm()));
    }
  }
  EXPECT_NE(test::error_of([&] { b.task_index("nope"); }).find("no task 'nope' (tasks: task00"), std::string::npos);
  EXPECT_NE(test::error_of([&] { b.module_index("nope"); }).find("no module 'nope'"), std::string::npos);
  EXPECT_THROW(b.task_update(99), Error);
  EXPECT_THROW(b.module(b.module_count()), Error);
}

TEST(TensorFileApi, RoundTripAndRejections) {
  test::TempDir d;
  const std::vector<float> v{1.5f, -2.0f, 3.25f, 0.0f, 7.0f, -0.5f};
  write_tensors(d / "t.safetensors", {{"m", {2, 3}, v}, {"n", {3}, {1.0f, 2.0f, 3.0f}}}, {{"format", "pt"}});
  const TensorFile f = TensorFile::open(d / "t.safetensors");
  EXPECT_EQ(f.names(), (std::vector<std::string>{"m", "n"}));
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.shape("m"), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(f.dtype("m"), DType::F32);
  const Eigen::MatrixXd m = f.matrix("m");
  ASSERT_EQ(m.rows(), 2);
  EXPECT_EQ(m(0, 2), 3.25);  // row-major values
  EXPECT_EQ(m(1, 0), 0.0);
  EXPECT_EQ(f.matrix("n").cols(), 1);
  EXPECT_EQ(f.matrix("n")(2, 0), 3.0);
  EXPECT_NE(test::error_of([&] { f.matrix("zz"); }).find("tensor 'zz': missing"), std::string::npos);
  EXPECT_NE(test::error_of([&] { write_tensors(d / "u.safetensors", {{"x", {2, 2}, v}}); })
                .find("shape and value count differ"),
            std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(d / "u.safetensors"));
}

// Halves are rounded to nearest even: 1 + 2^-8 is a tie in bf16 (8
// significand bits) and goes down to 1, 1 + 3 * 2^-8 goes up to 1 + 2^-6;
// f16 keeps both. The reader gives back the rounded values.
TEST(TensorFileApi, HalvesAreRoundedToNearestEven) {
  test::TempDir d;
  const float tie = 1.0f + std::ldexp(1.0f, -8), up = 1.0f + 3 * std::ldexp(1.0f, -8);
  const std::vector<float> v{tie, up, -2.5f, 65504.0f};
  write_tensors(d / "b.safetensors", {{"x", {4}, v}}, {}, DType::BF16);
  write_tensors(d / "h.safetensors", {{"x", {4}, v}}, {}, DType::F16);
  const TensorFile b = TensorFile::open(d / "b.safetensors"), h = TensorFile::open(d / "h.safetensors");
  EXPECT_EQ(b.dtype("x"), DType::BF16);
  EXPECT_EQ(h.dtype("x"), DType::F16);
  EXPECT_EQ(std::filesystem::file_size(d / "b.safetensors"), std::filesystem::file_size(d / "h.safetensors"));
  const Eigen::MatrixXd bx = b.matrix("x"), hx = h.matrix("x");
  EXPECT_EQ(bx(0, 0), 1.0);
  EXPECT_EQ(bx(1, 0), 1.0 + std::ldexp(1.0, -6));
  EXPECT_EQ(bx(2, 0), -2.5);
  EXPECT_EQ(bx(3, 0), 65536.0);  // 65504 rounds up at 8 bits
  for (int i = 0; i < 4; ++i) EXPECT_EQ(hx(i, 0), static_cast<double>(v[static_cast<size_t>(i)])) << i;
  EXPECT_NE(test::error_of([&] { write_tensors(d / "u.safetensors", {{"x", {4}, v}}, {}, DType::U8); })
                .find("stores f32, f16 or bf16"),
            std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(d / "u.safetensors"));
}

}  // namespace
}  // namespace hydraopt
