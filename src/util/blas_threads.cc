#include "util/blas_threads.h"

#include <mutex>

#ifdef EIGEN_USE_LAPACKE
extern "C" void openblas_set_num_threads(int);
#endif

namespace hydraopt::util {

void single_threaded_blas() {
#ifdef EIGEN_USE_LAPACKE
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
#endif
}

}  // namespace hydraopt::util
