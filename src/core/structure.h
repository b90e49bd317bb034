// The storage structures a module can take, as specs: which family, which
// shared rank, how many groups, and what that stores. How each is fitted
// is methods/structures.h; the families are described there.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace hydraopt {

enum class Family {
  kExact,
  kMerged,
  kSharedA,
  kSharedACore,
  kMultiA,
  kSharedB,
  kSharedBCore,
  kMultiB,
  kJdFull,
  kJdDiag,
  kAvgA,
};

const char* family_name(Family f);
std::optional<Family> family_from_name(const std::string& s);
/// The family with A and B roles swapped (itself for symmetric ones).
Family mirror(Family f);
/// Families whose shared part is on the B side.
bool shares_b(Family f);

struct StructureSpec {
  Family family = Family::kExact;
  int64_t rank = 0;  ///< k (or k' for +core); unused for exact and avg-A
  int groups = 0;    ///< head groups (shared-*), body groups (multi-*); 0 = one per task

  std::string label() const;
  bool operator==(const StructureSpec&) const = default;
};

/// Shape facts that determine a structure's storage.
struct ModuleShape {
  int64_t in = 0, out = 0;
  std::vector<int64_t> ranks;  ///< per task (0 = task lacks the module)
  int64_t max_rank() const;
  int64_t rank_sum() const;
};

/// Stored numbers of `s` on a module of this shape.
int64_t spec_params(const StructureSpec& s, const ModuleShape& m);
/// Whether `s` is meaningful here (ranks within what the data can fill).
bool spec_valid(const StructureSpec& s, const ModuleShape& m);
/// Whether fitting `s` on `tasks` tasks iterates from its closed-form start
/// (ALS or HOOI, bounded by FitOptions::max_iters), so that a fit with
/// max_iters = 0 is only an upper bound on its error.
bool spec_refinable(const StructureSpec& s, size_t tasks);

/// Groups a structure with `groups` (0 = one per task) has over `tasks` tasks.
int group_count(int groups, size_t tasks);

/// Whether `s` on `tasks` tasks is shared-A with a head per task (the hydra
/// point's structure), which fit_shared_heads fits.
bool per_task_heads(const StructureSpec& s, size_t tasks);

}  // namespace hydraopt
