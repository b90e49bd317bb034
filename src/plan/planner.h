// Budget allocation across modules (rate-distortion).
//
// Each module offers candidates (storage, weighted error); storage is in
// the budget's unit, stored numbers or bytes (BudgetUnit). The planner picks
// one per module so that total storage fits the budget and total error is
// least:
//   1. start every module at its smallest candidate;
//   2. walk the lower convex hull of each module's (storage, error) curve,
//      always taking the step with the most error saved per stored number
//      that still fits (the classic Lagrangian / greedy allocation);
//   3. fill what budget is left with any improving candidate that fits,
//      best ratio first (steps off the hull that the hull walk skips);
//   4. solve the same problem by dynamic programming over the budget cut
//      into at most 8192 units (storage rounded up, so it always fits;
//      exact when the budget is below 8192), followed by step 3;
//   5. compare with the uniform plans (the same structure key in every
//      module) that fit, the 64 best of them each followed by step 3, and
//      keep the best.
// Steps 1-4 see only each module's undominated candidates (no other has
// less or equal storage and error, one of them less): the rest cannot
// improve a plan, and with a precision axis they are most of them.
// So the result never exceeds the budget and is never worse than the best
// uniform plan.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "methods/structures.h"

namespace hydraopt {

struct Candidate {
  StructureSpec spec;
  std::string key;  ///< same key in every module = "the same structure"
  int64_t storage = 0;  ///< stored numbers or bytes: the budget's unit
  double error = 0;     ///< sum_i w_i ||dW_i - dW_hat_i||^2 on this module
};

struct PlanResult {
  std::vector<size_t> choice;  ///< candidate index per module
  int64_t storage = 0;
  double error = 0;
};

/// Least storage any plan can have.
int64_t plan_min_storage(const std::vector<std::vector<Candidate>>& modules);

/// Throws hydraopt::Error if even the smallest plan exceeds `budget`.
PlanResult plan_budget(const std::vector<std::vector<Candidate>>& modules, int64_t budget);

/// Plans for several budgets (ascending or not) whose error never rises with
/// the budget: a plan that fits a smaller budget also fits a larger one, so
/// each budget keeps the better of its own plan and the previous one's.
std::vector<PlanResult> plan_budgets(const std::vector<std::vector<Candidate>>& modules,
                                     const std::vector<int64_t>& budgets);

}  // namespace hydraopt
