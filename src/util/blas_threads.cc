#include "util/blas_threads.h"

#ifdef EIGEN_USE_BLAS
extern "C" {
int openblas_get_num_threads(void);
void openblas_set_num_threads(int);
}
#endif

namespace hydraopt::util {

#ifdef EIGEN_USE_BLAS
ScopedBlasThreads::ScopedBlasThreads(int n) : previous_(openblas_get_num_threads()) {
  openblas_set_num_threads(n);
}
ScopedBlasThreads::~ScopedBlasThreads() { openblas_set_num_threads(previous_); }
#else
ScopedBlasThreads::ScopedBlasThreads(int) {}
ScopedBlasThreads::~ScopedBlasThreads() = default;
#endif

}  // namespace hydraopt::util
