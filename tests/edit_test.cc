// Bundles that grow and shrink (issue 20): a new task's factors against the
// stored shared ones equal the closed-form optimum computed densely;
// add-then-remove gives the bundle back byte for byte; bad input is one
// line and nothing written; the history metadata is checked like the rest.
#include <gtest/gtest.h>

#include <Eigen/Dense>
#include <nlohmann/json.hpp>

#include "core/rounding.h"
#include "hydraopt/adapter.h"
#include "hydraopt/bundle.h"
#include "hydraopt/edit.h"
#include "hydraopt/merge.h"
#include "hydraopt/synth.h"
#include "io/bundle.h"
#include "io/safetensors.h"
#include "methods/edit.h"
#include "methods/fit_error.h"
#include "methods/structures.h"
#include "test_util.h"

namespace hydraopt {
namespace {

namespace fs = std::filesystem;
using Eigen::MatrixXd;

ModuleLora random_lora(int64_t r, int64_t in, int64_t out, uint64_t seed, double scale = 1.5) {
  return {test::random_matrix(r, in, seed), test::random_matrix(out, r, seed + 1), scale};
}

// Tasks whose A's share most of their row space, so shared bodies mean something.
ModuleProblem related_problem(size_t n, int64_t r, int64_t in, int64_t out, uint64_t seed) {
  ModuleProblem p;
  const MatrixXd base = test::random_matrix(r, in, seed);
  for (size_t i = 0; i < n; ++i) {
    ModuleLora l = random_lora(r, in, out, seed + 10 * (i + 1), 0.5 + 0.25 * static_cast<double>(i));
    l.A = base + 0.3 * l.A;
    p.loras.push_back(l);
    p.weights.push_back(1.0);
  }
  return p;
}

MatrixXd dense(const ModuleLora& l) { return l.scale * l.B * l.A; }

MatrixXd reconstruction(const ModuleFit& f, size_t i) { return f.left(i) * f.right(i); }

// argmin_X ||D - U X V||_F over all X (U, V of full column / row rank).
MatrixXd least_squares_middle(const MatrixXd& d, const MatrixXd& u, const MatrixXd& v) {
  return (u.transpose() * u).ldlt().solve(u.transpose() * d * v.transpose()) *
         (v * v.transpose()).inverse();
}

struct Case {
  StructureSpec spec;
  const char* what;
};

std::vector<Case> cases() {
  return {{{Family::kExact, 0, 0}, "exact"},
          {{Family::kMerged, 3, 0}, "merged"},
          {{Family::kSharedA, 4, 0}, "shared-A"},
          {{Family::kSharedA, 4, 2}, "shared-A heads=2"},
          {{Family::kSharedACore, 5, 0}, "shared-A+core"},
          {{Family::kSharedACore, 5, 2}, "shared-A+core heads=2"},
          {{Family::kMultiA, 3, 2}, "multi-A bodies=2"},
          {{Family::kSharedB, 4, 0}, "shared-B"},
          {{Family::kSharedBCore, 5, 0}, "shared-B+core"},
          {{Family::kMultiB, 3, 2}, "multi-B bodies=2"},
          {{Family::kJdFull, 4, 0}, "jd-full"},
          {{Family::kJdDiag, 4, 0}, "jd-diag"},
          {{Family::kAvgA, 0, 0}, "avg-A"}};
}

// The best reconstruction of dW that the stored factors of `f` (the first
// n tasks') allow the new task, by the dense formulas of each structure.
MatrixXd dense_optimum(const ModuleFit& f, size_t n, const StructureSpec& s, const MatrixXd& d) {
  const Family fam = shares_b(s.family) ? mirror(s.family) : s.family;
  const bool t = shares_b(s.family);
  const MatrixXd dd = t ? MatrixXd(d.transpose()) : d;
  auto head = [&](int g) { return t ? MatrixXd(f.bodies[g].transpose()) : f.heads[g]; };
  auto body = [&](int b) { return t ? MatrixXd(f.heads[b].transpose()) : f.bodies[b]; };
  std::vector<std::pair<int, int>> pairs;
  for (size_t i = 0; i < n; ++i) {
    pairs.push_back({t ? f.body_of[i] : f.head_of[i], t ? f.head_of[i] : f.body_of[i]});
  }
  MatrixXd best;
  double best_err = INFINITY;
  auto keep = [&](const MatrixXd& x) {
    const double e = (dd - x).squaredNorm();
    if (e < best_err) best_err = e, best = x;
  };
  for (auto [g, b] : pairs) {
    const MatrixXd h = head(g), r = body(b);
    const MatrixXd proj = dd * r.transpose() * (r * r.transpose()).inverse() * r;  // onto r's rows
    switch (fam) {
      case Family::kSharedA:
        if (s.groups == 0) {
          keep(proj);  // free head
        } else {
          const MatrixXd hr = h * r;
          keep(hr * ((dd.cwiseProduct(hr)).sum() / hr.squaredNorm()));  // only a scale
        }
        break;
      case Family::kMultiA:
      case Family::kAvgA:
      case Family::kSharedACore:
        if (fam == Family::kSharedACore && s.groups != 0) {
          keep(h * least_squares_middle(dd, h, r) * r);
        } else {
          keep(proj);  // head (times core) free of rank >= the task's
        }
        break;
      case Family::kJdFull: keep(h * least_squares_middle(dd, h, r) * r); break;
      case Family::kJdDiag: {
        // min over c of ||D - sum_j c_j h_j r_j^T||: least squares in vec form.
        MatrixXd m(dd.size(), h.cols());
        for (Eigen::Index j = 0; j < h.cols(); ++j) {
          const MatrixXd outer = h.col(j) * r.row(j);
          m.col(j) = Eigen::Map<const Eigen::VectorXd>(outer.data(), outer.size());
        }
        const Eigen::VectorXd c = m.colPivHouseholderQr().solve(Eigen::Map<const Eigen::VectorXd>(dd.data(), dd.size()));
        keep(h * c.asDiagonal() * r);
        break;
      }
      case Family::kMerged: {
        const MatrixXd hr = h * r;
        keep(hr * ((dd.cwiseProduct(hr)).sum() / hr.squaredNorm()));
        break;
      }
      default: ADD_FAILURE() << "no dense reference for " << s.label();
    }
  }
  return t ? MatrixXd(best.transpose()) : best;
}

TEST(EditAdd, NewTaskGetsTheClosedFormOptimumGivenTheStoredFactors) {
  const int64_t r = 3, in = 14, out = 11;
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.what);
    const ModuleProblem p = related_problem(4, r, in, out, 7);
    FitOptions fo;
    ModuleFitter fitter(p, fo);
    const ModuleFit stored = fitter.fit(c.spec).rounded(DType::F64);
    ModuleFit f = stored;
    StructureSpec spec = c.spec;
    ModuleLora l = random_lora(r, in, out, 99, 0.7);
    l.A = p.loras[0].A + 0.5 * l.A;  // related, not in the span of the stored tasks
    const AddedTask a = add_task(&f, &spec, l, DType::F64);

