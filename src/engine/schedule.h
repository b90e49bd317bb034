// How a merge's work is spread: over MPI ranks (each rank fits its own
// modules, or scans its own tasks) and over threads within a rank.
#pragma once

#include <omp.h>

#include <exception>
#include <functional>
#include <mutex>
#include <vector>

#include "dist/dist.h"
#include "plan/registry.h"
#include "util/blas_threads.h"
#include "util/parallel.h"

namespace hydraopt::engine {

/// Runs body(i) for the items `items` (ascending: this rank's) on `threads`
/// threads, BLAS single-threaded: across items (kAcross) or inside one item
/// at a time (kInside, util::parallel_for); then, across ranks, rethrows
/// the failure of the lowest item (dist::check).
template <typename Body>
void for_each_item(const std::vector<size_t>& items, int threads, const std::function<void(size_t, size_t)>& progress,
                   Body&& body, Spread spread = Spread::kAcross) {
  util::single_threaded_blas();
  const size_t count = items.size();
  std::vector<std::exception_ptr> errors(count);
  std::mutex mu;
  size_t done = 0;
  const util::InnerThreads inner(spread == Spread::kInside ? threads : 1);
#pragma omp parallel for num_threads(spread == Spread::kInside ? 1 : threads) schedule(dynamic)
  for (size_t k = 0; k < count; ++k) {
    try {
      body(items[k]);
    } catch (...) {
      errors[k] = std::current_exception();
    }
    if (progress) {
      std::lock_guard<std::mutex> lock(mu);
      progress(++done, count);
    }
  }
  for (size_t k = 0; k < count; ++k) {
    if (errors[k]) return dist::check(errors[k], static_cast<long>(items[k]));
  }
  dist::check(nullptr);
}

/// The indices i < count with i % dist::size() == dist::rank().
inline std::vector<size_t> my_share(size_t count) {
  std::vector<size_t> out;
  for (size_t i = static_cast<size_t>(dist::rank()); i < count; i += static_cast<size_t>(dist::size())) out.push_back(i);
  return out;
}

}  // namespace hydraopt::engine
