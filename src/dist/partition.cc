#include <algorithm>
#include <cstdint>
#include <numeric>

#include "dist/dist.h"
#include "util/random.h"

namespace hydraopt::dist {

std::vector<int> partition(const std::vector<double>& costs, int ranks) {
  std::vector<int> owner(costs.size(), 0);
  if (ranks <= 1) return owner;
  std::vector<size_t> order(costs.size());
  std::iota(order.begin(), order.end(), size_t{0});
  // Equal costs in a scrambled (but fixed) order: modules of one shape
  // (q_proj and o_proj, say) then spread over the ranks instead of
  // alternating by type, as their real costs differ with the data. The
  // order is that of a hash of the index, SplitMix64's.
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (costs[a] != costs[b]) return costs[a] > costs[b];
    const uint64_t ha = util::splitmix_hash(a), hb = util::splitmix_hash(b);
    return ha != hb ? ha < hb : a < b;
  });
  std::vector<double> load(static_cast<size_t>(ranks), 0.0);
  for (size_t i : order) {
    const auto least = std::min_element(load.begin(), load.end());  // first of equals
    owner[i] = static_cast<int>(least - load.begin());
    *least += costs[i];
  }
  return owner;
}

}  // namespace hydraopt::dist