    // Nothing stored changes; the new task is the last.
    ASSERT_EQ(f.tasks(), 5u);
    for (size_t j = 0; j < stored.heads.size(); ++j) EXPECT_EQ(f.heads[j], stored.heads[j]);
    for (size_t j = 0; j < stored.bodies.size(); ++j) EXPECT_EQ(f.bodies[j], stored.bodies[j]);
    for (size_t j = 0; j < stored.cores.size(); ++j) EXPECT_EQ(f.cores[j], stored.cores[j]);
    for (size_t i = 0; i < 4; ++i) EXPECT_EQ(reconstruction(f, i), reconstruction(stored, i));

    const MatrixXd d = dense(l);
    const MatrixXd got = reconstruction(f, 4);
    const MatrixXd want = c.spec.family == Family::kExact ? d : dense_optimum(stored, 4, c.spec, d);
    EXPECT_LT((got - want).norm(), 1e-8 * d.norm()) << "error " << (got - d).norm() / d.norm() << " vs optimum "
                                                    << (want - d).norm() / d.norm();
    EXPECT_NEAR(a.norm2, d.squaredNorm(), 1e-9 * d.squaredNorm());
    EXPECT_NEAR(a.err2, (d - got).squaredNorm(), 1e-8 * d.squaredNorm());
    if (c.spec.family != Family::kExact) EXPECT_GT(a.err2, 1e-6 * a.norm2);  // a lossy fit: not vacuous
  }
}

