#include <gtest/gtest.h>

#include <random>

#include "hydraopt/error.h"
#include "plan/planner.h"

namespace hydraopt {
namespace {

using Modules = std::vector<std::vector<Candidate>>;

Modules random_table(int modules, int cands, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::uniform_int_distribution<int> size(1, 100);
  std::uniform_real_distribution<double> err(0, 1);
  Modules m(modules);
  for (int i = 0; i < modules; ++i) {
    for (int j = 0; j < cands; ++j) {
      m[i].push_back({{}, "s" + std::to_string(j), size(g), err(g) * (1 + i)});
    }
  }
  return m;
}

// Exhaustive optimum over all plans.
double brute_force(const Modules& m, int64_t budget) {
  double best = INFINITY;
  std::vector<size_t> c(m.size(), 0);
  for (;;) {
    int64_t p = 0;
    double e = 0;
    for (size_t i = 0; i < m.size(); ++i) {
      p += m[i][c[i]].storage;
      e += m[i][c[i]].error;
    }
    if (p <= budget) best = std::min(best, e);
    size_t i = 0;
    while (i < m.size() && ++c[i] == m[i].size()) c[i++] = 0;
    if (i == m.size()) return best;
  }
}

double best_uniform(const Modules& m, int64_t budget) {
  double best = INFINITY;
  for (size_t j = 0; j < m[0].size(); ++j) {
    int64_t p = 0;
    double e = 0;
    for (auto& c : m) {
      p += c[j].storage;
      e += c[j].error;
    }
    if (p <= budget) best = std::min(best, e);
  }
  return best;
}

TEST(Planner, FitsTheBudgetBeatsUniformAndFindsTheOptimum) {
  double worst_gap = 0;
  for (uint64_t seed = 0; seed < 40; ++seed) {
    auto m = random_table(4, 5, seed);
    const int64_t lo = plan_min_storage(m);
    for (int64_t budget = lo; budget <= lo + 300; budget += 23) {
      PlanResult r = plan_budget(m, budget);
      EXPECT_LE(r.storage, budget);
      double check = 0;
      int64_t params = 0;
      for (size_t i = 0; i < m.size(); ++i) {
        check += m[i][r.choice[i]].error;
        params += m[i][r.choice[i]].storage;
      }
      EXPECT_DOUBLE_EQ(check, r.error);
      EXPECT_EQ(params, r.storage);
      EXPECT_LE(r.error, best_uniform(m, budget) + 1e-12);
      double opt = brute_force(m, budget);
      EXPECT_GE(r.error, opt - 1e-12);
      worst_gap = std::max(worst_gap, (r.error - opt) / std::max(opt, 1e-9));
    }
  }
  // Budgets below 8192 numbers are solved exactly by the knapsack pass.
  EXPECT_LT(worst_gap, 1e-12);
}

TEST(Planner, ConvexCurvesAreSolvedExactly) {
  // error = 1/params on each module: the greedy walk is optimal at breakpoints.
  Modules m(3);
  for (int i = 0; i < 3; ++i) {
    for (int p = 1; p <= 6; ++p) m[i].push_back({{}, std::to_string(p), p * (i + 1), (i + 1.0) / p});
  }
  for (int64_t budget = plan_min_storage(m); budget <= 36; ++budget) {
    EXPECT_NEAR(plan_budget(m, budget).error, brute_force(m, budget), 1e-12);
  }
}

TEST(Planner, ErrorNeverRisesWithBudget) {
  auto m = random_table(6, 6, 99);
  std::vector<int64_t> budgets;
  for (int64_t b = plan_min_storage(m); b <= 600; b += 7) budgets.push_back(b);
  auto plans = plan_budgets(m, budgets);
  for (size_t i = 1; i < plans.size(); ++i) {
    EXPECT_LE(plans[i].error, plans[i - 1].error);
    EXPECT_LE(plans[i].storage, budgets[i]);
  }
}

TEST(Planner, ImpossibleBudgetIsAnError) {
  auto m = random_table(3, 3, 1);
  EXPECT_THROW(plan_budget(m, plan_min_storage(m) - 1), Error);
}

}  // namespace
}  // namespace hydraopt

namespace hydraopt {
namespace {

TEST(Planner, LargeBudgetsStayWithinBudgetAndNearTheOptimumOfAFinerProblem) {
  // Scale a random table by 10^4: the knapsack works in rounded units, so
  // compare with the exact optimum of the unscaled table (a lower bound
  // after scaling) and check the budget holds exactly.
  for (uint64_t seed = 0; seed < 10; ++seed) {
    auto small = random_table(4, 5, seed);
    auto big = small;
    for (auto& c : big)
      for (auto& x : c) x.storage = x.storage * 10000 + 37;
    const int64_t lo = plan_min_storage(big);
    for (int64_t budget = lo; budget <= lo + 3'000'000; budget += 230'011) {
      PlanResult r = plan_budget(big, budget);
      EXPECT_LE(r.storage, budget);
      double opt = brute_force(big, budget);
      EXPECT_LE(r.error, opt * 1.05 + 1e-12) << seed << " " << budget;
    }
  }
}

}  // namespace
}  // namespace hydraopt
