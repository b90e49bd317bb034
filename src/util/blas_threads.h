// Keeps BLAS single-threaded while our own OpenMP threads run, so the two
// thread pools never oversubscribe the cores.
#pragma once

namespace hydraopt::util {

class ScopedBlasThreads {
 public:
  explicit ScopedBlasThreads(int n);
  ~ScopedBlasThreads();
  ScopedBlasThreads(const ScopedBlasThreads&) = delete;
  ScopedBlasThreads& operator=(const ScopedBlasThreads&) = delete;

 private:
  int previous_ = 1;
};

}  // namespace hydraopt::util