TEST(EditAdd, ReadsOnlyTheMatricesItSaysItReads) {
  // What add_task_reads leaves out may be empty (a bundle read without its
  // values): the result is the same.
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.what);
    const ModuleProblem p = related_problem(4, 3, 14, 11, 5);
    ModuleFitter fitter(p, {});
    const ModuleFit stored = fitter.fit(c.spec).rounded(DType::F32);
    ModuleFit full = stored, sparse = stored;
    const StoredReads reads = add_task_reads(stored, c.spec);
    size_t read = 0;
    for (size_t j = 0; j < reads.heads.size(); ++j) reads.heads[j] ? ++read : (sparse.heads[j] = MatrixXd(), 0);
    for (size_t j = 0; j < reads.bodies.size(); ++j) reads.bodies[j] ? ++read : (sparse.bodies[j] = MatrixXd(), 0);
    for (auto& core : sparse.cores) core = MatrixXd();
    if (c.spec.family == Family::kSharedA && c.spec.groups == 0) EXPECT_EQ(read, 1u);  // the body alone
    StructureSpec s1 = c.spec, s2 = c.spec;
    const ModuleLora l = random_lora(3, 14, 11, 8);
    const AddedTask a = add_task(&full, &s1, l, DType::F32), b = add_task(&sparse, &s2, l, DType::F32);
    EXPECT_EQ(a.err2, b.err2);
    EXPECT_EQ(full.head_of, sparse.head_of);
    EXPECT_EQ(full.body_of, sparse.body_of);
    EXPECT_EQ(full.core_of, sparse.core_of);
    EXPECT_EQ(full.scale, sparse.scale);
    EXPECT_EQ(full.heads.back(), sparse.heads.back());
    EXPECT_EQ(full.bodies.back(), sparse.bodies.back());
    if (!full.cores.empty()) EXPECT_EQ(full.cores.back(), sparse.cores.back());
    EXPECT_EQ(s1, s2);
  }
}

TEST(EditAdd, RoundsNewFactorsAfterSolvingAgainstTheStoredOnes) {
  // In bf16: the head is the optimum given the stored body, then rounded.
  const ModuleProblem p = related_problem(3, 4, 16, 12, 3);
  ModuleFitter fitter(p, {});
  ModuleFit f = fitter.fit({Family::kSharedA, 4, 0}).rounded(DType::BF16);
  StructureSpec spec{Family::kSharedA, 4, 0};
  const ModuleLora l = random_lora(4, 16, 12, 5);
  add_task(&f, &spec, l, DType::BF16);
  const MatrixXd& body = f.bodies[0];
  const MatrixXd h = dense(l) * body.transpose() * (body * body.transpose()).inverse();
  EXPECT_EQ(f.heads.back(), round_to_dtype(h, DType::BF16));
}

TEST(EditRemove, RemovingTheAddedTaskGivesTheStoredFitBack) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.what);
    const ModuleProblem p = related_problem(4, 3, 14, 11, 21);
    ModuleFitter fitter(p, {});
    const ModuleFit stored = fitter.fit(c.spec).rounded(DType::F32);
    ModuleFit f = stored;
    StructureSpec spec = c.spec;
    add_task(&f, &spec, random_lora(3, 14, 11, 42), DType::F32);
    remove_tasks(&f, {false, false, false, false, true});
    test::expect_same_fit(f, stored);
  }
}

TEST(EditRemove, DropsWhatOnlyTheRemovedTasksUsedAndKeepsSpareSlots) {
  ModuleFit f;
  for (int j = 0; j < 4; ++j) f.heads.push_back(MatrixXd::Constant(2, 1, j));
  f.bodies = {MatrixXd::Constant(1, 3, 10.0), MatrixXd::Constant(1, 3, 11.0)};
  f.head_of = {0, 1, 2};  // head 3: a spare slot no task uses
  f.body_of = {0, 1, 1};
  f.core_of = {-1, -1, -1};
  f.scale = {1, 2, 3};
  remove_tasks(&f, {false, true, false});
  ASSERT_EQ(f.heads.size(), 3u);
  EXPECT_EQ(f.heads[0](0, 0), 0);
  EXPECT_EQ(f.heads[1](0, 0), 2);
  EXPECT_EQ(f.heads[2](0, 0), 3);  // the spare slot stays
  EXPECT_EQ(f.bodies.size(), 2u);  // body 1 is still task 2's
  EXPECT_EQ(f.head_of, (std::vector<int>{0, 1}));
  EXPECT_EQ(f.body_of, (std::vector<int>{0, 1}));
  EXPECT_EQ(f.scale, (std::vector<double>{1, 3}));
  remove_tasks(&f, {false, true});
  EXPECT_EQ(f.bodies.size(), 1u);
}

// Every tensor of `a`, name and bytes, is in `b` (and, with `same`, nothing else).
void expect_tensors_in(const fs::path& a, const fs::path& b, bool same) {
  auto sa = io::SafetensorsFile::open(a), sb = io::SafetensorsFile::open(b);
  for (const auto& t : sa.tensors()) {
    const io::TensorInfo* u = sb.find(t.name);
    ASSERT_TRUE(u) << t.name;
    EXPECT_EQ(u->shape, t.shape) << t.name;
    auto x = sa.bytes(t), y = sb.bytes(*u);
    EXPECT_TRUE(x.size() == y.size() && std::equal(x.begin(), x.end(), y.begin())) << t.name;
  }
  if (same) EXPECT_EQ(sa.tensors().size(), sb.tensors().size());
}

