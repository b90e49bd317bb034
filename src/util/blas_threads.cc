#include "util/blas_threads.h"

#include <strings.h>
#include <unistd.h>

#include <cstdlib>
#include <mutex>

#ifdef EIGEN_USE_LAPACKE
extern "C" void openblas_set_num_threads(int);
extern "C" char* openblas_get_corename(void);
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

std::string blas_core_for_this_cpu() {
#ifdef EIGEN_USE_LAPACKE
  if (std::getenv("OPENBLAS_CORETYPE")) return {};  // the user's choice
  const char* core = openblas_get_corename();
  if (!core || strcasecmp(core, "prescott") != 0) return {};
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
    return "SkylakeX";
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
  if (__builtin_cpu_supports("avx")) return "Sandybridge";
#endif
  return {};
}

void reexec_with_the_cpus_blas_kernels(char** argv) {
  const std::string core = blas_core_for_this_cpu();
  if (core.empty()) return;
  setenv("OPENBLAS_CORETYPE", core.c_str(), 1);
  execv("/proc/self/exe", argv);
  unsetenv("OPENBLAS_CORETYPE");  // exec failed: carry on with the kernels we have
}

}  // namespace hydraopt::util
