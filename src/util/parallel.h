// Loops inside one module's work (over tasks, tensors, row blocks).
//
// A merge spreads its threads either across modules (the planner: many
// candidates per module; the streamed hydra point while memory allows) or
// inside one module at a time (other work with one structure per module),
// which holds one module's factors in memory instead of one per thread.
// `InnerThreads` sets, for the calling thread, how many threads parallel_for may use; a
// parallel_for already running inside a parallel region (modules in
// parallel) runs serially. Every index is computed by exactly one thread
// and writes its own outputs, so results never depend on the thread count.
#pragma once

#include <omp.h>

#include <cstddef>
#include <exception>
#include <vector>

namespace hydraopt::util {

namespace detail {
inline thread_local int inner_threads = 1;
}

/// While alive, parallel_for on this thread uses up to `threads` threads.
class InnerThreads {
 public:
  explicit InnerThreads(int threads) : saved_(detail::inner_threads) { detail::inner_threads = threads; }
  ~InnerThreads() { detail::inner_threads = saved_; }
  InnerThreads(const InnerThreads&) = delete;
  InnerThreads& operator=(const InnerThreads&) = delete;

 private:
  int saved_;
};

/// body(i) for i in [0, n); rethrows the exception of the lowest failing i.
template <typename Body>
void parallel_for(size_t n, Body&& body) {
  const int threads = detail::inner_threads;
  if (threads <= 1 || n <= 1 || omp_in_parallel()) {
    for (size_t i = 0; i < n; ++i) body(i);
    return;
  }
  std::vector<std::exception_ptr> errors(n);
#pragma omp parallel for num_threads(threads) schedule(dynamic)
  for (size_t i = 0; i < n; ++i) {
    try {
      body(i);
    } catch (...) {
      errors[i] = std::current_exception();
    }
  }
  for (auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

}  // namespace hydraopt::util