struct Grown {
  test::TempDir d;
  std::vector<std::string> specs;
  fs::path before, after;
  explicit Grown(const std::string& method = "hydraopt", int tasks = 5) {
    SynthOptions o;
    o.tasks = tasks;
    o.seed = 11;
    for (auto& p : synth_write(d / "s", o)) specs.push_back(p.string());
    MergeOptions mo;
    mo.method = method;
    mo.budget = 0.5;
    mo.dtype = DType::BF16;
    before = d / "before.safetensors";
    after = d / "after.safetensors";
    merge(AdapterSet::open({specs.begin(), specs.end() - 1}), mo, before);
  }
};

TEST(EditBundle, AddThenRemoveGivesTheSameTensorsAndTasksBack) {
  for (const char* method : {"hydraopt", "hydra", "hydra-avg", "jd-full", "jd-diag", "ta"}) {
    SCOPED_TRACE(method);
    Grown g(method);
    const EditReport added = add_adapters(g.before, AdapterSet::open({g.specs.back()}), {}, g.after);
    ASSERT_EQ(added.tasks.size(), 5u);
    EXPECT_EQ(added.tasks.back().status, "added");
    ASSERT_TRUE(added.tasks.back().rel_error);
    EXPECT_FALSE(added.tasks.front().rel_error);  // a merge's errors are not recorded in its bundle
    expect_tensors_in(g.before, g.after, false);  // the stored bytes, untouched

    // verify checks every tensor, and recomputes the new task's error.
    VerifyReport v = verify_bundle(g.after, g.specs);
    EXPECT_TRUE(v.problems.empty()) << v.problems[0];
    EXPECT_EQ(v.modules_checksummed, v.modules);
    EXPECT_NEAR(v.tasks.back().rel_error, *added.tasks.back().rel_error, 1e-9);

    const fs::path back = g.d / "back.safetensors";
    const EditReport removed = remove_tasks(g.after, {"task04"}, {}, back);
    EXPECT_EQ(removed.tasks.size(), 4u);
    expect_tensors_in(g.before, back, true);
    const io::Bundle b0 = io::bundle_read(g.before), b2 = io::bundle_read(back);
    EXPECT_EQ(b2.params_stored, b0.params_stored);
    EXPECT_EQ(b2.original_params, b0.original_params);
    ASSERT_EQ(b2.tasks.size(), b0.tasks.size());
    for (size_t i = 0; i < b0.tasks.size(); ++i) {
      EXPECT_EQ(b2.tasks[i].name, b0.tasks[i].name);
      EXPECT_EQ(b2.tasks[i].sha256, b0.tasks[i].sha256);
    }
    for (size_t m = 0; m < b0.modules.size(); ++m) {
      EXPECT_EQ(b2.modules[m].sha256, b0.modules[m].sha256);
      EXPECT_EQ(b2.modules[m].fit.scale, b0.modules[m].fit.scale);
      EXPECT_EQ(b2.modules[m].spec.label(), b0.modules[m].spec.label());
    }
    ASSERT_EQ(b2.history.size(), 2u);
    EXPECT_EQ(b2.history[0].op, "add");
    EXPECT_EQ(b2.history[0].tasks, std::vector<std::string>{"task04"});
    EXPECT_EQ(b2.history[0].rel_errors.size(), 1u);
    EXPECT_EQ(b2.history[1].op, "remove");
    EXPECT_TRUE(verify_bundle(back, {g.specs.begin(), g.specs.end() - 1}).problems.empty());
  }
}

TEST(EditBundle, TheHistoryRemembersAddedTasksErrors) {
  Grown g("hydra", 6);
  const fs::path mid = g.d / "mid.safetensors";
  const EditReport a = add_adapters(g.before, AdapterSet::open({g.specs.back()}), {}, mid);  // task05
  const fs::path b6 = g.d / "b6.safetensors";
  const EditReport r = remove_tasks(mid, {"task00"}, {}, b6);
  EXPECT_EQ(r.tasks.back().name, "task05");
  ASSERT_TRUE(r.tasks.back().rel_error);
  EXPECT_EQ(*r.tasks.back().rel_error, *a.tasks.back().rel_error);
  EXPECT_FALSE(r.tasks.front().rel_error);
}

