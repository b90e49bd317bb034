#include "util/blas_threads.h"

#include <mutex>

#ifdef EIGEN_USE_LAPACKE
extern "C" void openblas_set_num_threads(int);
// Exported by OpenBLAS's threaded builds (its fork handler uses it); weak, as
// the serial build (libopenblas0-serial) has no threads and no such symbol.
extern "C" int blas_thread_shutdown_(void) __attribute__((weak));
#endif

namespace hydraopt::util {

void single_threaded_blas() {
#ifdef EIGEN_USE_LAPACKE
  static std::once_flag once;
  std::call_once(once, [] {
    openblas_set_num_threads(1);
    // OpenBLAS starts its worker threads when it is loaded, and they spin
    // (sched_yield) for about 0.1 s before sleeping: on a 2-core machine,
    // half the cores for the first 0.1 s of a merge. Stop them; OpenBLAS
    // starts them again if ever asked for more threads.
    if (blas_thread_shutdown_) blas_thread_shutdown_();
  });
#endif
}

}  // namespace hydraopt::util
