// Wire format, per rank: for each of its modules, the module index, the
// entry count, then each entry's spec (family, rank, groups), key, stored
// numbers, weighted error, per-task squared errors, ALS iterations,
// whether it was measured or predicted, its precision (per role: 0 for the
// float dtype, else bits, group and symmetry) and its bytes
// (util/wire.h encodings).
#include "engine/exchange.h"

#include "dist/dist.h"
#include "util/wire.h"

namespace hydraopt::engine {
namespace {

void put_format(util::WireWriter& put, const std::optional<QuantFormat>& f) {
  put.put<int32_t>(f ? f->bits : 0);
  if (!f) return;
  put.put<int32_t>(f->group);
  put.put<uint8_t>(f->symmetric);
}

std::optional<QuantFormat> get_format(util::WireReader& get) {
  const int32_t bits = get.get<int32_t>();
  if (bits == 0) return std::nullopt;
  QuantFormat f;
  f.bits = bits;
  f.group = get.get<int32_t>();
  f.symmetric = get.get<uint8_t>() != 0;
  return f;
}

}  // namespace

void share_table(EvalTable& table, const std::vector<size_t>& mine) {
  if (dist::size() == 1) return;
  std::string bytes;
  util::WireWriter put(bytes);
  for (size_t m : mine) {
    put.put<uint64_t>(m);
    put.put<uint64_t>(table[m].size());
    for (const Evaluated& e : table[m]) {
      put.put<int32_t>(static_cast<int32_t>(e.spec.family));
      put.put<int64_t>(e.spec.rank);
      put.put<int32_t>(e.spec.groups);
      put.put(e.key);
      put.put<int64_t>(e.params);
      put.put<double>(e.error);
      put.put(e.task_err2);
      put.put(e.task_frob2);
      put.put<int32_t>(e.max_iters);
      put.put<uint8_t>(e.measured);
      put_format(put, e.precision.bodies);
      put_format(put, e.precision.heads);
      put_format(put, e.precision.cores);
      put.put<int64_t>(e.bytes);
    }
  }
  const auto all = dist::allgather(bytes);
  for (size_t r = 0; r < all.size(); ++r) {
    if (static_cast<int>(r) == dist::rank()) continue;
    util::WireReader get(all[r]);
    while (!get.done()) {
      auto& list = table.at(get.get<uint64_t>());
      for (uint64_t n = get.get<uint64_t>(); n > 0; --n) {
        Evaluated e;
        e.spec.family = static_cast<Family>(get.get<int32_t>());
        e.spec.rank = get.get<int64_t>();
        e.spec.groups = get.get<int32_t>();
        e.key = get.get_string();
        e.params = get.get<int64_t>();
        e.error = get.get<double>();
        e.task_err2 = get.get_vector<double>();
        e.task_frob2 = get.get_vector<double>();
        e.max_iters = get.get<int32_t>();
        e.measured = get.get<uint8_t>() != 0;
        e.precision.bodies = get_format(get);
        e.precision.heads = get_format(get);
        e.precision.cores = get_format(get);
        e.bytes = get.get<int64_t>();
        list.push_back(std::move(e));
      }
    }
  }
}

}  // namespace hydraopt::engine