TEST(EditRefit, ARefitFromReconstructionsEqualsAMergeOfThemAsAdapters) {
  for (const char* method : {"hydraopt", "jd-full"}) {
    SCOPED_TRACE(method);
    Grown g(method);
    EditOptions o;
    o.budget = 0.4;
    const EditReport r = add_adapters(g.before, AdapterSet::open({g.specs.back()}), o, g.after);
    EXPECT_EQ(r.refit, "all");  // a budget means a refit

    // The same by hand: the stored tasks' reconstructions written as
    // adapters (at the least rank that holds them, in double), merged with
    // the new adapter.
    const Bundle before = Bundle::open(g.before);
    std::vector<std::string> specs;
    for (const auto& t : before.tasks()) {
      const Bundle::PeftAdapter a = before.task_adapter(t, true);
      const fs::path dir = g.d / "exported" / t;
      fs::create_directories(dir);
      test::write_text(dir / "adapter_config.json", a.config_json);
      std::vector<io::TensorData> tensors;
      for (const auto& [name, m] : a.tensors) tensors.push_back(io::tensor_from_matrix(name, m, DType::F64));
      io::safetensors_write(dir / "adapter_model.safetensors", std::move(tensors), {{"format", "pt"}});
      specs.push_back(dir.string());
    }
    specs.push_back(g.specs.back());
    const AdapterSet all = AdapterSet::open(specs);
    MergeOptions mo;
    mo.method = method;
    mo.params = before.parameters();
    mo.dtype = DType::BF16;
    const int64_t original = before.original_params() + AdapterSet::open({g.specs.back()}).original_params();
    // The refit's storage: 0.4 of every task's parameters (float factors,
    // as merge --budget 0.4), here spent on the reconstructions' ranks.
    mo.budget = std::floor(0.4 * static_cast<double>(original)) / static_cast<double>(all.original_params());
    const fs::path ref = g.d / "ref.safetensors";
    const MergeReport m = merge(all, mo, ref);
    expect_tensors_in(ref, g.after, true);
    ASSERT_EQ(r.tasks.size(), m.tasks.size());
    for (size_t i = 0; i < m.tasks.size(); ++i) {
      EXPECT_EQ(r.tasks[i].name, m.tasks[i].name);
      ASSERT_TRUE(r.tasks[i].rel_error);
      EXPECT_EQ(*r.tasks[i].rel_error, m.tasks[i].rel_error);
      EXPECT_EQ(r.tasks[i].reconstructed, i < 4);
      EXPECT_EQ(r.tasks[i].status, i < 4 ? "refit" : "added");
    }
    // Provenance: the stored tasks keep their sources; the history says
    // which targets were reconstructions.
    const io::Bundle b0 = io::bundle_read(g.before), b1 = io::bundle_read(g.after);
    for (size_t i = 0; i < 4; ++i) EXPECT_EQ(b1.tasks[i].sha256, b0.tasks[i].sha256);
    EXPECT_EQ(b1.original_params, original);
    ASSERT_EQ(b1.history.size(), 1u);
    EXPECT_EQ(b1.history[0].refit, "all");
    EXPECT_EQ(b1.history[0].reconstructed, (std::vector<std::string>{"task00", "task01", "task02", "task03"}));
    {  // --budget counts stored numbers, every factor bf16 (2 bytes each)
      int64_t bytes = 0;
      const io::SafetensorsFile st = io::SafetensorsFile::open(g.after);
      for (const auto& t : st.tensors()) {
        EXPECT_EQ(t.dtype, DType::BF16) << t.name;
        bytes += static_cast<int64_t>(t.nbytes());
      }
      EXPECT_LE(bytes, 2 * static_cast<int64_t>(std::floor(0.4 * static_cast<double>(original))));
    }
    EXPECT_TRUE(verify_bundle(g.after, g.specs).problems.empty());
    // No scratch files left beside the output.
    for (const auto& e : fs::directory_iterator(g.d.path())) EXPECT_EQ(e.path().filename().string().find(".after"), std::string::npos);
  }
}

TEST(EditRefit, ReconstructionsAreWrittenAtTheLeastRankThatHoldsThem) {
  // shared-A+core with k' = 2r: each update H_i C_i R is of rank r, not k'.
  Grown g("hydraopt");
  const Bundle b = Bundle::open(g.before);
  size_t wider = 0;
  for (const auto& t : b.tasks()) {
    const Bundle::PeftAdapter least = b.task_adapter(t, true), as_stored = b.task_adapter(t);
    ASSERT_EQ(least.tensors.size(), as_stored.tensors.size());
    const size_t i = b.task_index(t);
    for (size_t j = 0; j < least.tensors.size(); j += 2) {  // lora_A, lora_B of one module
      const std::string module = least.tensors[j].first.substr(17, least.tensors[j].first.rfind(".lora_") - 17);
      const FactoredUpdate u = b.module(b.module_index(module)).task_update(i);
      const MatrixXd want = u.left * u.right;  // dense, scale included
      const MatrixXd got = least.tensors[j + 1].second * least.tensors[j].second;  // alpha = r: scale 1
      EXPECT_LT((got - want).norm(), 1e-12 * want.norm()) << module;
      EXPECT_LE(least.tensors[j].second.rows(), as_stored.tensors[j].second.rows());
      Eigen::JacobiSVD<MatrixXd> svd(want);
      int64_t rank = 0;
      for (Eigen::Index q = 0; q < svd.singularValues().size(); ++q) rank += svd.singularValues()(q) > 1e-9 * svd.singularValues()(0);
      EXPECT_EQ(least.tensors[j].second.rows(), rank) << module;
      wider += as_stored.tensors[j].second.rows() > rank;
    }
    EXPECT_NE(least.config_json.find("\"lora_alpha\""), std::string::npos);
  }
  EXPECT_GT(wider, 0u);  // the planner chose structures whose stored rank exceeds the update's
}

