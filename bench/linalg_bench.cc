// Kernels of the engine at paper shapes (llama-1b preset: 40 tasks, r = 32,
// in = 2048): the shared-body subspace of a stacked (N r) x in matrix,
// randomized against exact, and the factored norms every error goes through.
#include <benchmark/benchmark.h>

#include <Eigen/Eigenvalues>

#include <cmath>

#include "linalg/factored.h"
#include "util/random.h"

namespace {

using Eigen::MatrixXd;

// A stack like the engine's: N blocks of R_i A_i sharing most of a common
// row space (A_i = A0 + drift), as adapters trained from one A init do.
MatrixXd stacked_updates(Eigen::Index tasks, Eigen::Index r, Eigen::Index in) {
  hydraopt::util::Stream rng(42, 1);
  const MatrixXd a0 = rng.normal(r, in, 1.0);
  MatrixXd t(tasks * r, in);
  for (Eigen::Index i = 0; i < tasks; ++i) {
    t.middleRows(i * r, r) = rng.normal(r, r, 1.0) * (a0 + 0.5 * rng.normal(r, in, 1.0));
  }
  return t;
}

void BM_TopRightSubspaceRandomized(benchmark::State& state) {
  const MatrixXd t = stacked_updates(state.range(0), 32, 2048);
  const Eigen::Index k = state.range(1);
  int iterations = 0;
  for (auto _ : state) {
    const auto s = hydraopt::linalg::top_right_subspace(t, k);
    iterations = s.iterations;
    benchmark::DoNotOptimize(s.basis.data());
  }
  state.counters["iterations"] = iterations;
}
BENCHMARK(BM_TopRightSubspaceRandomized)->Args({40, 32})->Args({40, 128})->Unit(benchmark::kMillisecond);

// The merged structures' subspace: the weighted mean update (sum c_i B_i)
// (stacked A_i) in factored form, 2r columns.
void BM_TopRightSubspaceOfProduct(benchmark::State& state) {
  const MatrixXd r = stacked_updates(state.range(0), 32, 2048);
  hydraopt::util::Stream rng(43, 1);
  const MatrixXd l = rng.normal(2048, r.rows(), 1.0);
  for (auto _ : state) benchmark::DoNotOptimize(hydraopt::linalg::top_right_subspace_of_product(l, r, 64).basis.data());
}
BENCHMARK(BM_TopRightSubspaceOfProduct)->Arg(40)->Unit(benchmark::kMillisecond);

void BM_TopRightSubspaceExact(benchmark::State& state) {
  const MatrixXd t = stacked_updates(state.range(0), 32, 2048);
  for (auto _ : state) benchmark::DoNotOptimize(hydraopt::linalg::top_right_subspace_exact(t, state.range(1)).basis.data());
}
BENCHMARK(BM_TopRightSubspaceExact)->Args({40, 32})->Unit(benchmark::kMillisecond);

void BM_ProductNorm2(benchmark::State& state) {
  hydraopt::util::Stream rng(7, 2);
  const MatrixXd l = rng.normal(2048, state.range(0), 1.0), r = rng.normal(state.range(0), 2048, 1.0);
  for (auto _ : state) benchmark::DoNotOptimize(hydraopt::linalg::product_norm2(l, r));
}
BENCHMARK(BM_ProductNorm2)->Arg(32)->Arg(128)->Unit(benchmark::kMicrosecond);

void BM_FactoredSvd(benchmark::State& state) {
  hydraopt::util::Stream rng(9, 3);
  const MatrixXd l = rng.normal(2048, state.range(0), 1.0), r = rng.normal(state.range(0), 2048, 1.0);
  MatrixXd u, vt;
  for (auto _ : state) {
    hydraopt::linalg::factored_svd(l, r, 32, &u, &vt);
    benchmark::DoNotOptimize(u.data());
  }
}
BENCHMARK(BM_FactoredSvd)->Arg(32)->Arg(320)->Unit(benchmark::kMillisecond);

// Calibration's per-site work at the llama-1b preset's shapes: the mean
// moment's factor (in 2048, 40 tasks x 64 pairs side by side) sketched to
// its top 256 pairs, and the whitening's factorisation of the result.
void BM_SketchedLeftSingularPairs(benchmark::State& state) {
  hydraopt::util::Stream rng(11, 4);
  Eigen::MatrixXd g = rng.normal(2048, 2560, 1.0);
  for (Eigen::Index j = 0; j < g.cols(); ++j) g.col(j) *= std::pow(1.0 + static_cast<double>(j % 64), -0.6);
  const Eigen::MatrixXf gf = g.cast<float>();
  for (auto _ : state) {
    const auto s = hydraopt::linalg::sketched_left_singular_pairs(gf, 256);
    benchmark::DoNotOptimize(s.basis.data());
  }
}
BENCHMARK(BM_SketchedLeftSingularPairs)->Unit(benchmark::kMillisecond);

// The whitening's W (2048 x 256, columns decaying as a sketched moment's
// roots do): /0 left_singular_pairs (what Whitening uses), /1 the exact
// solver on W^T (what it used before).
void BM_WhiteningFactor(benchmark::State& state) {
  hydraopt::util::Stream rng(12, 5);
  MatrixXd w = rng.normal(2048, 256, 1.0);
  for (Eigen::Index j = 0; j < w.cols(); ++j) w.col(j) *= std::pow(1.0 + static_cast<double>(j), -1.2);
  const MatrixXd wt = w.transpose();
  for (auto _ : state) {
    const auto s = state.range(0) == 0 ? hydraopt::linalg::left_singular_pairs(w)
                                       : hydraopt::linalg::top_right_subspace_exact(wt, 256);
    benchmark::DoNotOptimize(s.basis.data());
  }
}
BENCHMARK(BM_WhiteningFactor)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);

// The planner's grouped predictions: the top-32 eigenvalue sum of a Gram
// block of 24-32 tasks' rows (768-1024 rows; the Gram of the stack above,
// whose shared directions and own-direction floor it has). Arg 0: the
// block Krylov route top_eigen_sum takes at these sizes; 1: every
// eigenvalue in single precision, the route it took before.
void BM_TopEigenSum(benchmark::State& state) {
  const MatrixXd t = stacked_updates(state.range(0), 32, 2048);
  const MatrixXd g = t * t.transpose();
  for (auto _ : state) {
    double sum = 0;
    if (state.range(1) == 0) {
      sum = hydraopt::linalg::top_eigen_sum(g, 32);
    } else {
      Eigen::SelfAdjointEigenSolver<Eigen::MatrixXf> eig(g.cast<float>(), Eigen::EigenvaluesOnly);
      sum = eig.eigenvalues().tail(32).cast<double>().sum();
    }
    benchmark::DoNotOptimize(sum);
  }
}
BENCHMARK(BM_TopEigenSum)->Args({24, 0})->Args({24, 1})->Args({32, 0})->Args({32, 1})->Unit(benchmark::kMillisecond);

}  // namespace
