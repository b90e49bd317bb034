#include "core/storage.h"

#include <algorithm>
#include <utility>

namespace hydraopt {

namespace {

const std::optional<QuantFormat>& format_of(const Precision& p, Role r) {
  switch (r) {
    case Role::kHeads: return p.heads;
    case Role::kBodies: return p.bodies;
    case Role::kCores: break;
  }
  return p.cores;
}

// "b4s32": bits, sym/asym, group.
std::string short_name(const QuantFormat& f) {
  return std::to_string(f.bits) + (f.symmetric ? "s" : "a") + std::to_string(f.group);
}

}  // namespace

const char* role_name(Role r) {
  switch (r) {
    case Role::kHeads: return "head";
    case Role::kBodies: return "body";
    case Role::kCores: return "core";
  }
  return "";
}

std::optional<Role> role_named(std::string_view name) {
  for (Role r : {Role::kHeads, Role::kBodies, Role::kCores}) {
    if (name == role_name(r)) return r;
  }
  return std::nullopt;
}

std::string Precision::label() const {
  if (all_float()) return "float";
  std::string out;
  auto add = [&](const char* role, const std::optional<QuantFormat>& f) {
    if (!f) return;
    if (!out.empty()) out += ", ";
    out += std::string(role) + " " + f->name();
  };
  add("bodies", bodies);
  add("heads", heads);
  add("cores", cores);
  return out;
}

std::string Precision::key() const {
  std::string out;
  auto add = [&](const char* role, const std::optional<QuantFormat>& f) {
    if (!f) return;
    if (!out.empty()) out += ".";
    out += role + short_name(*f);
  };
  add("b", bodies);
  add("h", heads);
  add("c", cores);
  return out;
}

// Listed as for the A side shared (in' = in, out' = out), then, for the
// families that share B, mirrored: the transposed problem's heads are the
// physical bodies and its cores are transposed.
std::vector<StoredShape> spec_matrices(const StructureSpec& s, const ModuleShape& m) {
  const bool swap = shares_b(s.family);
  const int64_t in = swap ? m.out : m.in, out = swap ? m.in : m.out;
  const int64_t n = static_cast<int64_t>(m.ranks.size()), k = s.rank, r = m.max_rank();
  const int64_t g = group_count(s.groups, m.ranks.size());
  std::vector<StoredShape> v;
  auto add = [&](Role role, int64_t rows, int64_t cols, int64_t count) {
    if (count > 0 && rows > 0 && cols > 0) v.push_back({role, rows, cols, count});
  };
  switch (s.family) {
    case Family::kExact:
      for (int64_t ri : m.ranks) {
        add(Role::kHeads, out, ri, 1);
        add(Role::kBodies, ri, in, 1);
      }
      break;
    case Family::kMerged:
      add(Role::kHeads, out, k, 1);
      add(Role::kBodies, k, in, 1);
      break;
    case Family::kSharedA:
    case Family::kSharedB:
      add(Role::kBodies, k, in, 1);
      add(Role::kHeads, out, k, g);
      break;
    case Family::kSharedACore:
    case Family::kSharedBCore:
      add(Role::kBodies, k, in, 1);
      if (g == n) {
        for (int64_t ri : m.ranks) {
          add(Role::kHeads, out, ri, 1);
          add(Role::kCores, ri, k, 1);
        }
      } else {
        add(Role::kHeads, out, r, g);
        add(Role::kCores, r, k, n);
      }
      break;
    case Family::kMultiA:
    case Family::kMultiB:
      add(Role::kBodies, k, in, g);
      add(Role::kHeads, out, k, n);
      break;
    case Family::kJdFull:
      add(Role::kHeads, out, k, 1);
      add(Role::kBodies, k, in, 1);
      add(Role::kCores, k, k, n);
      break;
    case Family::kJdDiag:
      add(Role::kHeads, out, k, 1);
      add(Role::kBodies, k, in, 1);
      add(Role::kCores, k, 1, n);
      break;
    case Family::kAvgA:
      add(Role::kBodies, r, in, 1);
      add(Role::kHeads, out, r, n);
      break;
  }
  if (swap) {
    for (auto& x : v) {
      if (x.role == Role::kHeads) x.role = Role::kBodies;
      else if (x.role == Role::kBodies) x.role = Role::kHeads;
      std::swap(x.rows, x.cols);
    }
  }
  return v;
}

int64_t matrix_bytes(int64_t rows, int64_t cols, const std::optional<QuantFormat>& f, DType dtype) {
  if (f) return quant_bytes(rows, cols, *f);
  return rows * cols * static_cast<int64_t>(dtype_size(dtype));
}

int64_t spec_bytes(const StructureSpec& s, const ModuleShape& m, const Precision& p, DType dtype) {
  int64_t bytes = 0;
  for (const StoredShape& x : spec_matrices(s, m)) bytes += x.count * matrix_bytes(x.rows, x.cols, format_of(p, x.role), dtype);
  return bytes;
}

int64_t fit_bytes(const ModuleFit& f, const Precision& p, DType dtype) {
  int64_t bytes = 0;
  for (const auto& h : f.heads) bytes += matrix_bytes(h.rows(), h.cols(), p.heads, dtype);
  for (const auto& b : f.bodies) bytes += matrix_bytes(b.rows(), b.cols(), p.bodies, dtype);
  for (const auto& c : f.cores) bytes += matrix_bytes(c.rows(), c.cols(), p.cores, dtype);
  return bytes;
}

}  // namespace hydraopt