TEST(EditRefit, RemoveWithARefitSpendsTheFreedSpaceOnTheRest) {
  Grown g("hydraopt");
  EditOptions o;
  o.refit = "all";
  const EditReport r = remove_tasks(g.before, {"task01"}, o, g.after);
  const io::Bundle b0 = io::bundle_read(g.before), b1 = io::bundle_read(g.after);
  EXPECT_EQ(b1.tasks.size(), 3u);
  EXPECT_LE(b1.params_stored, b0.params_stored);
  EXPECT_GT(b1.params_stored, b0.params_stored * 3 / 4);  // more than the three tasks' share of before
  for (const auto& t : r.tasks) {
    EXPECT_EQ(t.status, "refit");
    EXPECT_TRUE(t.reconstructed);
  }
}

TEST(EditRefit, ABudgetInParametersRefitsToFloatsThatCanBeAddedToAgain) {
  // The online benchmark's loop: add with a refit to a fraction, then add
  // again. The fraction counts stored numbers with float factors, as
  // merge --budget does, so the refit bundle stays editable.
  Grown g("hydraopt", 6);
  const fs::path four = g.d / "four.safetensors";  // tasks 0-3; 4 and 5 come later
  remove_tasks(g.before, {"task04"}, {}, four);
  EditOptions o;
  o.budget = 0.3;
  const fs::path mid = g.d / "mid.safetensors";
  add_adapters(four, AdapterSet::open({g.specs[4]}), o, mid);
  const io::Bundle b = io::bundle_read(mid);
  for (const auto& m : b.modules) EXPECT_TRUE(m.precision.all_float()) << m.name;
  EXPECT_LE(b.params_stored, static_cast<int64_t>(std::floor(0.3 * static_cast<double>(b.original_params))));
  const EditReport r = add_adapters(mid, AdapterSet::open({g.specs[5]}), {}, g.after);
  EXPECT_EQ(r.tasks.size(), 6u);

  // Bytes let the planner store integers; such a bundle is refused by the
  // next edit with its reason, and nothing is written.
  EditOptions ob;
  ob.budget_bytes = b.params_stored / 2;  // a quarter of the float bytes (bf16)
  const fs::path small = g.d / "small.safetensors", next = g.d / "next.safetensors";
  add_adapters(four, AdapterSet::open({g.specs[4]}), ob, small);
  bool integers = false;
  for (const auto& m : io::bundle_read(small).modules) integers = integers || !m.precision.all_float();
  ASSERT_TRUE(integers);
  try {
    add_adapters(small, AdapterSet::open({g.specs[5]}), {}, next);
    ADD_FAILURE() << "an integer bundle was edited";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("stores factors as integers"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(next));
}

TEST(EditRefit, TouchedRefitsOnlyTheModulesTheNewAdapterHas) {
  Grown g("hydraopt");
  // A new adapter on one module only.
  const io::Bundle b0 = io::bundle_read(g.before);
  const auto& m0 = b0.modules[0];
  const fs::path one = g.d / "one";
  const Adapter src = Adapter::open(g.specs.back());
  const ModuleLora l = src.load(m0.name);
  test::write_adapter(one, R"({"r": )" + std::to_string(l.rank()) + R"(, "lora_alpha": )" +
                               std::to_string(l.scale * static_cast<double>(l.rank())) +
                               R"(, "base_model_name_or_path": ")" + b0.base_model + R"(", "target_modules": ["x"]})",
                      {{m0.name, l.A, l.B}});
  EditOptions o;
  o.refit = "touched";
  o.budget = 0.5;
  add_adapters(g.before, AdapterSet::open({one.string()}), o, g.after);
  const io::Bundle b1 = io::bundle_read(g.after);
  EXPECT_EQ(b1.history[0].refit, "touched");
  for (size_t m = 1; m < b0.modules.size(); ++m) {  // untouched: stored factors kept, the new task's appended
    for (size_t i = 0; i < 4; ++i) {
      EXPECT_EQ(b1.modules[m].fit.left(i), b0.modules[m].fit.left(i));
      EXPECT_EQ(b1.modules[m].fit.right(i), b0.modules[m].fit.right(i));
    }
  }
  EXPECT_NE(b1.modules[0].sha256, b0.modules[0].sha256);  // fitted again
}

TEST(EditBundle, BadInputIsOneLineAndWritesNothing) {
  Grown g;
  const AdapterSet fifth = AdapterSet::open({g.specs.back()});
  auto nothing_written = [&] { EXPECT_FALSE(fs::exists(g.after)); };
  // A task name already in the bundle.
  EXPECT_NE(test::error_of([&] { add_adapters(g.before, AdapterSet::open({g.specs[0]}), {}, g.after); })
                .find("already in the bundle"),
            std::string::npos);
  nothing_written();
  // Another base model.
  const fs::path other = g.d / "other";
  fs::copy(g.specs.back(), other);
  std::string config = test::read_text(other / "adapter_config.json");
  auto cj = nlohmann::json::parse(config);
  cj["base_model_name_or_path"] = "another/model";
  test::write_text(other / "adapter_config.json", cj.dump());
  EXPECT_NE(test::error_of([&] { add_adapters(g.before, AdapterSet::open({other.string()}), {}, g.after); })
                .find("differs from the bundle's"),
            std::string::npos);
  nothing_written();
  // A module of another shape.
  const io::Bundle b = io::bundle_read(g.before);
  const auto& m0 = b.modules[0];
  const fs::path shape = g.d / "shape";
  test::write_adapter(shape, R"({"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]})",
                      {{m0.name, test::random_matrix(2, m0.in + 1, 1), test::random_matrix(m0.out, 2, 2)}});
  std::string msg = test::error_of([&] { add_adapters(g.before, AdapterSet::open({shape.string()}), {}, g.after); });
  EXPECT_NE(msg.find("differs from the bundle's"), std::string::npos) << msg;
  EXPECT_NE(msg.find("lora_A.weight"), std::string::npos) << msg;
  nothing_written();
  // A module the bundle does not have.
  const fs::path extra = g.d / "extra";
  test::write_adapter(extra, R"({"r": 2, "lora_alpha": 4, "target_modules": ["zz_proj"]})",
                      {{"model.layers.0.mlp.zz_proj", test::random_matrix(2, 8, 1), test::random_matrix(8, 2, 2)}});
  EXPECT_NE(test::error_of([&] { add_adapters(g.before, AdapterSet::open({extra.string()}), {}, g.after); })
                .find("not in the bundle"),
            std::string::npos);
  nothing_written();
  // Options.
  EditOptions bad;
  bad.refit = "some";
  EXPECT_NE(test::error_of([&] { add_adapters(g.before, fifth, bad, g.after); }).find("--refit"), std::string::npos);
  bad.refit = "none";
  bad.budget = 0.3;
  EXPECT_NE(test::error_of([&] { add_adapters(g.before, fifth, bad, g.after); }).find("needs a refit"),
            std::string::npos);
  // Removal of an unknown task, of a task twice, of every task.
  EXPECT_NE(test::error_of([&] { remove_tasks(g.before, {"nope"}, {}, g.after); }).find("no task 'nope'"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { remove_tasks(g.before, {"task00", "task00"}, {}, g.after); }).find("twice"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] {
              remove_tasks(g.before, {"task00", "task01", "task02", "task03"}, {}, g.after);
            }).find("every task"),
            std::string::npos);
  nothing_written();
  // A damaged bundle: its bytes are checked against their checksums on the
  // way, not passed on under fresh ones.
  const fs::path damaged = g.d / "damaged.safetensors";
  std::string bytes = test::read_text(g.before);
  bytes[bytes.size() - 3] ^= 0x10;
  test::write_text(damaged, bytes);
  msg = test::error_of([&] { add_adapters(damaged, fifth, {}, g.after); });
  EXPECT_NE(msg.find("do not match their recorded SHA-256"), std::string::npos) << msg;
  EXPECT_NE(test::error_of([&] { remove_tasks(damaged, {"task00"}, {}, g.after); }).find("SHA-256"), std::string::npos);
  nothing_written();
  // Non-finite stored values that a new task would be fitted against
  // (checksums intact): one line, not a crash nor a silent zero fit.
  const fs::path inf = g.d / "inf.safetensors";
  io::Bundle with_inf = io::bundle_read(g.before);
  const StoredReads reads = add_task_reads(with_inf.modules[0].fit, with_inf.modules[0].spec);
  for (size_t j = 0; j < reads.bodies.size(); ++j) {
    if (reads.bodies[j]) with_inf.modules[0].fit.bodies[j](0, 0) = INFINITY;
  }
  for (size_t j = 0; j < reads.heads.size(); ++j) {
    if (reads.heads[j]) with_inf.modules[0].fit.heads[j](0, 0) = INFINITY;
  }
  io::bundle_write(inf, with_inf);
  msg = test::error_of([&] { add_adapters(inf, fifth, {}, g.after); });
  EXPECT_NE(msg.find("stored values are not finite"), std::string::npos) << msg;
  nothing_written();
  // A bundle of another format version.
  const fs::path v2 = g.d / "v2.safetensors";
  fs::copy(g.before, v2);
  test::rewrite_metadata(v2, [](nlohmann::ordered_json& j) { j["version"] = io::kBundleVersion + 1; });
  const std::string unsupported = "version " + std::to_string(io::kBundleVersion + 1) + " is not supported";
  EXPECT_NE(test::error_of([&] { add_adapters(v2, fifth, {}, g.after); }).find(unsupported), std::string::npos);
  EXPECT_NE(test::error_of([&] { remove_tasks(v2, {"task00"}, {}, g.after); }).find(unsupported), std::string::npos);
  nothing_written();
}

