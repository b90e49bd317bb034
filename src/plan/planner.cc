#include "plan/planner.h"

#include <algorithm>
#include <limits>
#include <map>
#include <set>

#include "hydraopt/error.h"

namespace hydraopt {

namespace {

using Modules = std::vector<std::vector<Candidate>>;

size_t smallest(const std::vector<Candidate>& c) {
  size_t best = 0;
  for (size_t j = 1; j < c.size(); ++j) {
    if (c[j].params < c[best].params || (c[j].params == c[best].params && c[j].error < c[best].error)) best = j;
  }
  return best;
}

// Lower convex hull of (params, error), from the smallest storage on,
// error strictly decreasing.
std::vector<size_t> hull(const std::vector<Candidate>& c) {
  std::vector<size_t> order(c.size());
  for (size_t j = 0; j < c.size(); ++j) order[j] = j;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return c[a].params != c[b].params ? c[a].params < c[b].params : c[a].error < c[b].error;
  });
  std::vector<size_t> h;
  for (size_t j : order) {
    if (!h.empty() && c[j].params == c[h.back()].params) continue;  // same storage, worse error
    if (!h.empty() && c[j].error >= c[h.back()].error) continue;    // not an improvement
    while (h.size() >= 2) {
      const Candidate &a = c[h[h.size() - 2]], &b = c[h.back()];
      // b is above the chord a -> j: drop it.
      double lhs = (b.error - a.error) * double(c[j].params - a.params);
      double rhs = (c[j].error - a.error) * double(b.params - a.params);
      if (lhs >= rhs) h.pop_back();
      else break;
    }
    h.push_back(j);
  }
  return h;
}

void totals(const Modules& m, PlanResult* p) {
  p->params = 0;
  p->error = 0;
  for (size_t i = 0; i < m.size(); ++i) {
    p->params += m[i][p->choice[i]].params;
    p->error += m[i][p->choice[i]].error;
  }
}

// Step 3: any improving swap that fits, best error saved per number first.
void fill(const Modules& m, int64_t budget, PlanResult* p) {
  totals(m, p);
  for (;;) {
    double best_ratio = 0;
    size_t bm = 0, bc = 0;
    bool found = false;
    for (size_t i = 0; i < m.size(); ++i) {
      const Candidate& cur = m[i][p->choice[i]];
      for (size_t j = 0; j < m[i].size(); ++j) {
        const Candidate& c = m[i][j];
        const double saved = cur.error - c.error;
        const int64_t extra = c.params - cur.params;
        if (saved <= 0 || p->params + extra > budget) continue;
        const double ratio = extra <= 0 ? std::numeric_limits<double>::infinity() : saved / double(extra);
        if (!found || ratio > best_ratio) {
          found = true;
          best_ratio = ratio;
          bm = i;
          bc = j;
        }
      }
    }
    if (!found) break;
    p->params += m[bm][bc].params - m[bm][p->choice[bm]].params;
    p->error += m[bm][bc].error - m[bm][p->choice[bm]].error;
    p->choice[bm] = bc;
  }
  totals(m, p);  // re-add from scratch: no drift from incremental sums
}

// Multiple-choice knapsack by dynamic programming over the budget cut into at
// most kBuckets units. Storage is rounded *up* to whole units, so the plan
// found always fits; with budgets below kBuckets the result is exact.
constexpr int64_t kBuckets = 8192;

PlanResult knapsack(const Modules& m, int64_t budget) {
  const int64_t unit = std::max<int64_t>(1, (budget + kBuckets - 1) / kBuckets);
  const int64_t cap = budget / unit;
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> dp(cap + 1, 0.0), next(cap + 1);
  std::vector<std::vector<uint16_t>> pick(m.size(), std::vector<uint16_t>(cap + 1, 0));
  for (size_t i = 0; i < m.size(); ++i) {
    std::fill(next.begin(), next.end(), inf);
    for (size_t j = 0; j < m[i].size(); ++j) {
      const int64_t w = (m[i][j].params + unit - 1) / unit;
      const double e = m[i][j].error;
      for (int64_t b = w; b <= cap; ++b) {
        const double v = dp[b - w] + e;
        if (v < next[b]) {
          next[b] = v;
          pick[i][b] = static_cast<uint16_t>(j);
        }
      }
    }
    dp.swap(next);
  }
  PlanResult r;
  if (!(dp[cap] < inf)) return r;  // rounding made it infeasible: caller falls back
  r.choice.resize(m.size());
  int64_t b = cap;
  for (size_t i = m.size(); i-- > 0;) {
    const size_t j = pick[i][b];
    r.choice[i] = j;
    b -= (m[i][j].params + unit - 1) / unit;
  }
  return r;
}

}  // namespace

int64_t plan_min_params(const Modules& modules) {
  int64_t p = 0;
  for (auto& c : modules) p += c[smallest(c)].params;
  return p;
}

PlanResult plan_budget(const Modules& modules, int64_t budget) {
  const int64_t floor = plan_min_params(modules);
  if (floor > budget) {
    throw Error("the budget allows " + std::to_string(budget) + " stored numbers but the smallest plan needs " +
                std::to_string(floor));
  }
  PlanResult greedy;
  std::vector<std::vector<size_t>> hulls;
  std::vector<size_t> pos(modules.size(), 0);
  for (auto& c : modules) hulls.push_back(hull(c));
  for (size_t i = 0; i < modules.size(); ++i) greedy.choice.push_back(hulls[i][0]);
  totals(modules, &greedy);
  for (;;) {
    double best = -1;
    size_t bm = 0;
    for (size_t i = 0; i < modules.size(); ++i) {
      if (pos[i] + 1 >= hulls[i].size()) continue;
      const Candidate &a = modules[i][hulls[i][pos[i]]], &b = modules[i][hulls[i][pos[i] + 1]];
      if (greedy.params + (b.params - a.params) > budget) continue;
      double slope = (a.error - b.error) / double(b.params - a.params);
      if (slope > best) {
        best = slope;
        bm = i;
      }
    }
    if (best < 0) break;
    ++pos[bm];
    greedy.choice[bm] = hulls[bm][pos[bm]];
    totals(modules, &greedy);
  }
  fill(modules, budget, &greedy);

  PlanResult result = greedy;
  if (PlanResult k = knapsack(modules, budget); !k.choice.empty()) {
    fill(modules, budget, &k);
    if (k.error < result.error) result = k;
  }
  std::set<std::string> keys;
  for (auto& c : modules[0]) keys.insert(c.key);
  for (const auto& key : keys) {
    PlanResult u;
    bool complete = true;
    for (auto& c : modules) {
      auto it = std::find_if(c.begin(), c.end(), [&](const Candidate& x) { return x.key == key; });
      if (it == c.end()) {
        complete = false;
        break;
      }
      u.choice.push_back(static_cast<size_t>(it - c.begin()));
    }
    if (!complete) continue;
    totals(modules, &u);
    if (u.params > budget) continue;
    fill(modules, budget, &u);
    if (u.error < result.error) result = u;
  }
  return result;
}

std::vector<PlanResult> plan_budgets(const Modules& modules, const std::vector<int64_t>& budgets) {
  std::vector<size_t> order(budgets.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return budgets[a] < budgets[b]; });
  std::vector<PlanResult> out(budgets.size());
  const PlanResult* prev = nullptr;
  for (size_t i : order) {
    out[i] = plan_budget(modules, budgets[i]);
    if (prev && prev->error < out[i].error) out[i] = *prev;
    prev = &out[i];
  }
  return out;
}

}  // namespace hydraopt
