// End-to-end merging: invariants, optima, bundles and exports.
#include <gtest/gtest.h>

#include <cstring>

#include <Eigen/SVD>
#include <nlohmann/json.hpp>

#include "core/rounding.h"
#include "hydraopt/adapter.h"
#include "hydraopt/bundle.h"
#include "hydraopt/error.h"
#include "hydraopt/merge.h"
#include "hydraopt/synth.h"
#include "io/bundle.h"
#include "test_util.h"

namespace hydraopt {
namespace {

namespace fs = std::filesystem;
using Eigen::MatrixXd;

// One synthetic set shared by the tests of this file (written once).
std::vector<std::string> specs() { return test::synth_specs(6); }

const AdapterSet& tiny() {
  static AdapterSet set = AdapterSet::open(specs());
  return set;
}

MergeOptions at(double budget, const std::string& method = "hydraopt") {
  MergeOptions o;
  o.method = method;
  o.budget = budget;
  return o;
}

// tiny() merged with `o` into d/merged.safetensors, read back.
io::Bundle merged_bundle(const test::TempDir& d, const MergeOptions& o) {
  merge(tiny(), o, d / "merged.safetensors");
  return io::bundle_read(d / "merged.safetensors");
}

// Each module's stored bytes (BundleWriter::expect's layout).
std::vector<int64_t> module_bytes(const io::Bundle& b) {
  std::vector<int64_t> bytes;
  for (const auto& m : b.modules) bytes.push_back(fit_bytes(m.fit, m.precision, b.dtype));
  return bytes;
}

// Dense reference: relative error per task from explicit matrices.
std::vector<double> dense_rel_errors(const AdapterSet& set, const std::vector<std::map<std::string, MatrixXd>>& hat) {
  std::vector<double> out;
  for (size_t i = 0; i < set.size(); ++i) {
    double err = 0, norm = 0;
    for (size_t m = 0; m < set.modules().size(); ++m) {
      auto l = set.load(m)[i];
      MatrixXd dw = l.scale * l.B * l.A;
      auto it = hat[i].find(set.modules()[m].name);
      MatrixXd h = it == hat[i].end() ? MatrixXd::Zero(dw.rows(), dw.cols()) : it->second;
      err += (dw - h).squaredNorm();
      norm += dw.squaredNorm();
    }
    out.push_back(std::sqrt(err / norm));
  }
  return out;
}

TEST(Merge, FullBudgetIsExact) {
  auto r = merge(tiny(), at(1.0), "");
  EXPECT_EQ(r.params, r.original_params);
  EXPECT_LT(r.mean_rel_error, 1e-6);
  for (auto& t : r.tasks) EXPECT_LT(t.rel_error, 1e-6) << t.name;
}

// Stored in the inputs' own dtype (F32 here) the exact structure loses
// nothing, to the last bit; stored in BF16 it loses what rounding A and B
// loses, which a dense product of the rounded factors measures.
TEST(Merge, ExactStorageLosesWhatRoundingTheFactorsLoses) {
  MergeOptions o = at(1.0);
  o.dtype = DType::F32;
  for (const auto& t : merge(tiny(), o, "").tasks) EXPECT_EQ(t.rel_error, 0.0) << t.name;
  o.dtype = DType::BF16;
  const MergeReport r = merge(tiny(), o, "");
  const size_t n = tiny().size();
  std::vector<double> err(n, 0.0), norm(n, 0.0);
  for (size_t m = 0; m < tiny().modules().size(); ++m) {
    const auto loras = tiny().load(m);
    for (size_t i = 0; i < n; ++i) {
      const MatrixXd dw = loras[i].scale * loras[i].B * loras[i].A;
      const MatrixXd kept =
          loras[i].scale * round_to_dtype(loras[i].B, DType::BF16) * round_to_dtype(loras[i].A, DType::BF16);
      err[i] += (dw - kept).squaredNorm();
      norm[i] += dw.squaredNorm();
    }
  }
  ASSERT_EQ(r.tasks.size(), n);
  for (size_t i = 0; i < n; ++i) {
    EXPECT_GT(r.tasks[i].rel_error, 0.0);
    EXPECT_NEAR(r.tasks[i].rel_error, std::sqrt(err[i] / norm[i]), 1e-9 * std::sqrt(err[i] / norm[i]));
  }
}

TEST(Merge, ErrorNeverRisesWithBudgetAndBudgetHolds) {
  std::vector<double> budgets = {0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0};
  auto reports = sweep(tiny(), {"hydraopt", "jd-full", "jd-diag"}, budgets, {});
  std::map<std::string, double> last;
  for (auto& r : reports) {
    EXPECT_LE(r.fraction, r.budget + 1e-12) << r.method;
    if (last.count(r.method)) EXPECT_LE(r.mean_rel_error, last[r.method] + 1e-12) << r.method << " " << r.budget;
    last[r.method] = r.mean_rel_error;
  }
  EXPECT_LT(last["hydraopt"], 1e-6);
}

TEST(Merge, HydraPointMatchesTheDenseClosedFormOptimum) {
  const AdapterSet& set = tiny();
  const size_t n = set.size();
  // Storage of one shared A (r x in) with a head per task (out x r) per module.
  int64_t hydra = 0;
  std::vector<double> total(n, 0.0);
  for (size_t m = 0; m < set.modules().size(); ++m) {
    auto loras = set.load(m);
    for (size_t i = 0; i < n; ++i) total[i] += (loras[i].scale * loras[i].B * loras[i].A).squaredNorm();
  }
  // Dense optimum of that structure under balanced weights.
  std::vector<std::map<std::string, MatrixXd>> hat(n);
  for (size_t m = 0; m < set.modules().size(); ++m) {
    const auto& mod = set.modules()[m];
    auto loras = set.load(m);
    const int64_t r = loras[0].rank();
    hydra += r * mod.in + static_cast<int64_t>(n) * r * mod.out;
    MatrixXd stack(n * mod.out, mod.in);
    for (size_t i = 0; i < n; ++i) {
      stack.middleRows(i * mod.out, mod.out) = (loras[i].scale * loras[i].B * loras[i].A) / std::sqrt(total[i]);
    }
    Eigen::JacobiSVD<MatrixXd> svd(stack, Eigen::ComputeThinV);
    MatrixXd v = svd.matrixV().leftCols(r);
    for (size_t i = 0; i < n; ++i) hat[i][mod.name] = loras[i].scale * loras[i].B * loras[i].A * v * v.transpose();
  }
  auto dense = dense_rel_errors(set, hat);
  double dense_sq = 0;
  for (double e : dense) dense_sq += e * e;
  const double fraction = static_cast<double>(hydra) / set.original_params();
  auto r = merge(set, at(fraction), "");
  double got_sq = 0;
  for (auto& t : r.tasks) got_sq += t.rel_error * t.rel_error;
  // The planner optimises the same objective (sum of squared relative
  // errors): it matches the closed form or beats it by mixing structures.
  EXPECT_LE(got_sq, dense_sq * 1.01);
  // A plan that forces the closed-form structure reproduces it exactly.
  test::TempDir d;
  nlohmann::json plan = nlohmann::json::array();
  for (auto& m : set.modules()) plan.push_back({{"name", m.name}, {"family", "shared-A"}, {"rank", 4}, {"groups", 0}});
  test::write_text(d / "plan.json", plan.dump());
  MergeOptions o = at(fraction);
  o.plan_file = (d / "plan.json").string();
  auto forced = merge(set, o, "");
  for (size_t i = 0; i < n; ++i) EXPECT_NEAR(forced.tasks[i].rel_error, dense[i], 1e-6 * (1 + dense[i]));
  // So does the `hydra` method, at exactly the hydra point's storage.
  auto fixed = merge(set, at(1.0, "hydra"), "");
  EXPECT_EQ(fixed.params, hydra);
  for (size_t i = 0; i < n; ++i) EXPECT_NEAR(fixed.tasks[i].rel_error, dense[i], 1e-6 * (1 + dense[i]));
}

// A byte plan's report, given back as --plan, is fitted as planned: the
// same structures and integer formats, the same bytes and errors.
TEST(Merge, ByteReportsPlanReproducesTheBundle) {
  test::TempDir d;
  MergeOptions o;
  o.unit = BudgetUnit::kBytes;
  o.budget = 0.2;
  const MergeReport planned = merge(tiny(), o, "");
  ASSERT_NE(planned.plan_json.find("precision"), std::string::npos);
  test::write_text(d / "plan.json", planned.plan_json);
  MergeOptions again = o;
  again.plan_file = (d / "plan.json").string();
  const MergeReport replayed = merge(tiny(), again, "");
  EXPECT_EQ(replayed.plan_json, planned.plan_json);
  EXPECT_EQ(replayed.bytes, planned.bytes);
  for (size_t i = 0; i < planned.tasks.size(); ++i) {
    EXPECT_NEAR(replayed.tasks[i].rel_error, planned.tasks[i].rel_error, 1e-9 * (1 + planned.tasks[i].rel_error)) << i;
  }
}

TEST(Merge, AtOneOverNHydraoptBeatsSingleAdapterMerges) {
  const double one = 1.0 / 6;
  auto h = merge(tiny(), at(one), "");
  EXPECT_LE(h.fraction, one + 1e-12);
  for (const char* m : {"ta", "ties", "linear"}) {
    auto r = merge(tiny(), at(one, m), "");
    EXPECT_NEAR(r.fraction, one, 1e-12) << m;
    EXPECT_LE(h.mean_rel_error, r.mean_rel_error) << m;
  }
}

TEST(Merge, BundlesAreByteIdenticalAcrossThreadCounts) {
  test::TempDir d;
  for (int threads : {1, 2}) {
    MergeOptions o = at(0.4);
    o.threads = threads;
    merge(tiny(), o, d / ("b" + std::to_string(threads) + ".safetensors"));
  }
  EXPECT_EQ(test::read_text(d / "b1.safetensors"), test::read_text(d / "b2.safetensors"));
}

// The hydra point spreads its threads across modules, or inside each
// module (tasks, tensors, the range finder's row blocks); on the `small`
// preset its subspaces take the randomized path over several blocks.
// Neither the spread nor the thread count may change a byte.
TEST(Merge, HydraPointIsByteIdenticalAcrossThreadCounts) {
  test::TempDir d;
  SynthOptions so;
  so.preset = "small";
  std::vector<std::string> in;
  for (auto& p : synth_write(d / "small", so)) in.push_back(p.string());
  const AdapterSet set = AdapterSet::open(in);
  // Threads across modules (the default here) and inside one module (no
  // memory for more than one module's factors).
  for (double across_bytes : {1e18, 0.0}) {
    for (int threads : {1, 2, 3}) {
      MergeOptions o;
      o.method = "hydra";
      o.threads = threads;
      o.across_bytes = across_bytes;
      merge(set, o, d / ("b" + std::to_string(threads) + (across_bytes > 0 ? "a" : "i") + ".safetensors"));
    }
  }
  const std::string one = test::read_text(d / "b1a.safetensors");
  for (const char* other : {"b2a", "b3a", "b1i", "b2i", "b3i"}) {
    EXPECT_EQ(one, test::read_text(d / (std::string(other) + ".safetensors"))) << other;
  }
}

// Modules may reach the writer in any order (threads finish when they
// finish); the file must not depend on it. An unfinished writer leaves
// nothing behind.
TEST(BundleWriter, FileDoesNotDependOnModuleOrder) {
  test::TempDir d;
  const io::Bundle b = merged_bundle(d, at(0.4));
  ASSERT_GT(b.modules.size(), 2u);
  {
    io::BundleWriter w(d / "reversed.safetensors", b.dtype, b.modules.size());
    for (size_t m = b.modules.size(); m-- > 0;) w.write_module(m, b.modules[m]);
    EXPECT_THROW(w.write_module(0, b.modules[0]), std::logic_error);
    w.finish(b);
  }
  io::bundle_write(d / "forward.safetensors", b);
  EXPECT_EQ(test::read_text(d / "reversed.safetensors"), test::read_text(d / "forward.safetensors"));
  EXPECT_EQ(test::read_text(d / "reversed.safetensors"), test::read_text(d / "merged.safetensors"));
  {
    io::BundleWriter w(d / "unfinished.safetensors", b.dtype, b.modules.size());
    w.write_module(0, b.modules[0]);
    EXPECT_THROW(w.finish(b), std::logic_error);  // modules missing
  }
  size_t files = 0;
  for ([[maybe_unused]] auto& e : fs::directory_iterator(d.path())) ++files;
  EXPECT_EQ(files, 3u) << "no spool or partial output may remain";
}

// A module stored early and then replaced (discard(), as the planner does
// when a later round chooses another structure) leaves only the second in
// the file; once expect() fixed the layout nothing can be discarded.
TEST(BundleWriter, DiscardedModuleIsReplaced) {
  test::TempDir d;
  const io::Bundle b = merged_bundle(d, at(0.4));
  ASSERT_GT(b.modules.size(), 1u);
  {
    io::BundleWriter w(d / "replaced.safetensors", b.dtype, b.modules.size());
    w.write_module(0, b.modules[1]);  // the wrong module's fit first
    w.discard(0);
    EXPECT_FALSE(w.has_module(0));
    for (size_t m = 0; m < b.modules.size(); ++m) w.write_module(m, b.modules[m]);
    w.finish(b);
  }
  EXPECT_EQ(test::read_text(d / "replaced.safetensors"), test::read_text(d / "merged.safetensors"));
  io::BundleWriter w(d / "direct.safetensors", b.dtype, b.modules.size());
  w.expect(module_bytes(b));
  w.write_module(0, b.modules[0]);
  EXPECT_THROW(w.discard(0), std::logic_error);
}

// Given the layout in advance (expect()), modules go straight to their
// places in the output file, in any order, and the header is put in front
// at the end; where the file system cannot insert it (tmpfs), finish()
// copies instead. Either way the file is the spool's, byte for byte, with
// the data at a 4 KiB boundary. A module of another size is refused.
TEST(BundleWriter, ExpectedLayoutGivesTheSameFile) {
  test::TempDir d;
  MergeOptions o = at(0.4);
  o.method = "hydra";  // evaluate_all sets the layout
  const io::Bundle b = merged_bundle(d, o);
  const std::vector<int64_t> params = module_bytes(b);
  {
    io::BundleWriter w(d / "spooled.safetensors", b.dtype, b.modules.size());
    for (size_t m = 0; m < b.modules.size(); ++m) w.write_module(m, b.modules[m]);
    w.finish(b);
  }
  const std::string spooled = test::read_text(d / "spooled.safetensors");
  EXPECT_EQ(spooled, test::read_text(d / "merged.safetensors"));
  uint64_t n = 0;
  std::memcpy(&n, spooled.data(), 8);
  EXPECT_EQ((8 + n) % 4096, 0u);
  for (const auto& temp : test::output_dirs()) {
    const fs::path& dir = temp->path();
    {
      io::BundleWriter w(dir / "direct.safetensors", b.dtype, b.modules.size());
      w.expect(params);
      for (size_t m = b.modules.size(); m-- > 0;) w.write_module(m, b.modules[m]);
      w.finish(b);
    }
    EXPECT_EQ(test::read_text(dir / "direct.safetensors"), spooled) << dir;
  }
  {
    io::BundleWriter w(d / "wrong.safetensors", b.dtype, b.modules.size());
    std::vector<int64_t> wrong = params;
    wrong[0] += 1;
    w.expect(wrong);
    EXPECT_THROW(w.write_module(0, b.modules[0]), std::logic_error);
    EXPECT_THROW(w.expect(std::vector<int64_t>(1)), std::logic_error);  // one size per module
  }
  {
    io::BundleWriter w(d / "late.safetensors", b.dtype, b.modules.size());
    w.write_module(0, b.modules[0]);
    EXPECT_THROW(w.expect(params), std::logic_error);  // too late
  }
  EXPECT_FALSE(fs::exists(d / "wrong.safetensors"));
  EXPECT_FALSE(fs::exists(d / "late.safetensors"));
}

// Under MPI, ranks other than 0 spool their modules and send them to rank
// 0 as encoded records; what rank 0 stores must be what write_module()
// would have stored.
TEST(BundleWriter, EncodedModulesGiveTheSameFile) {
  test::TempDir d;
  MergeOptions o = at(0.4);
  o.dtype = DType::BF16;
  const io::Bundle b = merged_bundle(d, o);
  {
    io::BundleWriter spool(b.dtype, b.modules.size());  // in $TMPDIR, unlinked
    io::BundleWriter w(d / "relayed.safetensors", b.dtype, b.modules.size());
    for (size_t m = 0; m < b.modules.size(); ++m) {
      if (m % 2) {
        spool.write_module(m, b.modules[m]);
        w.write_encoded(m, spool.encoded_module(m));
      } else {
        w.write_module(m, b.modules[m]);
      }
    }
    EXPECT_THROW(spool.encoded_module(0), std::logic_error);  // never written there
    EXPECT_THROW(spool.finish(b), std::logic_error);          // spools cannot finish
    std::string bad = spool.encoded_module(1);
    bad.pop_back();
    io::BundleWriter w2(d / "never.safetensors", b.dtype, b.modules.size());
    EXPECT_ANY_THROW(w2.write_encoded(1, bad));
    w.finish(b);
  }
  EXPECT_EQ(test::read_text(d / "relayed.safetensors"), test::read_text(d / "merged.safetensors"));
  EXPECT_FALSE(fs::exists(d / "never.safetensors"));
}

TEST(Merge, ExportReproducesTheReportedError) {
  test::TempDir d;
  for (const char* method : {"hydraopt", "jd-full", "jd-diag", "ties", "hydra-avg"}) {
    SCOPED_TRACE(method);
    const fs::path bundle = d / (std::string(method) + ".safetensors");
    auto report = merge(tiny(), at(0.35, method), bundle);
    EXPECT_EQ(Bundle::open(bundle).tasks().size(), 6u);
    const fs::path out = d / (std::string(method) + "-export");
    Bundle::open(bundle).export_peft("", out);
    std::vector<std::map<std::string, MatrixXd>> hat(6);
    for (size_t i = 0; i < 6; ++i) {
      auto a = Adapter::open((out / tiny().task(i).name()).string());
      EXPECT_EQ(a.name(), tiny().task(i).name());
      for (auto& m : a.modules()) {
        auto l = a.load(m.name);
        hat[i][m.name] = l.scale * l.B * l.A;
      }
    }
    auto dense = dense_rel_errors(tiny(), hat);
    for (size_t i = 0; i < 6; ++i) EXPECT_NEAR(dense[i], report.tasks[i].rel_error, 1e-5) << i;
  }
}

// One run for several budgets: each bundle holds what its report measured
// (the dense error of its export), the reports are the sweep's, and each
// bundle is the one a merge at that budget alone writes where the plans
// agree (the reports say so).
TEST(Merge, SeveralBudgetsInOneRunWriteWhatTheyReport) {
  test::TempDir d;
  const std::vector<double> budgets = {0.2, 0.45, 0.8};
  std::vector<fs::path> paths;
  for (size_t b = 0; b < budgets.size(); ++b) paths.push_back(d / ("b" + std::to_string(b) + ".safetensors"));
  MergeOptions o;
  o.method = "hydraopt";
  const auto reports = merge(tiny(), o, budgets, paths);
  const auto swept = sweep(tiny(), {"hydraopt"}, budgets, o);
  ASSERT_EQ(reports.size(), budgets.size());
  for (size_t b = 0; b < budgets.size(); ++b) {
    SCOPED_TRACE(budgets[b]);
    EXPECT_EQ(reports[b].plan_json, swept[b].plan_json);
    EXPECT_DOUBLE_EQ(reports[b].mean_rel_error, swept[b].mean_rel_error);
    const fs::path out = d / ("export" + std::to_string(b));
    Bundle::open(paths[b]).export_peft("", out);
    std::vector<std::map<std::string, MatrixXd>> hat(6);
    for (size_t i = 0; i < 6; ++i) {
      auto a = Adapter::open((out / tiny().task(i).name()).string());
      for (auto& m : a.modules()) {
        auto l = a.load(m.name);
        hat[i][m.name] = l.scale * l.B * l.A;
      }
    }
    const auto dense = dense_rel_errors(tiny(), hat);
    for (size_t i = 0; i < 6; ++i) EXPECT_NEAR(dense[i], reports[b].tasks[i].rel_error, 1e-5) << i;
    const fs::path alone = d / ("alone" + std::to_string(b) + ".safetensors");
    const auto single = merge(tiny(), at(budgets[b]), alone);
    if (single.plan_json == reports[b].plan_json) EXPECT_EQ(test::read_text(alone), test::read_text(paths[b]));
  }
  EXPECT_NE(test::error_of([&] { merge(tiny(), o, {0.2}, {}); }).find("one bundle path per budget"), std::string::npos);
  EXPECT_NE(test::error_of([&] { merge(tiny(), at(0.3), {0.2}, {paths[0]}); }).find("as a list"), std::string::npos);
}

TEST(Merge, BadOptionsAreClearErrors) {
  auto msg = [](const MergeOptions& o) {
    try {
      merge(tiny(), o, "");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(msg(at(0)).find("(0, 1]"), std::string::npos);
  EXPECT_NE(msg(at(1.5)).find("(0, 1]"), std::string::npos);
  EXPECT_NE(msg(at(0.5, "nope")).find("unknown method 'nope'"), std::string::npos);
  EXPECT_NE(msg(at(0.01)).find("smallest achievable storage, fraction"), std::string::npos);
  MergeOptions o = at(0.5, "ta");
  o.params["density"] = "0.3";
  EXPECT_NE(msg(o).find("method ta has no parameter 'density'"), std::string::npos);
  o = at(0.5);
  o.share = "C";
  EXPECT_NE(msg(o).find("--share"), std::string::npos);
}

TEST(Merge, ShareRestrictsTheStructures) {
  for (const char* side : {"A", "B"}) {
    MergeOptions o = at(0.45);
    o.share = side;
    auto r = merge(tiny(), o, "");
    auto plan = nlohmann::json::parse(r.plan_json);
    for (auto& m : plan) {
      std::string fam = m["family"];
      EXPECT_EQ(fam.find(std::string("-") + (side[0] == 'A' ? "B" : "A")), std::string::npos) << fam;
      EXPECT_EQ(fam.find("jd"), std::string::npos) << fam;
    }
  }
}

// weights = "module": every (module, task) counts by its relative error, so
// scaling one module's updates in every task leaves the plan as it was;
// under "balanced" the larger module takes the budget.
TEST(Merge, ModuleWeightsDoNotDependOnAModulesScale) {
  const test::TempDir d;
  auto write_set = [&](const std::string& name, double scale) {
    std::vector<std::string> dirs;
    for (int t = 0; t < 5; ++t) {
      std::vector<test::TestModule> mods;
      for (int m = 0; m < 3; ++m) {
        const uint64_t seed = 100 * t + 10 * m;
        // Tasks share part of A, so the shared structures are worth something.
        MatrixXd a = test::random_matrix(4, 24, seed) + 2 * test::random_matrix(4, 24, 7 + m);
        MatrixXd b = test::random_matrix(20, 4, seed + 1) * (m == 1 ? scale : 1.0);
        mods.push_back({"model.layers." + std::to_string(m) + ".self_attn.q_proj", a, b});
      }
      const fs::path dir = d / (name + std::to_string(t));
      test::write_adapter(dir, R"({"r": 4, "lora_alpha": 4, "target_modules": ["q_proj"]})", mods);
      dirs.push_back(dir.string());
    }
    return AdapterSet::open(dirs);
  };
  const AdapterSet plain = write_set("plain", 1.0), scaled = write_set("scaled", 30.0);
  auto plan = [](const AdapterSet& set, const std::string& weights) {
    MergeOptions o = at(0.45);
    o.weights = weights;
    std::vector<std::string> out;
    for (auto& m : nlohmann::json::parse(merge(set, o, "").plan_json)) out.push_back(m.dump());
    return out;
  };
  EXPECT_EQ(plan(plain, "module"), plan(scaled, "module"));
  EXPECT_NE(plan(plain, "balanced"), plan(scaled, "balanced"));
}

}  // namespace
}  // namespace hydraopt
