// Calibrated merges (merge --calibration, issue 19) against dense
// references on small sizes: the whitened closed form, the identity's
// equality with the data-free fit, and the statistics' rejection.
#include <gtest/gtest.h>

#include <Eigen/Eigenvalues>
#include <Eigen/SVD>
#include <cmath>
#include <map>

#include "core/quant.h"
#include "hydraopt/adapter.h"
#include "hydraopt/calibration.h"
#include "hydraopt/merge.h"
#include "io/bundle.h"
#include "io/calibration.h"
#include "util/sha256.h"
#include <nlohmann/json.hpp>
#include "methods/baselines.h"
#include "methods/precision.h"
#include "methods/structures.h"
#include "methods/whitening.h"
#include "test_util.h"

namespace hydraopt {
namespace {

using Eigen::MatrixXd;
namespace fs = std::filesystem;

const AdapterSet& tiny() {
  static const AdapterSet set = AdapterSet::open(test::synth_specs(4));
  return set;
}

// A random second moment of full rank with an uneven spectrum.
MatrixXd random_moment(Eigen::Index in, uint64_t seed) {
  const MatrixXd x = test::random_matrix(3 * in, in, seed);
  MatrixXd c = x.transpose() * x / static_cast<double>(3 * in);
  Eigen::VectorXd scale(in);
  for (Eigen::Index j = 0; j < in; ++j) scale[j] = std::exp(-3.0 * static_cast<double>(j) / static_cast<double>(in));
  return scale.asDiagonal() * c * scale.asDiagonal();
}

// Writes DIR/<task>.safetensors for every task, one site per module; the
// moments are moment(task, module) (given as X^T X over one row).
void write_stats(const fs::path& dir, const AdapterSet& set,
                 const std::function<MatrixXd(size_t, size_t)>& moment) {
  fs::create_directories(dir);
  for (size_t i = 0; i < set.size(); ++i) {
    CalibrationFile f{set.task(i).name(), set.task(i).base_model(), 8, {}};
    for (size_t m = 0; m < set.modules().size(); ++m) {
      const auto& mod = set.modules()[m];
      f.sites[mod.name] = {{mod.name}, moment(i, m), 1};
    }
    write_calibration(dir / (f.task + ".safetensors"), f, 1 << 20);
  }
}

MatrixXd sqrtm(const MatrixXd& c, double power) {
  Eigen::SelfAdjointEigenSolver<MatrixXd> eig(c);
  return eig.eigenvectors() * eig.eigenvalues().array().pow(power).matrix().asDiagonal() *
         eig.eigenvectors().transpose();
}

TEST(Whitening, RootsOfTheMoment) {
  const MatrixXd c = random_moment(12, 3) + 1e-3 * MatrixXd::Identity(12, 12);
  const Whitening w(c);
  const MatrixXd eye = MatrixXd::Identity(12, 12);
  const MatrixXd root = w.whiten(eye), inv = w.unwhiten(eye);
  EXPECT_LT((root * root - c).norm(), 1e-10 * c.norm());
  EXPECT_LT((root * inv - eye).norm(), 1e-9);
  EXPECT_LT((root - root.transpose()).norm(), 1e-12);
}

TEST(Whitening, ShrinkageKeepsTheTrace) {
  const MatrixXd c = random_moment(10, 4);
  const MatrixXd s = shrink(c, 0.3);
  EXPECT_NEAR(s.trace(), c.trace(), 1e-12 * c.trace());
  EXPECT_LT((shrink(c, 1.0) - c.trace() / 10 * MatrixXd::Identity(10, 10)).norm(), 1e-12);
  EXPECT_THROW(Whitening(MatrixXd::Zero(3, 3)), Error);
}

// A factored moment diag(d) + G G^T with an uneven diagonal.
Moment random_factored(Eigen::Index in, Eigen::Index k, uint64_t seed) {
  Moment c{(test::random_matrix(in, 1, seed).array().abs() + 0.05).matrix(), test::random_matrix(in, k, seed + 1)};
  for (Eigen::Index j = 0; j < k; ++j) c.g.col(j) *= std::exp(-0.3 * static_cast<double>(j));
  return c;
}

TEST(Whitening, FactoredMomentAlgebra) {
  const Moment c = random_factored(20, 6, 7);
  const MatrixXd dense = c.dense();
  const MatrixXd x = test::random_matrix(3, 20, 8), y = test::random_matrix(5, 20, 9);
  EXPECT_LT((c.between(x, y) - x * dense * y.transpose()).norm(), 1e-12 * (1 + dense.norm()));
  EXPECT_NEAR(c.trace(), dense.trace(), 1e-12 * dense.trace());
  EXPECT_LT((shrink(c, 0.3).dense() - shrink(dense, 0.3)).norm(), 1e-12 * dense.norm());
  // Cutting G G^T keeps the diagonal and the trace, is exact when nothing
  // is cut, and keeps the top eigenpairs of G G^T.
  EXPECT_EQ(compressed(c, 6).g, c.g);
  // Wider than kExactWidth, the top part is a randomized approximation.
  for (const Eigen::Index in : {Eigen::Index{20}, Eigen::Index{300}, kExactWidth + 100}) {
    const Moment wide = random_factored(in, 60, 10 + in);
    for (const Eigen::Index k : {Eigen::Index{4}, Eigen::Index{30}}) {
      const Moment cut = compressed(wide, k);
      ASSERT_EQ(cut.g.cols(), std::min(k, in));
      EXPECT_LT((cut.d + cut.g.rowwise().squaredNorm() - wide.d - wide.g.rowwise().squaredNorm()).norm(),
                1e-6 * wide.trace());
      Eigen::SelfAdjointEigenSolver<MatrixXd> eig(wide.g * wide.g.transpose());
      const double top = eig.eigenvalues().tail(cut.g.cols()).sum();
      EXPECT_LE(cut.g.squaredNorm(), top * (1 + 1e-6)) << in << " " << k;
      EXPECT_GE(cut.g.squaredNorm(), top * (in > kExactWidth ? 0.95 : 1 - 1e-6)) << in << " " << k;
    }
  }
}

// The factored whitening F^T (F^T F = C) against the dense C: the
// whitened error equals the calibrated one for every E, unwhitening
// inverts whitening, and with a near-zero diagonal the dense form is used.
TEST(Whitening, FactoredFormIsAWhitening) {
  for (const Eigen::Index k : {Eigen::Index{0}, Eigen::Index{5}, Eigen::Index{40}}) {
    const Moment c = random_factored(25, k, 20 + k);
    const Whitening w(c);
    const MatrixXd dense = c.dense();
    const MatrixXd e = test::random_matrix(4, 25, 21);
    EXPECT_NEAR(w.whiten(e).squaredNorm(), (e * dense * e.transpose()).trace(), 1e-10 * dense.norm() * e.squaredNorm());
    EXPECT_LT((w.unwhiten(w.whiten(e)) - e).norm(), 1e-10 * e.norm());
    const MatrixXd e2 = test::random_matrix(2, 25, 22);
    const std::vector<MatrixXd> g = w.grams({&e, &e2});
    EXPECT_LT((g[0] - e * dense * e.transpose()).norm(), 1e-10 * dense.norm() * e.squaredNorm());
    EXPECT_LT((g[1] - e2 * dense * e2.transpose()).norm(), 1e-10 * dense.norm() * e2.squaredNorm());
    const MatrixXd f = w.whiten(MatrixXd::Identity(25, 25));  // F^T
    EXPECT_LT((f * f.transpose() - dense).norm(), 1e-10 * dense.norm()) << k;
    if (k < 12) EXPECT_LT(w.size(), size_t{25 * 25}) << k;  // factored: no in x in matrix
  }
  {  // many rows: the low-rank products in single precision, to ~1e-7
    const Moment c = random_factored(300, 256, 50);
    const Whitening w(c);
    const MatrixXd e = test::random_matrix(80, 300, 51);
    ASSERT_GE(e.rows() * 256, Whitening::kSingleFrom);
    const MatrixXd dense = c.dense();
    const double exact = (e * dense * e.transpose()).trace();
    EXPECT_NEAR(w.whiten(e).squaredNorm(), exact, 1e-5 * exact);
    EXPECT_LT((w.unwhiten(w.whiten(e)) - e).norm(), 1e-5 * e.norm());
    const std::vector<MatrixXd> g = w.grams({&e});
    EXPECT_LT((g[0] - e * dense * e.transpose()).norm(), 1e-5 * (e * dense * e.transpose()).norm());
  }
  const Whitening eye(Moment{Eigen::VectorXd::Ones(9), MatrixXd(9, 0)});
  EXPECT_EQ(eye.whiten(MatrixXd::Identity(9, 9)), MatrixXd::Identity(9, 9));
  // A zero diagonal: C = G G^T of full rank, whitened densely.
  const Moment low{Eigen::VectorXd::Zero(6), test::random_matrix(6, 8, 30)};
  const Whitening dense_w(low);
  const MatrixXd root = dense_w.whiten(MatrixXd::Identity(6, 6));
  EXPECT_LT((root * root - low.dense()).norm(), 1e-10 * low.dense().norm());
  EXPECT_THROW(Whitening(Moment{Eigen::VectorXd::Zero(6), test::random_matrix(6, 2, 31)}), Error);
}

// The hydra point in the calibrated metric is the dense whitened SVD's:
// with C the tasks' mean normalised moment, shrunk, the shared body is
// the top-r right singular subspace of [sqrt(w_i) dW_i C^{1/2}], w_i in
// the calibrated metric; each task's head is then the least-squares head
// in that task's own metric. Errors are reported in the mean metric.
TEST(CalibratedMerge, HydraPointIsTheWhitenedSvd) {
  const AdapterSet& set = tiny();
  test::TempDir d;
  const size_t n = set.size(), nm = set.modules().size();
  std::vector<std::vector<MatrixXd>> moments(n);
  for (size_t i = 0; i < n; ++i) {
    for (size_t m = 0; m < nm; ++m) moments[i].push_back(random_moment(set.modules()[m].in, 100 * i + m + 1));
  }
  write_stats(d / "stats", set, [&](size_t i, size_t m) { return moments[i][m]; });
  // The reference takes the moments as stored (single precision).
  for (size_t i = 0; i < n; ++i) {
    const io::CalibrationStats st = io::read_calibration_stats(d / "stats" / (set.task(i).name() + ".safetensors"));
    for (size_t m = 0; m < nm; ++m) {
      const MatrixXd stored = st.for_module(set.modules()[m].name)->dense();
      EXPECT_LT((stored - moments[i][m]).norm(), 1e-2 * moments[i][m].norm());  // the sketch drops 1e-3 of the trace
      moments[i][m] = stored;
    }
  }
  const double alpha = 0.2;
  // Dense reference.
  std::vector<MatrixXd> c(nm);
  for (size_t m = 0; m < nm; ++m) {
    const auto in = set.modules()[m].in;
    MatrixXd mean = MatrixXd::Zero(in, in);
    for (size_t i = 0; i < n; ++i) mean += moments[i][m] * (static_cast<double>(in) / moments[i][m].trace());
    mean /= static_cast<double>(n);
    c[m] = (1 - alpha) * mean + alpha * (mean.trace() / static_cast<double>(in)) * MatrixXd::Identity(in, in);
  }
  std::vector<double> cal_norm(n, 0.0), frob_norm(n, 0.0), cal_err(n, 0.0), frob_err(n, 0.0);
  std::vector<std::vector<MatrixXd>> dw(nm);
  for (size_t m = 0; m < nm; ++m) {
    const auto loras = set.load(m);
    const MatrixXd root = sqrtm(c[m], 0.5);
    for (size_t i = 0; i < n; ++i) {
      dw[m].push_back(loras[i].scale * loras[i].B * loras[i].A);
      cal_norm[i] += (dw[m][i] * root).squaredNorm();
      frob_norm[i] += dw[m][i].squaredNorm();
    }
  }
  for (size_t m = 0; m < nm; ++m) {
    const auto& mod = set.modules()[m];
    const MatrixXd root = sqrtm(c[m], 0.5), inv = sqrtm(c[m], -0.5);
    MatrixXd stack(n * mod.out, mod.in);
    for (size_t i = 0; i < n; ++i) stack.middleRows(i * mod.out, mod.out) = dw[m][i] * root / std::sqrt(cal_norm[i]);
    Eigen::JacobiSVD<MatrixXd> svd(stack, Eigen::ComputeThinV);
    const int64_t r = set.load(m)[0].rank();
    const MatrixXd v = svd.matrixV().leftCols(r);
    const MatrixXd body = v.transpose() * inv;  // the stored body, R = V^T C^{-1/2}
    for (size_t i = 0; i < n; ++i) {
      // Each task's head then solved in its own (normalised, shrunk) metric.
      const auto in = mod.in;
      const MatrixXd own = (1 - alpha) * moments[i][m] * (static_cast<double>(in) / moments[i][m].trace()) +
                           alpha * MatrixXd::Identity(in, in);
      const MatrixXd head = dw[m][i] * own * body.transpose() * (body * own * body.transpose()).inverse();
      const MatrixXd hat = head * body;
      cal_err[i] += ((dw[m][i] - hat) * root).squaredNorm();
      frob_err[i] += (dw[m][i] - hat).squaredNorm();
    }
  }
  MergeOptions o;
  o.method = "hydra";
  o.calibration = (d / "stats").string();
  o.shrinkage = alpha;
  o.dtype = DType::F64;
  const MergeReport r = merge(set, o, "");
  ASSERT_TRUE(r.mean_frobenius_rel_error.has_value());
  for (size_t i = 0; i < n; ++i) {
    const double cal = std::sqrt(cal_err[i] / cal_norm[i]), frob = std::sqrt(frob_err[i] / frob_norm[i]);
    EXPECT_NEAR(r.tasks[i].rel_error, cal, 1e-6 * (1 + cal)) << i;
    ASSERT_TRUE(r.tasks[i].frobenius_rel_error.has_value());
    EXPECT_NEAR(*r.tasks[i].frobenius_rel_error, frob, 1e-6 * (1 + frob)) << i;
  }
  EXPECT_TRUE(r.warnings.empty());
}

// Identity statistics (C_i = I): every calibrated fit is the data-free one.
TEST(CalibratedMerge, IdentityStatisticsGiveTheDataFreeFit) {
  const AdapterSet& set = tiny();
  test::TempDir d;
  write_stats(d / "stats", set, [&](size_t, size_t m) {
    const auto in = set.modules()[m].in;
    return MatrixXd(2.5 * MatrixXd::Identity(in, in));
  });
  for (const char* method : {"hydra", "hydraopt", "jd-full", "ta"}) {
    for (double budget : {0.3, 0.6}) {
      MergeOptions o;
      o.method = method;
      o.budget = budget;
      o.dtype = DType::F64;
      const MergeReport free = merge(set, o, "");
      o.calibration = (d / "stats").string();
      o.shrinkage = 0.0;
      const MergeReport cal = merge(set, o, "");
      EXPECT_EQ(cal.params, free.params) << method << " " << budget;
      for (size_t i = 0; i < set.size(); ++i) {
        EXPECT_NEAR(cal.tasks[i].rel_error, free.tasks[i].rel_error, 1e-9) << method << " " << budget;
        EXPECT_NEAR(*cal.tasks[i].frobenius_rel_error, free.tasks[i].rel_error, 1e-9) << method << " " << budget;
      }
    }
  }
}

// Full shrinkage (C -> (tr C / in) I) is the data-free fit too.
TEST(CalibratedMerge, FullShrinkageIsDataFree) {
  const AdapterSet& set = tiny();
  test::TempDir d;
  write_stats(d / "stats", set, [&](size_t i, size_t m) { return random_moment(set.modules()[m].in, 7 * i + m); });
  MergeOptions o;
  o.budget = 0.4;
  o.dtype = DType::F64;
  const MergeReport free = merge(set, o, "");
  o.calibration = (d / "stats").string();
  o.shrinkage = 1.0;
  const MergeReport cal = merge(set, o, "");
  EXPECT_NEAR(cal.mean_rel_error, free.mean_rel_error, 1e-9);
  ASSERT_TRUE(cal.mean_frobenius_rel_error.has_value());
  EXPECT_NEAR(*cal.mean_frobenius_rel_error, free.mean_rel_error, 1e-9);
}

// --calibration-plan frobenius: the data-free plan, fitted calibrated.
TEST(CalibratedMerge, FrobeniusPlanIsTheDataFreePlan) {
  const AdapterSet& set = tiny();
  test::TempDir d;
  write_stats(d / "stats", set, [&](size_t i, size_t m) { return random_moment(set.modules()[m].in, 11 * i + m); });
  MergeOptions o;
  o.dtype = DType::F64;
  const std::vector<double> budgets{0.3, 0.6};
  const auto free = merge(set, o, budgets, {d / "f3.safetensors", d / "f6.safetensors"});
  o.calibration = (d / "stats").string();
  o.calibration_plan = "frobenius";
  const auto cal = merge(set, o, budgets, {d / "c3.safetensors", d / "c6.safetensors"});
  for (size_t b = 0; b < budgets.size(); ++b) {
    EXPECT_EQ(cal[b].plan_json, free[b].plan_json) << budgets[b];
    EXPECT_EQ(cal[b].params, free[b].params);
    ASSERT_TRUE(cal[b].mean_frobenius_rel_error.has_value());
    // The data-free fit minimises the balanced Frobenius objective, sum_i rel_i^2.
    double cal2 = 0, free2 = 0;
    for (size_t i = 0; i < set.size(); ++i) {
      cal2 += std::pow(*cal[b].tasks[i].frobenius_rel_error, 2);
      free2 += std::pow(free[b].tasks[i].rel_error, 2);
    }
    EXPECT_GE(cal2, free2 * (1 - 1e-6)) << budgets[b];
  }
  EXPECT_TRUE(io::bundle_read(d / "c6.safetensors").calibration.has_value());
  o.calibration_plan = "calibrated";
  EXPECT_NE(merge(set, o, budgets, {"", ""})[0].plan_json, "");
  o.calibration_plan = "frobenius";
  {  // byte budgets: the data-free plan's structures and integer formats
    MergeOptions bytes = o;
    bytes.unit = BudgetUnit::kBytes;
    bytes.calibration.clear();
    const std::vector<double> small{0.15, 0.3};
    const auto free_bytes = merge(set, bytes, small, {"", ""});
    bytes.calibration = o.calibration;
    const auto cal_bytes = merge(set, bytes, small, {d / "b15.safetensors", ""});
    for (size_t b = 0; b < small.size(); ++b) {
      EXPECT_EQ(cal_bytes[b].plan_json, free_bytes[b].plan_json) << small[b];
      EXPECT_EQ(cal_bytes[b].bytes, free_bytes[b].bytes) << small[b];
      ASSERT_TRUE(cal_bytes[b].mean_frobenius_rel_error.has_value());
    }
    EXPECT_NE(free_bytes[0].plan_json.find("precision"), std::string::npos);  // some role stored as integers
    EXPECT_TRUE(io::bundle_read(d / "b15.safetensors").calibration.has_value());
  }
  EXPECT_NE(test::error_of([&] { sweep(set, {"hydraopt"}, budgets, o); }).find("sweep plans in the calibrated metric"),
            std::string::npos);
  o.calibration_plan = "other";
  EXPECT_NE(test::error_of([&] { merge(set, o, budgets, {"", ""}); }).find("--calibration-plan"), std::string::npos);
}

TEST(CalibratedMerge, MissingTaskIsAWarning) {
  const AdapterSet& set = tiny();
  test::TempDir d;
  write_stats(d / "stats", set, [&](size_t i, size_t m) { return random_moment(set.modules()[m].in, 3 * i + m); });
  fs::remove(d / "stats" / (set.task(1).name() + ".safetensors"));
  MergeOptions o;
  o.method = "hydra";
  o.calibration = (d / "stats").string();
  const MergeReport r = merge(set, o, "");
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_NE(r.warnings[0].find(set.task(1).name()), std::string::npos);
}

// Bad statistics: one line naming the file (and the site), nothing written.
TEST(CalibratedMerge, BadStatisticsAreRejected) {
  const AdapterSet& set = tiny();
  test::TempDir d;
  const fs::path out = d / "out.safetensors";
  auto attempt = [&](const fs::path& stats, double shrinkage = 0.1) {
    MergeOptions o;
    o.method = "hydra";
    o.calibration = stats.string();
    o.shrinkage = shrinkage;
    return test::error_of([&] { merge(set, o, out.string()); });
  };
  const auto& mod = set.modules()[0];
  auto one = [&](const fs::path& dir, const std::string& task, const std::string& base, const std::string& module,
                 Eigen::Index in) {
    fs::create_directories(dir);
    CalibrationFile f{task, base, 8, {}};
    f.sites[module] = {{module}, MatrixXd::Identity(in, in), 1};
    write_calibration(dir / (set.task(0).name() + ".safetensors"), f, 1 << 20);
  };
  const std::string task = set.task(0).name(), base = set.task(0).base_model();
  one(d / "width", task, base, mod.name, mod.in + 1);
  std::string e = attempt(d / "width");
  EXPECT_NE(e.find("width/" + task + ".safetensors"), std::string::npos) << e;
  EXPECT_NE(e.find(mod.name), std::string::npos) << e;
  one(d / "module", task, base, "model.layers.99.nothing", mod.in);
  e = attempt(d / "module");
  EXPECT_NE(e.find("not in the adapters"), std::string::npos) << e;
  one(d / "task", "someone-else", base, mod.name, mod.in);
  e = attempt(d / "task");
  EXPECT_NE(e.find("someone-else"), std::string::npos) << e;
  one(d / "base", task, "another/model", mod.name, mod.in);
  e = attempt(d / "base");
  EXPECT_NE(e.find("another/model"), std::string::npos) << e;
  fs::create_directories(d / "empty");
  e = attempt(d / "empty");
  EXPECT_NE(e.find("no task has a statistics file"), std::string::npos) << e;
  e = attempt(d / "nowhere");
  EXPECT_NE(e.find("not a directory"), std::string::npos) << e;
  e = attempt(d / "width", 1.5);
  EXPECT_NE(e.find("--shrinkage"), std::string::npos) << e;
  EXPECT_FALSE(fs::exists(out));
}

// The bundle records the shrinkage and every task's statistics checksum;
// a damaged record is refused.
TEST(CalibratedMerge, BundleRecordsTheStatistics) {
  const AdapterSet& set = tiny();
  test::TempDir d;
  write_stats(d / "stats", set, [&](size_t i, size_t m) { return random_moment(set.modules()[m].in, 5 * i + m); });
  fs::remove(d / "stats" / (set.task(2).name() + ".safetensors"));
  MergeOptions o;
  o.budget = 0.5;
  o.calibration = (d / "stats").string();
  o.shrinkage = 0.25;
  o.calibration_plan = "frobenius";
  o.calibration_rounds = 2;
  const fs::path out = d / "b.safetensors";
  merge(set, o, out);
  const io::Bundle b = io::bundle_read(out);
  ASSERT_TRUE(b.calibration.has_value());
  EXPECT_EQ(b.calibration->shrinkage, 0.25);
  EXPECT_EQ(b.calibration->plan, "frobenius");
  EXPECT_EQ(b.calibration->rounds, 2);
  for (size_t i = 0; i < set.size(); ++i) {
    const fs::path f = d / "stats" / (set.task(i).name() + ".safetensors");
    EXPECT_EQ(b.calibration->statistics.at(set.task(i).name()), i == 2 ? "" : util::sha256_file(f));
  }
  EXPECT_FALSE(io::bundle_read([&] {
                 merge(set, [] { MergeOptions f; f.budget = 0.5; return f; }(), d / "free.safetensors");
                 return d / "free.safetensors";
               }())
                   .calibration.has_value());
  const std::vector<std::pair<std::string, std::function<void(nlohmann::ordered_json&)>>> bad = {
      {"not an object", [](auto& j) { j["calibration"] = 1; }},
      {"shrinkage", [](auto& j) { j["calibration"]["shrinkage"] = 2.0; }},
      {"shrinkage", [](auto& j) { j["calibration"].erase("shrinkage"); }},
      {"statistics is not an object", [](auto& j) { j["calibration"]["statistics"] = "x"; }},
      {"does not have", [](auto& j) { j["calibration"]["statistics"]["nobody"] = ""; }},
      {"not a SHA-256", [&](auto& j) { j["calibration"]["statistics"][set.task(0).name()] = "abc"; }},
      {"plan is not", [](auto& j) { j["calibration"]["plan"] = "mean"; }},
      {"rounds is not", [](auto& j) { j["calibration"]["rounds"] = -1; }},
      {"rounds is not", [](auto& j) { j["calibration"]["rounds"] = 1.5; }},
  };
  {  // a bundle written before "plan" and "rounds" were recorded
    const fs::path p = d / "older.safetensors";
    fs::copy(out, p, fs::copy_options::overwrite_existing);
    test::rewrite_metadata(p, [](auto& j) {
      j["calibration"].erase("plan");
      j["calibration"].erase("rounds");
    });
    const io::Bundle older = io::bundle_read(p);
    EXPECT_EQ(older.calibration->plan, "calibrated");
    EXPECT_EQ(older.calibration->rounds, 0);
  }
  for (const auto& [want, edit] : bad) {
    const fs::path p = d / "bad.safetensors";
    fs::copy(out, p, fs::copy_options::overwrite_existing);
    test::rewrite_metadata(p, edit);
    const std::string msg = test::error_of([&] { io::bundle_read(p); });
    EXPECT_NE(msg.find(want), std::string::npos) << want << ": " << msg;
    EXPECT_NE(msg.find("bad.safetensors"), std::string::npos) << msg;
  }
}

// With the identity as the metric, the calibrated quantization-aware store
// is today's.
TEST(CalibratedPrecision, IdentityWhiteningIsTodaysStore) {
  ModuleProblem p;
  const MatrixXd a0 = test::random_matrix(4, 64, 5);
  for (int i = 0; i < 5; ++i) {
    p.loras.push_back({a0 + 0.3 * test::random_matrix(4, 64, 10 + i), 0.1 * test::random_matrix(40, 4, 20 + i), 1.5});
    p.weights.push_back(1.0 + 0.1 * i);
  }
  const Whitening eye(MatrixXd::Identity(64, 64));
  const QuantFormat int4{4, 32, true};
  for (const StructureSpec s : {StructureSpec{Family::kSharedA, 4, 0}, StructureSpec{Family::kSharedB, 4, 0},
                                StructureSpec{Family::kSharedACore, 8, 0}}) {
    ModuleFitter fitter(p, {});
    const ModuleFit fit = fitter.fit(s);
    const Precision pr{int4, int4, int4};
    const ModuleFit a = store_in_precision(p, fit, pr, DType::F32);
    const ModuleFit b = stored_values(unwhitened(store_in_precision(p, fit, pr, DType::F32, &eye), eye), pr, DType::F32);
    ASSERT_EQ(a.heads.size(), b.heads.size());
    for (size_t j = 0; j < a.heads.size(); ++j) EXPECT_LT((a.heads[j] - b.heads[j]).norm(), 1e-6 * a.heads[j].norm());
    for (size_t j = 0; j < a.bodies.size(); ++j) EXPECT_LT((a.bodies[j] - b.bodies[j]).norm(), 1e-6 * a.bodies[j].norm());
  }
}

}  // namespace
}  // namespace hydraopt

