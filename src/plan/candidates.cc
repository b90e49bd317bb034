#include "plan/candidates.h"

#include <algorithm>
#include <cmath>
#include <set>

namespace hydraopt {

namespace {

std::vector<int> group_counts(int tasks, int user_groups) {
  if (user_groups > 0) return user_groups < tasks ? std::vector<int>{user_groups} : std::vector<int>{};
  std::vector<int> g;
  for (int base = 2; base < tasks; base *= 2) {
    g.push_back(base);
    if (base + base / 2 < tasks && base >= 2) g.push_back(base + base / 2);
  }
  std::sort(g.begin(), g.end());
  g.erase(std::unique(g.begin(), g.end()), g.end());
  return g;
}

}  // namespace

std::vector<CandidateSpec> candidate_specs(const ModuleShape& m, Share share, int user_groups) {
  const int64_t r = std::max<int64_t>(1, m.max_rank());
  const int n = static_cast<int>(m.ranks.size());
  std::vector<CandidateSpec> out;
  std::set<std::string> seen;
  auto add = [&](Family f, double mult, int groups, const std::string& mult_name) {
    StructureSpec s{f, std::max<int64_t>(1, std::llround(mult * r)), groups};
    if (!spec_valid(s, m) || !seen.insert(s.label()).second) return;
    std::string key = std::string(family_name(f)) + " " + mult_name + "r";
    if (groups > 0) key += (f == Family::kMultiA || f == Family::kMultiB ? " bodies=" : " heads=") + std::to_string(groups);
    out.push_back({s, key, {}});
  };
  out.push_back({{Family::kExact, 0, 0}, "exact", {}});
  seen.insert("exact");
  for (auto [mult, name] : {std::pair{0.25, "0.25"}, {0.5, "0.5"}, {1.0, "1"}, {1.5, "1.5"}, {2.0, "2"}}) {
    add(Family::kMerged, mult, 0, name);
  }
  const auto groups = group_counts(n, user_groups);
  std::vector<Family> sides;
  if (share != Share::kB) sides.push_back(Family::kSharedA);
  if (share != Share::kA) sides.push_back(Family::kSharedB);
  for (Family shared : sides) {
    const bool a = shared == Family::kSharedA;
    const Family core = a ? Family::kSharedACore : Family::kSharedBCore;
    const Family multi = a ? Family::kMultiA : Family::kMultiB;
    add(shared, 0.5, 0, "0.5");
    add(shared, 1.0, 0, "1");
    for (int g : groups) add(shared, 1.0, g, "1");
    for (auto [mult, name] : {std::pair{1.5, "1.5"}, {2.0, "2"}, {3.0, "3"}, {4.0, "4"}}) add(core, mult, 0, name);
    for (int g : groups) {
      if (g <= 8 || user_groups > 0) add(core, 2.0, g, "2");
    }
    for (int g : groups) {
      if (g <= 8 || user_groups > 0) add(multi, 1.0, g, "1");
    }
  }
  if (share == Share::kAuto) {
    for (auto [mult, name] : {std::pair{1.0, "1"}, {2.0, "2"}, {3.0, "3"}}) add(Family::kJdFull, mult, 0, name);
    for (auto [mult, name] : {std::pair{1.0, "1"}, {2.0, "2"}, {4.0, "4"}}) add(Family::kJdDiag, mult, 0, name);
  }
  return out;
}

std::vector<Precision> candidate_precisions(const StructureSpec& s) {
  std::vector<std::optional<QuantFormat>> menu{std::nullopt};
  for (const QuantFormat& f : all_quant_formats()) menu.emplace_back(f);
  const bool cores = s.family == Family::kSharedACore || s.family == Family::kSharedBCore ||
                     s.family == Family::kJdFull || s.family == Family::kJdDiag;
  std::vector<Precision> out;
  for (const auto& body : menu) {
    for (const auto& head : menu) {
      Precision p{body, head, std::nullopt};
      if (cores) p.cores = shares_b(s.family) ? body : head;
      out.push_back(p);
    }
  }
  return out;
}

std::vector<CandidateSpec> with_precisions(const std::vector<CandidateSpec>& specs) {
  std::vector<CandidateSpec> out;
  for (const CandidateSpec& c : specs) {
    for (const Precision& p : candidate_precisions(c.spec)) out.push_back({c.spec, p.all_float() ? c.key : c.key + "/" + p.key(), p});
  }
  return out;
}

}  // namespace hydraopt
