// Budgets in bytes (issue 17): the planner's precision axis end to end,
// and bundles that store factors as group-wise integers.
#include <gtest/gtest.h>

#include <cstring>

#include <nlohmann/json.hpp>

#include "core/half.h"
#include "core/quant.h"
#include "hydraopt/adapter.h"
#include "hydraopt/error.h"
#include "hydraopt/merge.h"
#include "hydraopt/synth.h"
#include "hydraopt/bundle.h"
#include "io/bundle.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace hydraopt {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::vector<std::string> specs() { return test::synth_specs(5); }

const AdapterSet& tiny() {
  static AdapterSet set = AdapterSet::open(specs());
  return set;
}

MergeOptions in_bytes(double bf16_fraction) {
  MergeOptions o;
  o.budget = bf16_fraction;
  o.unit = BudgetUnit::kBytes;
  return o;
}

// Sum of the tensors' bytes in a safetensors file.
int64_t tensor_bytes(const fs::path& file) {
  auto st = io::SafetensorsFile::open(file);
  int64_t n = 0;
  for (const auto& t : st.tensors()) n += static_cast<int64_t>(t.nbytes());
  return n;
}

TEST(Bytes, BudgetHoldsErrorFallsAndTheBundleIsWhatTheReportSays) {
  test::TempDir d;
  const std::vector<double> fractions = {0.08, 0.12, 0.2, 0.3, 0.5, 1.0};
  double last = 1e300;
  bool any_integer = false;
  for (double f : fractions) {
    SCOPED_TRACE(f);
    const fs::path out = d / ("b" + std::to_string(f) + ".safetensors");
    MergeReport r;
    try {
      r = merge(tiny(), in_bytes(f), out);
    } catch (const Error& e) {
      EXPECT_LT(f, 0.1) << e.what();  // only the smallest may be below every plan
      continue;
    }
    const double limit = std::floor(f * 2.0 * static_cast<double>(tiny().original_params()) + 1e-9);
    EXPECT_LE(static_cast<double>(r.bytes), limit);
    EXPECT_EQ(r.bytes, tensor_bytes(out));
    EXPECT_NEAR(r.bf16_fraction, static_cast<double>(r.bytes) / (2.0 * tiny().original_params()), 1e-15);
    EXPECT_LE(r.mean_rel_error, last + 1e-12);
    last = r.mean_rel_error;
    const io::Bundle b = io::bundle_read(out);
    for (const auto& m : b.modules) any_integer = any_integer || !m.precision.all_float();
    // The stored values reproduce the reported errors (verify recomputes them).
    const VerifyReport v = verify_bundle(out, specs());
    EXPECT_TRUE(v.problems.empty()) << v.problems[0];
    EXPECT_EQ(v.modules_checksummed, v.modules);
    for (size_t i = 0; i < v.tasks.size(); ++i) {
      EXPECT_NEAR(v.tasks[i].rel_error, r.tasks[i].rel_error, 1e-9 * (1 + r.tasks[i].rel_error)) << i;
    }
  }
  EXPECT_TRUE(any_integer);
}

// Every plan of float factors is among a byte budget's candidates, so at
// the bytes of a bf16 plan the byte planner does at least as well (up to
// how well its predictions rank what it then measures).
TEST(Bytes, IntegersNeverLoseToTheFloatPlanAtItsBytes) {
  for (double f : {0.2, 0.35, 0.5}) {
    MergeOptions p;
    p.budget = f;
    p.dtype = DType::BF16;
    const MergeReport floats = merge(tiny(), p, "");
    MergeOptions b = in_bytes(static_cast<double>(floats.bytes) / (2.0 * tiny().original_params()));
    b.dtype = DType::BF16;
    const MergeReport ints = merge(tiny(), b, "");
    EXPECT_LE(ints.bytes, floats.bytes) << f;
    EXPECT_LE(ints.mean_rel_error, floats.mean_rel_error * 1.02) << f;
  }
}