TEST(EditBundle, HistoryMetadataIsCheckedOnRead) {
  Grown g;
  add_adapters(g.before, AdapterSet::open({g.specs.back()}), {}, g.after);
  const std::vector<std::pair<std::string, std::function<void(nlohmann::ordered_json&)>>> bad = {
      {"history is not a list", [](auto& j) { j["history"] = "add"; }},
      {"history entry is not an object", [](auto& j) { j["history"][0] = 3; }},
      {"unknown op", [](auto& j) { j["history"][0]["op"] = "merge"; }},
      {"names no tasks", [](auto& j) { j["history"][0]["tasks"] = nlohmann::ordered_json::array(); }},
      {"holds a non-string", [](auto& j) { j["history"][0]["tasks"][0] = 7; }},
      {"cannot be used as a directory name", [](auto& j) { j["history"][0]["tasks"][0] = "../x"; }},
      {"unknown refit", [](auto& j) { j["history"][0]["refit"] = "some"; }},
      {"reconstructed is not a list", [](auto& j) { j["history"][0]["reconstructed"] = 1; }},
      {"one number per added task", [](auto& j) { j["history"][0]["rel_errors"].push_back(0.1); }},
      {"finite number >= 0", [](auto& j) { j["history"][0]["rel_errors"][0] = -1.0; }},
      {"finite number >= 0", [](auto& j) { j["history"][0]["rel_errors"][0] = "x"; }},
      {"remove entry has rel_errors",
       [](auto& j) {
         j["history"][0]["op"] = "remove";
       }},
      {"malformed", [](auto& j) { j["history"][0].erase("refit"); }},
  };
  for (const auto& [want, edit] : bad) {
    const fs::path p = g.d / "bad.safetensors";
    fs::copy(g.after, p, fs::copy_options::overwrite_existing);
    test::rewrite_metadata(p, edit);
    const std::string msg = test::error_of([&] { io::bundle_read(p); });
    EXPECT_NE(msg.find(want), std::string::npos) << want << ": " << msg;
    EXPECT_NE(msg.find("bad.safetensors"), std::string::npos) << msg;
  }
}

