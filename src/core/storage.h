// What a stored structure costs: the matrices it keeps, and their bytes in
// a precision (the bundle's float dtype, or group-wise integers per role).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/fit.h"
#include "core/quant.h"
#include "core/structure.h"

namespace hydraopt {

enum class Role { kHeads, kBodies, kCores };

/// A role's name in bundles and plan files: "head", "body", "core".
const char* role_name(Role r);
/// The role of such a name, or nullopt.
std::optional<Role> role_named(std::string_view name);

/// How each kind of stored matrix is kept: an integer format, or (nullopt)
/// the bundle's float dtype. Roles are physical: bodies are the A side
/// (k' x in), heads the B side (out x k), whichever side is shared.
struct Precision {
  std::optional<QuantFormat> bodies, heads, cores;

  bool all_float() const { return !bodies && !heads && !cores; }
  /// The format of role r.
  const std::optional<QuantFormat>& of(Role r) const { return r == Role::kHeads ? heads : r == Role::kBodies ? bodies : cores; }
  std::optional<QuantFormat>& of(Role r) { return r == Role::kHeads ? heads : r == Role::kBodies ? bodies : cores; }
  /// "float", or e.g. "bodies int4-g32-sym, heads int3-g32-sym".
  std::string label() const;
  /// "" for all float, else e.g. "b4s32.h3s32": part of a planner key.
  std::string key() const;
  bool operator==(const Precision&) const = default;
};

/// A structure with how its roles are stored: one module's entry in a plan.
struct PlanEntry {
  StructureSpec spec;
  Precision precision;
};

/// `count` stored matrices of rows x cols in one role.
struct StoredShape {
  Role role = Role::kHeads;
  int64_t rows = 0, cols = 0, count = 1;
};

/// The matrices `s` stores on a module of shape `m`, in their physical
/// orientation (heads out x k, bodies k' x in, cores k x k', a diagonal
/// core k x 1); their sizes sum to spec_params(s, m).
std::vector<StoredShape> spec_matrices(const StructureSpec& s, const ModuleShape& m);

/// Bytes of one rows x cols matrix: quant_bytes in `f`, else its numbers
/// times dtype_size(dtype).
int64_t matrix_bytes(int64_t rows, int64_t cols, const std::optional<QuantFormat>& f, DType dtype);

/// Bytes `s` stores on a module of shape `m` in precision `p`.
int64_t spec_bytes(const StructureSpec& s, const ModuleShape& m, const Precision& p, DType dtype);

/// Bytes of a fit's matrices in precision `p` (equal to spec_bytes for the
/// fit of a spec).
int64_t fit_bytes(const ModuleFit& f, const Precision& p, DType dtype);

}  // namespace hydraopt
