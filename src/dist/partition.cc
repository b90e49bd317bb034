#include <algorithm>
#include <numeric>

#include "dist/dist.h"

namespace hydraopt::dist {

std::vector<int> partition(const std::vector<double>& costs, int ranks) {
  std::vector<int> owner(costs.size(), 0);
  if (ranks <= 1) return owner;
  std::vector<size_t> order(costs.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return costs[a] > costs[b]; });
  std::vector<double> load(static_cast<size_t>(ranks), 0.0);
  for (size_t i : order) {
    const auto least = std::min_element(load.begin(), load.end());  // first of equals
    owner[i] = static_cast<int>(least - load.begin());
    *least += costs[i];
  }
  return owner;
}

}  // namespace hydraopt::dist