namespace hydraopt {
namespace {

// The per-task step: each task's own head, re-solved in its own metric, is
// the dense optimum given the body (so it never raises that error), and
// an own core likewise; shared heads are left alone.
TEST(CalibratedPrecision, OwnMetricStepIsTheDenseOptimum) {
  ModuleProblem p;
  const MatrixXd a0 = test::random_matrix(4, 30, 5);
  std::vector<MatrixXd> c;
  std::vector<Moment> factored;
  for (int i = 0; i < 5; ++i) {
    p.loras.push_back({a0 + 0.5 * test::random_matrix(4, 30, 10 + i), 0.1 * test::random_matrix(20, 4, 20 + i), 1.5});
    p.weights.push_back(1.0);
    factored.push_back(random_factored(30, 3 + 2 * i, 40 + i));
    c.push_back(factored.back().dense());
  }
  c[3].resize(0, 0);  // a task without statistics keeps its head
  factored[3] = Moment();
  auto own_error = [&](const ModuleFit& f, size_t i, const MatrixXd& ci) {
    const MatrixXd dw = p.loras[i].scale * p.loras[i].B * p.loras[i].A;
    const MatrixXd hat = f.left(i) * f.right(i);
    return ((dw - hat) * sqrtm(ci, 0.5)).squaredNorm();
  };
  for (const StructureSpec s : {StructureSpec{Family::kSharedA, 3, 0}, StructureSpec{Family::kSharedACore, 6, 0}}) {
    ModuleFitter fitter(p, {});
    const ModuleFit before = fitter.fit(s);
    ModuleFit after = before;
    solve_own_metric(p, factored, DType::F64, &after);
    for (size_t i = 0; i < p.tasks(); ++i) {
      if (c[i].size() == 0) {
        EXPECT_EQ(after.left(i), before.left(i));
        continue;
      }
      const MatrixXd root = sqrtm(c[i], 0.5);
      const MatrixXd dw = p.loras[i].scale * p.loras[i].B * p.loras[i].A;
      const MatrixXd rw = before.right(i) * root;  // the body in the task's metric
      const MatrixXd proj = rw.transpose() * (rw * rw.transpose()).inverse() * rw;
      double best = (dw * root * (MatrixXd::Identity(30, 30) - proj)).squaredNorm();
      if (s.family == Family::kSharedACore) {
        // The core's optimum keeps the own head's column space as well.
        const MatrixXd h = before.scale[i] * before.heads[before.head_of[i]];
        const MatrixXd ph = h * (h.transpose() * h).completeOrthogonalDecomposition().pseudoInverse() * h.transpose();
        best = (dw * root - ph * dw * root * proj).squaredNorm();
      }
      EXPECT_NEAR(own_error(after, i, c[i]), best, 1e-9 * (1 + best)) << s.label() << " " << i;
      EXPECT_LE(own_error(after, i, c[i]), own_error(before, i, c[i]) * (1 + 1e-12)) << s.label() << " " << i;
    }
  }
}

}  // namespace
}  // namespace hydraopt

