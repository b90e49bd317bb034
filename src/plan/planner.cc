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
    if (c[j].storage < c[best].storage || (c[j].storage == c[best].storage && c[j].error < c[best].error)) best = j;
  }
  return best;
}

// Lower convex hull of (storage, error), from the smallest storage on,
// error strictly decreasing.
std::vector<size_t> hull(const std::vector<Candidate>& c) {
  std::vector<size_t> order(c.size());
  for (size_t j = 0; j < c.size(); ++j) order[j] = j;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return c[a].storage != c[b].storage ? c[a].storage < c[b].storage : c[a].error < c[b].error;
  });
  std::vector<size_t> h;
  for (size_t j : order) {
    if (!h.empty() && c[j].storage == c[h.back()].storage) continue;  // same storage, worse error
    if (!h.empty() && c[j].error >= c[h.back()].error) continue;    // not an improvement
    while (h.size() >= 2) {
      const Candidate &a = c[h[h.size() - 2]], &b = c[h.back()];
      // b is above the chord a -> j: drop it.
      double lhs = (b.error - a.error) * double(c[j].storage - a.storage);
      double rhs = (c[j].error - a.error) * double(b.storage - a.storage);
      if (lhs >= rhs) h.pop_back();
      else break;
    }
    h.push_back(j);
  }
  return h;
}

void totals(const Modules& m, PlanResult* p) {
  p->storage = 0;
  p->error = 0;
  for (size_t i = 0; i < m.size(); ++i) {
    p->storage += m[i][p->choice[i]].storage;
    p->error += m[i][p->choice[i]].error;
  }
}

// Step 3: any improving swap that fits, best error saved per number first;
// with `to`, swaps only to to[i]'s candidates of module i (a dominated
// candidate is never a better swap than the one dominating it).
void fill(const Modules& m, int64_t budget, PlanResult* p, const std::vector<std::vector<size_t>>* to = nullptr) {
  totals(m, p);
  for (;;) {
    double best_ratio = 0;
    size_t bm = 0, bc = 0;
    bool found = false;
    for (size_t i = 0; i < m.size(); ++i) {
      const Candidate& cur = m[i][p->choice[i]];
      const size_t count = to ? (*to)[i].size() : m[i].size();
      for (size_t jj = 0; jj < count; ++jj) {
        const size_t j = to ? (*to)[i][jj] : jj;
        const Candidate& c = m[i][j];
        const double saved = cur.error - c.error;
        const int64_t extra = c.storage - cur.storage;
        if (saved <= 0 || p->storage + extra > budget) continue;
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
    p->storage += m[bm][bc].storage - m[bm][p->choice[bm]].storage;
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
      const int64_t w = (m[i][j].storage + unit - 1) / unit;
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
    b -= (m[i][j].storage + unit - 1) / unit;
  }
  return r;
}

// The candidates no other beats (less or equal storage and error, one of
// them less; exact ties kept):
// the only ones an optimal plan needs. The precision axis makes most
// candidates dominated (a format with more bytes and more error).
std::vector<size_t> front(const std::vector<Candidate>& c) {
  std::vector<size_t> order(c.size());
  for (size_t j = 0; j < c.size(); ++j) order[j] = j;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return c[a].storage != c[b].storage ? c[a].storage < c[b].storage : c[a].error < c[b].error;
  });
  std::vector<size_t> kept;
  double best = std::numeric_limits<double>::infinity();  // least error at less storage
  int64_t best_storage = -1;
  double at_storage = std::numeric_limits<double>::infinity();  // least error at this storage
  for (size_t j : order) {
    if (c[j].storage != best_storage) {
      best = std::min(best, at_storage);
      best_storage = c[j].storage;
      at_storage = c[j].error;
    }
    if (c[j].error >= best || c[j].error > at_storage) continue;
    kept.push_back(j);
  }
  std::sort(kept.begin(), kept.end());
  return kept;
}

// The best of the uniform plans (the same key in every module) that fit,
// each followed by step 3; only the `tries` best before step 3 are filled.
PlanResult best_uniform(const Modules& modules, int64_t budget, size_t tries, const std::vector<std::vector<size_t>>& to) {
  std::map<std::string, PlanResult> uniform;
  for (size_t j = 0; j < modules[0].size(); ++j) uniform[modules[0][j].key].choice.assign(1, j);
  for (size_t i = 1; i < modules.size(); ++i) {
    std::map<std::string, size_t> index;
    for (size_t j = 0; j < modules[i].size(); ++j) index.try_emplace(modules[i][j].key, j);  // the first, as before
    for (auto it = uniform.begin(); it != uniform.end();) {
      auto found = index.find(it->first);
      if (found == index.end()) {
        it = uniform.erase(it);
      } else {
        it->second.choice.push_back(found->second);
        ++it;
      }
    }
  }
  std::vector<PlanResult> fits;
  for (auto& [key, u] : uniform) {
    totals(modules, &u);
    if (u.storage <= budget) fits.push_back(std::move(u));
  }
  std::stable_sort(fits.begin(), fits.end(), [](const PlanResult& a, const PlanResult& b) { return a.error < b.error; });
  PlanResult best;
  for (size_t t = 0; t < std::min(tries, fits.size()); ++t) {
    fill(modules, budget, &fits[t], &to);
    if (best.choice.empty() || fits[t].error < best.error) best = fits[t];
  }
  return best;
}

}  // namespace

int64_t plan_min_storage(const Modules& modules) {
  int64_t p = 0;
  for (auto& c : modules) p += c[smallest(c)].storage;
  return p;
}

PlanResult plan_budget(const Modules& all, int64_t budget) {
  const int64_t floor = plan_min_storage(all);
  if (floor > budget) {
    throw Error("the budget allows " + std::to_string(budget) + " stored units but the smallest plan needs " +
                std::to_string(floor));
  }
  // Steps 1-4 on the undominated candidates; their indices map back.
  std::vector<std::vector<size_t>> kept;
  Modules modules;
  for (auto& c : all) {
    kept.push_back(front(c));
    modules.emplace_back();
    for (size_t j : kept.back()) modules.back().push_back(c[j]);
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
      if (greedy.storage + (b.storage - a.storage) > budget) continue;
      double slope = (a.error - b.error) / double(b.storage - a.storage);
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
  for (size_t i = 0; i < all.size(); ++i) result.choice[i] = kept[i][result.choice[i]];
  totals(all, &result);
  // Step 5 on every candidate.
  constexpr size_t kUniformTries = 64;
  if (PlanResult u = best_uniform(all, budget, kUniformTries, kept); !u.choice.empty() && u.error < result.error) result = u;
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