TEST(Bytes, BudgetBytesIsExactAndCliReportsBothFractions) {
  test::TempDir d;
  std::string in;
  for (const auto& s : specs()) in += " " + s;
  std::string out;
  const int64_t limit = tiny().original_params() / 2;  // a quarter of a bf16 copy
  ASSERT_EQ(test::run(test::cli() + " merge" + in + " --budget-bytes " + std::to_string(limit) + " -o " +
                          (d / "b.safetensors").string() + " --report " + (d / "r.json").string(),
                      &out),
            0)
      << out;
  EXPECT_NE(out.find("of a bf16 copy"), std::string::npos) << out;
  const json r = json::parse(test::read_text(d / "r.json"));
  EXPECT_EQ(r.at("budget_unit"), "bf16_bytes");
  EXPECT_LE(r.at("storage").at("bytes").get<int64_t>(), limit);
  EXPECT_EQ(r.at("storage").at("bytes").get<int64_t>(), tensor_bytes(d / "b.safetensors"));
  EXPECT_GT(r.at("storage").at("bf16_fraction").get<double>(), 0.2);
  // Inputs are f32: their own bytes are twice a bf16 copy's.
  EXPECT_NEAR(r.at("storage").at("byte_fraction").get<double>(), r.at("storage").at("bf16_fraction").get<double>() / 2,
              1e-12);
  // A sweep in bytes: one row per budget, plotted against bytes.
  ASSERT_EQ(test::run(test::cli() + " sweep" + in + " --methods hydraopt --budgets-bf16 0.15,0.3 --out " +
                          (d / "s").string(),
                      &out),
            0)
      << out;
  EXPECT_NE(test::read_text(d / "s" / "sweep.svg").find("fraction of a bf16 copy"), std::string::npos);
  EXPECT_EQ(json::parse(test::read_text(d / "s" / "sweep.json")).size(), 2u);
}

// The quantization baseline is plain round-to-nearest of every adapter's
// own A and B: its errors are those of the adapters with their factors
// quantized here, independently; "auto" takes the best format that fits;
// the planner at the same bytes does at least as well.
TEST(Bytes, QuantBaselineIsPerAdapterRoundingAndThePlannerBeatsIt) {
  const AdapterSet& set = tiny();
  for (const char* name : {"int4-g32-sym", "int3-g128-asym"}) {
    const QuantFormat f = parse_quant_format(name, "test");
    MergeOptions o = in_bytes(1.0);
    o.method = "quant";
    o.params["quant_format"] = name;
    const MergeReport r = merge(set, o, "");
    for (size_t i = 0; i < set.size(); ++i) {
      double err = 0, norm = 0;
      for (size_t m = 0; m < set.modules().size(); ++m) {
        const ModuleLora l = set.load(m)[i];
        const Eigen::MatrixXd dw = l.scale * l.B * l.A;
        err += (dw - l.scale * round_to_format(l.B, f) * round_to_format(l.A, f)).squaredNorm();
        norm += dw.squaredNorm();
      }
      EXPECT_NEAR(r.tasks[i].rel_error, std::sqrt(err / norm), 1e-9) << name << " " << i;
    }
  }
  std::vector<MergeReport> swept = sweep(set, {"quant", "hydraopt"}, {0.1, 0.15, 0.2, 0.3}, [] {
    MergeOptions o;
    o.unit = BudgetUnit::kBytes;
    return o;
  }());
  std::map<double, MergeReport> quant, planner;
  for (const auto& r : swept) (r.method == "quant" ? quant : planner)[r.budget] = r;
  ASSERT_GE(quant.size(), 3u);
  for (const auto& [budget, q] : quant) {
    EXPECT_LE(q.bf16_fraction, budget + 1e-12);
    ASSERT_TRUE(planner.count(budget)) << budget;
    EXPECT_LE(planner[budget].mean_rel_error, q.mean_rel_error) << budget;
  }
  // A budget in stored numbers below 1 cannot hold every number.
  MergeOptions p;
  p.method = "quant";
  p.budget = 0.5;
  EXPECT_NE(test::error_of([&] { merge(set, p, ""); }).find("give a byte budget"), std::string::npos);
}

