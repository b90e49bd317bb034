#include "core/structure.h"

#include <algorithm>
#include <map>

namespace hydraopt {

namespace {

const std::map<Family, const char*> kNames = {
    {Family::kExact, "exact"},         {Family::kMerged, "merged"},       {Family::kSharedA, "shared-A"},
    {Family::kSharedACore, "shared-A+core"}, {Family::kMultiA, "multi-A"}, {Family::kSharedB, "shared-B"},
    {Family::kSharedBCore, "shared-B+core"}, {Family::kMultiB, "multi-B"}, {Family::kJdFull, "jd-full"},
    {Family::kJdDiag, "jd-diag"},      {Family::kAvgA, "avg-A"},
};

}  // namespace

int group_count(int groups, size_t tasks) {
  return groups <= 0 ? static_cast<int>(tasks) : std::min<int>(groups, static_cast<int>(tasks));
}

const char* family_name(Family f) { return kNames.at(f); }

std::optional<Family> family_from_name(const std::string& s) {
  for (auto& [f, n] : kNames) {
    if (s == n) return f;
  }
  return std::nullopt;
}

Family mirror(Family f) {
  switch (f) {
    case Family::kSharedA: return Family::kSharedB;
    case Family::kSharedB: return Family::kSharedA;
    case Family::kSharedACore: return Family::kSharedBCore;
    case Family::kSharedBCore: return Family::kSharedACore;
    case Family::kMultiA: return Family::kMultiB;
    case Family::kMultiB: return Family::kMultiA;
    default: return f;
  }
}

bool shares_b(Family f) {
  return f == Family::kSharedB || f == Family::kSharedBCore || f == Family::kMultiB;
}

std::string StructureSpec::label() const {
  std::string s = family_name(family);
  if (family == Family::kExact || family == Family::kAvgA) return s;
  s += " k=" + std::to_string(rank);
  if (groups > 0) {
    bool bodies = family == Family::kMultiA || family == Family::kMultiB;
    s += (bodies ? " bodies=" : " heads=") + std::to_string(groups);
  }
  return s;
}

int64_t ModuleShape::max_rank() const {
  int64_t r = 0;
  for (auto x : ranks) r = std::max(r, x);
  return r;
}

int64_t ModuleShape::rank_sum() const {
  int64_t r = 0;
  for (auto x : ranks) r += x;
  return r;
}

int64_t spec_params(const StructureSpec& s, const ModuleShape& m) {
  const int64_t n = static_cast<int64_t>(m.ranks.size()), k = s.rank, r = m.max_rank();
  int64_t in = m.in, out = m.out;
  if (shares_b(s.family)) std::swap(in, out);
  const int64_t g = group_count(s.groups, m.ranks.size());
  switch (s.family) {
    case Family::kExact: return m.rank_sum() * (m.in + m.out);
    case Family::kMerged: return k * (in + out);
    case Family::kSharedA:
    case Family::kSharedB: return k * in + g * k * out;
    case Family::kSharedACore:
    case Family::kSharedBCore:
      if (g == n) return k * in + m.rank_sum() * (out + k);
      return k * in + g * r * out + n * r * k;
    case Family::kMultiA:
    case Family::kMultiB: return g * k * in + n * k * out;
    case Family::kJdFull: return k * (in + out) + n * k * k;
    case Family::kJdDiag: return k * (in + out) + n * k;
    case Family::kAvgA: return r * in + n * r * out;
  }
  return 0;
}

bool spec_refinable(const StructureSpec& s, size_t tasks) {
  switch (s.family) {
    case Family::kSharedA:
    case Family::kSharedB:
    case Family::kSharedACore:
    case Family::kSharedBCore: return s.groups > 0 && static_cast<size_t>(s.groups) < tasks;
    case Family::kJdFull:
    case Family::kJdDiag: return true;
    default: return false;
  }
}

bool spec_valid(const StructureSpec& s, const ModuleShape& m) {
  const int64_t k = s.rank, total = m.rank_sum();
  switch (s.family) {
    case Family::kExact: return true;
    case Family::kAvgA: {
      for (auto x : m.ranks) {
        if (x != 0 && x != m.max_rank()) return false;
      }
      return m.max_rank() > 0;
    }
    case Family::kMerged:
    case Family::kJdFull:
    case Family::kJdDiag: return k >= 1 && k <= std::min({m.in, m.out, total});
    case Family::kSharedA:
    case Family::kMultiA: return k >= 1 && k <= std::min({m.in, m.out, total});
    case Family::kSharedB:
    case Family::kMultiB: return k >= 1 && k <= std::min({m.in, m.out, total});
    case Family::kSharedACore: return k >= 1 && k <= std::min(m.in, total);
    case Family::kSharedBCore: return k >= 1 && k <= std::min(m.out, total);
  }
  return false;
}

bool per_task_heads(const StructureSpec& s, size_t tasks) {
  return s.family == Family::kSharedA && (s.groups <= 0 || static_cast<size_t>(s.groups) >= tasks);
}

}  // namespace hydraopt
