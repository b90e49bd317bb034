// Fitting kernels at llama-1b shapes (40 tasks, r = 32, 2048 x 2048): the
// closed-form hydra point, and one ALS step of grouped heads (the planner's
// refinement), on adapters drawn like `hydraopt synth` draws them.
#include <benchmark/benchmark.h>

#include "methods/structures.h"
#include "util/blas_threads.h"
#include "util/random.h"

namespace {

using Eigen::MatrixXd;

// As the merge runs it: OpenBLAS (behind LAPACKE) single-threaded.
hydraopt::ModuleProblem problem(int tasks) {
  hydraopt::util::single_threaded_blas();
  hydraopt::util::Stream rng(44, 1);
  const MatrixXd a0 = rng.normal(32, 2048, 1.0 / 64), drift = rng.normal(64, 2048, 1.0 / 64);
  hydraopt::ModuleProblem p;
  for (int i = 0; i < tasks; ++i) {
    hydraopt::ModuleLora l;
    l.A = a0 + 0.45 * rng.normal(32, 64, 0.125) * drift + 0.15 * rng.normal(32, 2048, 1.0 / 64);
    l.B = rng.normal(2048, 32, 0.02);
    l.scale = 2;
    p.loras.push_back(l);
    p.weights.push_back(1.0);
  }
  return p;
}

void BM_FitHydraPoint(benchmark::State& state) {
  const auto p = problem(static_cast<int>(state.range(0)));
  hydraopt::FitOptions o;
  o.body_width = 1;
  for (auto _ : state) {
    hydraopt::ModuleFitter f(p, o);
    benchmark::DoNotOptimize(f.fit({hydraopt::Family::kSharedA, 32, 0}));
  }
}
BENCHMARK(BM_FitHydraPoint)->Arg(40)->Unit(benchmark::kMillisecond);

// Grouped heads (4 groups) from the closed-form start with 0 and 1 ALS
// iterations; the difference is one ALS step.
void BM_FitGroupedHeads(benchmark::State& state) {
  const auto p = problem(40);
  hydraopt::FitOptions o;
  o.body_width = 1;
  o.max_iters = static_cast<int>(state.range(0));
  o.tol = 0;
  for (auto _ : state) {
    hydraopt::ModuleFitter f(p, o);
    benchmark::DoNotOptimize(f.fit({hydraopt::Family::kSharedA, 32, 4}));
  }
}
BENCHMARK(BM_FitGroupedHeads)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);

}  // namespace