// ------------------------------------------------------ integer bundles

// A bundle file's tensors and metadata, to edit and write back.
struct Image {
  std::vector<io::TensorData> tensors;
  std::map<std::string, std::string> meta;

  explicit Image(const fs::path& file) {
    auto st = io::SafetensorsFile::open(file);
    meta = st.metadata();
    for (const auto& t : st.tensors()) {
      auto bytes = st.bytes(t);
      tensors.push_back({t.name, t.dtype, t.shape, std::vector<std::byte>(bytes.begin(), bytes.end())});
    }
  }
  io::TensorData& tensor(const std::string& name) {
    for (auto& t : tensors) {
      if (t.name == name) return t;
    }
    throw std::runtime_error("no tensor " + name);
  }
  json hydraopt() const { return json::parse(meta.at("hydraopt")); }
  void set_hydraopt(const json& j) { meta["hydraopt"] = j.dump(); }
  void write(const fs::path& file) const { io::safetensors_write(file, tensors, meta); }
};

// A bundle with integer roles, its first integer module's name, format
// and first head's name.
struct Quantized {
  test::TempDir d;
  fs::path file = d / "q.safetensors";
  std::string module;
  json precision;
  Quantized() {
    merge(tiny(), in_bytes(0.15), file);
    const json meta = Image(file).hydraopt();
    for (const auto& m : meta.at("modules")) {
      if (m.contains("precision") && m["precision"].contains("head")) {
        module = m["name"];
        precision = m["precision"];
        break;
      }
    }
  }
};

std::string error_reading(const fs::path& file) {
  return test::error_of([&] { io::bundle_read(file); });
}

TEST(IntegerBundle, ReadsBackTheStoredValuesAndIsVersion2) {
  Quantized q;
  ASSERT_FALSE(q.module.empty());
  const io::Bundle b = io::bundle_read(q.file);
  EXPECT_EQ(Image(q.file).hydraopt().at("version"), 2);
  // Written again from what was read: the same file, byte for byte.
  test::TempDir d;
  io::bundle_write(d / "again.safetensors", b);
  EXPECT_EQ(test::read_text(d / "again.safetensors"), test::read_text(q.file));
  // A float bundle stays version 1.
  merge(tiny(), MergeOptions{}, d / "f.safetensors");
  EXPECT_EQ(Image(d / "f.safetensors").hydraopt().at("version"), 1);
}