TEST(EditCli, AddAndRemoveOneLineErrorsAndExitCodes) {
  Grown g;
  std::string out;
  const std::string report = (g.d / "r.json").string();
  ASSERT_EQ(test::run(test::cli() + " add " + g.before.string() + " " + g.specs.back() + " -o " + g.after.string() +
                          " --report " + report,
                      &out),
            0)
      << out;
  EXPECT_NE(out.find("added task04"), std::string::npos) << out;
  const auto j = nlohmann::json::parse(test::read_text(report));
  EXPECT_EQ(j["op"], "add");
  EXPECT_EQ(j["tasks"].size(), 5u);
  EXPECT_TRUE(j["tasks"][0]["rel_error"].is_null());
  EXPECT_TRUE(j["tasks"][4]["rel_error"].is_number());
  EXPECT_EQ(test::run(test::cli() + " verify " + g.after.string(), &out), 0) << out;
  const fs::path back = g.d / "back.safetensors";
  ASSERT_EQ(test::run(test::cli() + " remove " + g.after.string() + " --task task04 -o " + back.string(), &out), 0)
      << out;
  expect_tensors_in(g.before, back, true);
  // Adding task04 again to the bundle that has it: one line, exit 1, nothing written.
  const fs::path none = g.d / "none.safetensors";
  EXPECT_EQ(test::run(test::cli() + " add " + g.after.string() + " " + g.specs.back() + " -o " + none.string(), &out), 1);
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
  EXPECT_NE(out.find("hydraopt: error: "), std::string::npos) << out;
  EXPECT_NE(out.find("already in the bundle"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(none));
}

}  // namespace
}  // namespace hydraopt