namespace hydraopt {
namespace {

// r F^{-1} = r C^{-1} F^T, in the factored and the dense form.
TEST(Whitening, SolveWhitenedIsTheInverseThenTheWhitening) {
  for (const Moment& c : {random_factored(25, 6, 60), Moment{Eigen::VectorXd::Zero(6), test::random_matrix(6, 8, 61)}}) {
    const Whitening w(c);
    const MatrixXd r = test::random_matrix(3, c.in(), 62);
    const MatrixXd expect = w.whiten(MatrixXd(r * c.dense().inverse()));
    EXPECT_LT((w.solve_whitened(r) - expect).norm(), 1e-9 * expect.norm()) << c.in();
  }
  const Moment c = random_factored(25, 6, 63);
  const MatrixXd x = test::random_matrix(4, 25, 64);
  EXPECT_LT((c.times(x) - x * c.dense()).norm(), 1e-12 * x.norm() * c.dense().norm());
}

// RegMean (merge_single "regmean"): with each task's moment C_i the merge
// is the regression optimum M* = (sum_i dW_i C_i)(sum_i C_i)^{-1} (full
// rank) and its best rank-k truncation in the metric of sum_i C_i (dense
// reference); with no metric it is ta.
TEST(RegMean, IsTheRegressionMergeInTheTasksMetrics) {
  ModuleProblem p;
  const Eigen::Index in = 18, out = 12;
  std::vector<Moment> own;
  for (int i = 0; i < 4; ++i) {
    p.loras.push_back({test::random_matrix(3, in, 70 + i), test::random_matrix(out, 3, 80 + i), 0.5 + i});
    p.weights.push_back(1.0);
    own.push_back(random_factored(in, 4 + i, 90 + i));
  }
  own[2] = Moment();  // no statistics: the identity
  const size_t n = p.tasks();
  MatrixXd sum = MatrixXd::Zero(in, in), num = MatrixXd::Zero(out, in);
  Moment mean{Eigen::VectorXd::Zero(in), MatrixXd(in, 0)};
  for (size_t i = 0; i < n; ++i) {
    const MatrixXd ci = own[i].empty() ? MatrixXd::Identity(in, in) : own[i].dense();
    sum += ci;
    num += p.loras[i].scale * p.loras[i].B * p.loras[i].A * ci;
    const Moment mi = own[i].empty() ? Moment{Eigen::VectorXd::Ones(in), MatrixXd(in, 0)} : own[i];
    mean.d += mi.d / static_cast<double>(n);
    mean.g.conservativeResize(in, mean.g.cols() + mi.g.cols());
    mean.g.rightCols(mi.g.cols()) = mi.g / std::sqrt(static_cast<double>(n));
  }
  const MatrixXd best = num * sum.inverse();
  const ModuleMetric metric{std::make_shared<const Whitening>(mean), std::make_shared<const std::vector<Moment>>(own)};
  auto objective = [&](const MatrixXd& m) {
    double e = 0;
    for (size_t i = 0; i < n; ++i) {
      const MatrixXd ci = own[i].empty() ? MatrixXd::Identity(in, in) : own[i].dense();
      const MatrixXd d = p.loras[i].scale * p.loras[i].B * p.loras[i].A - m;
      e += (d * ci * d.transpose()).trace();
    }
    return e;
  };
  // Full rank (12 = sum of ranks): the optimum itself.
  MergeParams full;
  full.rank = 12;
  const ModuleFit f = merge_single("regmean", p, full, 0, &metric);
  const MatrixXd got = f.left(0) * f.right(0);
  EXPECT_LT((got - best).norm(), 1e-9 * best.norm());
  // Rank 2: the truncated SVD of M* S^{1/2}, mapped back by S^{-1/2}.
  MergeParams two;
  two.rank = 2;
  const ModuleFit f2 = merge_single("regmean", p, two, 0, &metric);
  Eigen::JacobiSVD<MatrixXd> svd(best * sqrtm(sum, 0.5), Eigen::ComputeThinU | Eigen::ComputeThinV);
  const MatrixXd ref = svd.matrixU().leftCols(2) * svd.singularValues().head(2).asDiagonal() *
                       svd.matrixV().leftCols(2).transpose() * sqrtm(sum, -0.5);
  EXPECT_LT((f2.left(0) * f2.right(0) - ref).norm(), 1e-9 * ref.norm());
  EXPECT_LE(objective(ref), objective(MatrixXd::Zero(out, in)));
  EXPECT_LT(objective(best), objective(f2.left(0) * f2.right(0)));
  // Every task with the mean's moment: ta on the whitened adapters; no metric: ta.
  const ModuleMetric same{metric.mean, std::make_shared<const std::vector<Moment>>()};
  const ModuleFit f3 = merge_single("regmean", p, full, 0, &same);
  MatrixXd mean_dw = MatrixXd::Zero(out, in);
  for (size_t i = 0; i < n; ++i) mean_dw += p.loras[i].scale * p.loras[i].B * p.loras[i].A / static_cast<double>(n);
  EXPECT_LT((f3.left(0) * f3.right(0) - mean_dw).norm(), 1e-9 * mean_dw.norm());
  const ModuleFit plain = merge_single("regmean", p, two, 0), ta = merge_single("ta", p, two, 0);
  EXPECT_EQ(plain.left(0) * plain.right(0), ta.left(0) * ta.right(0));
}

// merge --method regmean: without statistics it is ta; with them each
// module's merge is the dense RegMean of the tasks' normalised, shrunk
// moments, measured in their mean's metric as every calibrated merge.
TEST(RegMean, MergeUsesTheTasksStatistics) {
  const AdapterSet& set = tiny();
  test::TempDir d;
  const size_t n = set.size(), nm = set.modules().size();
  write_stats(d / "stats", set, [&](size_t i, size_t m) { return random_moment(set.modules()[m].in, 500 + 10 * i + m); });
  MergeOptions o;
  o.method = "regmean";
  o.dtype = DType::F64;
  const MergeReport plain = merge(set, o, "");
  o.method = "ta";
  const MergeReport ta = merge(set, o, "");
  for (size_t i = 0; i < n; ++i) EXPECT_EQ(plain.tasks[i].rel_error, ta.tasks[i].rel_error) << i;

  const double alpha = 0.3;
  std::vector<double> norm(n, 0.0), err(n, 0.0);
  for (size_t m = 0; m < nm; ++m) {
    const auto& mod = set.modules()[m];
    const auto in = static_cast<Eigen::Index>(mod.in);
    const auto loras = set.load(m);
    std::vector<MatrixXd> c(n), dw(n);
    MatrixXd sum = MatrixXd::Zero(in, in), num = MatrixXd::Zero(mod.out, in);
    for (size_t i = 0; i < n; ++i) {
      const io::CalibrationStats st = io::read_calibration_stats(d / "stats" / (set.task(i).name() + ".safetensors"));
      const MatrixXd raw = st.for_module(mod.name)->dense();
      c[i] = (1 - alpha) * raw * (static_cast<double>(in) / raw.trace()) + alpha * MatrixXd::Identity(in, in);
      dw[i] = loras[i].scale * loras[i].B * loras[i].A;
      sum += c[i];
      num += dw[i] * c[i];
    }
    const MatrixXd best = num * sum.inverse(), root = sqrtm(sum, 0.5);
    const int64_t r = loras[0].rank();
    Eigen::JacobiSVD<MatrixXd> svd(best * root, Eigen::ComputeThinU | Eigen::ComputeThinV);
    const MatrixXd merged = svd.matrixU().leftCols(r) * svd.singularValues().head(r).asDiagonal() *
                            svd.matrixV().leftCols(r).transpose() * sqrtm(sum, -0.5);
    const MatrixXd mean_root = sqrtm(sum / static_cast<double>(n), 0.5);
    for (size_t i = 0; i < n; ++i) {
      norm[i] += (dw[i] * mean_root).squaredNorm();
      err[i] += ((dw[i] - merged) * mean_root).squaredNorm();
    }
  }
  o.method = "regmean";
  o.calibration = (d / "stats").string();
  o.shrinkage = alpha;
  const MergeReport cal = merge(set, o, (d / "cal.safetensors").string());
  ASSERT_TRUE(cal.mean_frobenius_rel_error.has_value());
  EXPECT_TRUE(cal.warnings.empty());
  for (size_t i = 0; i < n; ++i) {
    const double expect = std::sqrt(err[i] / norm[i]);
    EXPECT_NEAR(cal.tasks[i].rel_error, expect, 1e-6 * (1 + expect)) << i;
  }
  EXPECT_EQ(io::bundle_read(d / "cal.safetensors").method, "regmean");
}

// Rounds without statistics do nothing, and say so.
TEST(CalibratedMerge, RoundsWithoutStatisticsAreAWarning) {
  MergeOptions o;
  o.method = "hydra";
  const MergeReport plain = merge(tiny(), o, "");
  o.calibration_rounds = 2;
  const MergeReport r = merge(tiny(), o, "");
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_NE(r.warnings[0].find("--calibration-rounds 2 has no effect without --calibration"), std::string::npos);
  EXPECT_EQ(r.mean_rel_error, plain.mean_rel_error);
}

}  // namespace
}  // namespace hydraopt