TEST(IntegerBundle, CorruptCodesScalesOrGroupsAreRejectedInOneLine) {
  Quantized q;
  ASSERT_FALSE(q.module.empty());
  const std::string head = q.module + ".head.0";
  test::TempDir d;
  const fs::path bad = d / "bad.safetensors";
  auto expect_rejected = [&](const std::string& what, const std::string& needle) {
    const std::string e = error_reading(bad);
    EXPECT_NE(e.find(bad.string()), std::string::npos) << what << ": " << e;
    EXPECT_NE(e.find(needle), std::string::npos) << what << ": " << e;
    EXPECT_EQ(e.find('\n'), std::string::npos) << what << ": " << e;
  };
  {  // a scale that is not finite
    Image im(q.file);
    auto& s = im.tensor(head + ".scales");
    const uint16_t inf = 0x7c00;
    std::memcpy(s.bytes.data(), &inf, 2);
    im.write(bad);
    expect_rejected("infinite scale", head);
  }
  {  // codes one byte short
    Image im(q.file);
    auto& c = im.tensor(head);
    c.bytes.pop_back();
    c.shape[0] -= 1;
    im.write(bad);
    expect_rejected("short codes", head);
  }
  {  // a group size that does not divide as stated: the scales' count
    Image im(q.file);
    json j = im.hydraopt();
    std::string changed;
    for (auto& m : j["modules"]) {
      if (!m.contains("precision") || !changed.empty()) continue;
      for (auto& [kind, name] : m["precision"].items()) {
        QuantFormat f = parse_quant_format(name.get<std::string>(), "test"), g = f;
        g.group = f.group == 32 ? 128 : 32;
        const auto shape = m["shapes"][kind][0];
        if (quant_groups(shape[0], shape[1], f) != quant_groups(shape[0], shape[1], g)) {
          name = g.name();
          changed = m["name"].get<std::string>() + "." + kind + ".0";
          break;
        }
      }
    }
    ASSERT_FALSE(changed.empty());
    im.set_hydraopt(j);
    im.write(bad);
    expect_rejected("group size", changed);
  }
  {  // a format this does not know
    Image im(q.file);
    json j = im.hydraopt();
    for (auto& m : j["modules"]) {
      if (m["name"] == q.module) m["precision"]["head"] = "int5-g32-sym";
    }
    im.set_hydraopt(j);
    im.write(bad);
    expect_rejected("unknown format", "int5");
  }
  {  // a shape the codes cannot hold
    Image im(q.file);
    json j = im.hydraopt();
    for (auto& m : j["modules"]) {
      if (m["name"] == q.module) m["shapes"]["head"][0][0] = int64_t{1} << 39;
    }
    im.set_hydraopt(j);
    im.write(bad);
    expect_rejected("huge shape", head);
  }
  {  // integer storage in a version 1 bundle
    Image im(q.file);
    json j = im.hydraopt();
    j["version"] = 1;
    im.set_hydraopt(j);
    im.write(bad);
    expect_rejected("version", "version 2");
  }
  {  // scales missing, or a float tensor where codes belong
    Image im(q.file);
    std::erase_if(im.tensors, [&](const io::TensorData& t) { return t.name == head + ".scales"; });
    im.write(bad);
    expect_rejected("no scales", head + ".scales");
    Image im2(q.file);
    auto& c = im2.tensor(head);
    c.dtype = DType::F16;
    c.bytes.resize(c.bytes.size() * 2);
    im2.write(bad);
    expect_rejected("float codes", head);
  }
  // And the CLI says it in one line, exit 1, writing nothing.
  std::string out;
  EXPECT_EQ(test::run(test::cli() + " export " + bad.string() + " --all -o " + (d / "x").string(), &out), 1);
  EXPECT_NE(out.find("hydraopt: error: "), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(d / "x"));
}

TEST(IntegerBundle, AddAndRemoveRefuseItInOneLine) {
  Quantized q;
  test::TempDir d;
  std::string out;
  EXPECT_EQ(test::run(test::cli() + " add " + q.file.string() + " extra=" + specs()[0] + " -o " + (d / "a.safetensors").string(), &out), 1);
  EXPECT_NE(out.find("stores factors as integers"), std::string::npos) << out;
  EXPECT_EQ(test::run(test::cli() + " remove " + q.file.string() + " --task task00 -o " + (d / "r.safetensors").string(), &out), 1);
  EXPECT_NE(out.find("float factors only"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(d / "a.safetensors"));
  EXPECT_FALSE(fs::exists(d / "r.safetensors"));
}

TEST(IntegerBundle, PeftExportDequantizesToTheStoredValues) {
  Quantized q;
  const io::Bundle b = io::bundle_read(q.file);
  test::TempDir d;
  io::export_peft(b, 1, d / "t1", DType::F32);
  const Adapter a = Adapter::open((d / "t1").string());
  for (const auto& m : b.modules) {
    const ModuleLora l = a.load(m.name);
    const Eigen::MatrixXd want = m.fit.left(1) * m.fit.right(1);
    EXPECT_LE((l.scale * l.B * l.A - want).norm(), 1e-6 * want.norm()) << m.name;
  }
}

}  // namespace
}  // namespace hydraopt