namespace hydraopt {
namespace {

// The alternating steps (solve_own_metrics): the per-task objective
// sum_i w_i ||(dW_i - L_i R) C_i^{1/2}||^2, computed densely here, never
// rises from round to round, and after many rounds the body is
// stationary (its dense gradient vanishes, to the steps' tolerance) for
// the final heads.
TEST(CalibratedPrecision, AlternatingStepsLowerThePerTaskObjective) {
  ModuleProblem p;
  const Eigen::Index in = 16, out = 10;
  const MatrixXd a0 = test::random_matrix(3, in, 200);
  std::vector<Moment> own;
  Moment mean{Eigen::VectorXd::Zero(in), MatrixXd(in, 0)};
  for (int i = 0; i < 5; ++i) {
    p.loras.push_back({a0 + 0.6 * test::random_matrix(3, in, 210 + i), test::random_matrix(out, 3, 220 + i), 1.0});
    p.weights.push_back(0.5 + 0.25 * i);
    own.push_back(random_factored(in, 2 + i, 230 + i));
  }
  own[1] = Moment();  // no statistics: the identity
  for (size_t i = 0; i < own.size(); ++i) {
    const Moment mi = own[i].empty() ? Moment{Eigen::VectorXd::Ones(in), MatrixXd(in, 0)} : own[i];
    mean.d += mi.d / 5.0;
    mean.g.conservativeResize(in, mean.g.cols() + mi.g.cols());
    mean.g.rightCols(mi.g.cols()) = mi.g / std::sqrt(5.0);
  }
  const ModuleMetric metric{std::make_shared<const Whitening>(mean), std::make_shared<const std::vector<Moment>>(own)};
  auto dense_objective = [&](const ModuleFit& f) {
    double e = 0;
    for (size_t i = 0; i < p.tasks(); ++i) {
      const MatrixXd ci = own[i].empty() ? MatrixXd::Identity(in, in) : own[i].dense();
      const MatrixXd d = p.loras[i].scale * p.loras[i].B * p.loras[i].A - f.left(i) * f.right(i);
      e += p.weights[i] * (d * ci * d.transpose()).trace();
    }
    return e;
  };
  for (const StructureSpec s : {StructureSpec{Family::kSharedA, 3, 0}, StructureSpec{Family::kSharedACore, 4, 0}}) {
    ModuleFitter fitter(p, {});
    const ModuleFit start = fitter.fit(s);
    double last = dense_objective(start);
    ModuleFit f = start;
    solve_own_metrics(p, metric, 0, DType::F64, &f);
    EXPECT_NEAR(own_metric_objective(p, own, f), dense_objective(f), 1e-9 * dense_objective(f));
    EXPECT_LE(dense_objective(f), last * (1 + 1e-12));
    last = dense_objective(f);
    const double heads_only = last;
    for (int round = 0; round < 3; ++round) {
      solve_own_metrics(p, metric, 1, DType::F64, &f);
      EXPECT_LE(dense_objective(f), last * (1 + 1e-12)) << s.label() << " " << round;
      last = dense_objective(f);
    }
    // The body steps themselves lower it (not only the heads' steps).
    EXPECT_LT(last, (1 - 1e-3) * heads_only) << s.label();
    if (s.family != Family::kSharedA) continue;  // the cores' rounds converge more slowly
    solve_own_metrics(p, metric, 200, DType::F64, &f);
    // The body's gradient sum_i w_i L_i^T (L_i R - dW_i) C_i, against its scale.
    MatrixXd grad = MatrixXd::Zero(f.bodies[0].rows(), in), scale = grad;
    for (size_t i = 0; i < p.tasks(); ++i) {
      const MatrixXd ci = own[i].empty() ? MatrixXd::Identity(in, in) : own[i].dense();
      const MatrixXd li = f.left(i);
      grad += p.weights[i] * li.transpose() * (li * f.right(i) - p.loras[i].scale * p.loras[i].B * p.loras[i].A) * ci;
      scale += p.weights[i] * li.transpose() * p.loras[i].B * p.loras[i].A * ci;
    }
    // (the body step stops at a residual of 1e-4 of the right-hand side, E = scale)
    EXPECT_LT(grad.norm(), 2e-4 * scale.norm()) << s.label();
  }
  // Every task in the mean metric: nothing to do.
  ModuleFitter fitter(p, {});
  const ModuleFit start = fitter.fit(StructureSpec{Family::kSharedA, 3, 0});
  ModuleFit same = start;
  solve_own_metrics(p, ModuleMetric{metric.mean, std::make_shared<const std::vector<Moment>>()}, 3, DType::F64, &same);
  EXPECT_EQ(same.bodies[0], start.bodies[0]);
  EXPECT_EQ(same.heads[0], start.heads[0]);
}

}  // namespace
}  // namespace hydraopt
