// Our parallelism is OpenMP across modules, tasks and batches; the BLAS
// behind LAPACKE (OpenBLAS) must then run on the calling thread only, or its
// own thread pool would oversubscribe the cores (and its idle workers spin).
//
// OpenBLAS also picks its kernels from the CPU it finds when it loads, and
// Debian 12's 0.3.21 does not know recent Xeons (Sapphire and Emerald Rapids:
// family 6, models 143 and 207): it falls back to its generic SSE3
// ("Prescott") kernels, which made `merge --budget 0.4` on llama-1b slower
// (medians of 3: 57.3 s against 40.0 s; paired ratio 0.75). Its choice can only be
// changed before it loads, by OPENBLAS_CORETYPE in the environment.
#pragma once

#include <string>

namespace hydraopt::util {

/// Makes OpenBLAS single-threaded for the rest of the process and stops its
/// idle worker threads (idempotent, thread-safe; a no-op when built without
/// OpenBLAS). Call it early: the workers spin from the moment OpenBLAS loads.
void single_threaded_blas();

/// The OpenBLAS kernel set this CPU runs ("SkylakeX" with AVX-512 F/BW/DQ/VL,
/// "Haswell" with AVX2 + FMA, "Sandybridge" with AVX) when OpenBLAS fell back
/// to its generic "Prescott" kernels and OPENBLAS_CORETYPE is not set; empty
/// otherwise, and in builds without OpenBLAS.
std::string blas_core_for_this_cpu();

/// When blas_core_for_this_cpu() names one, sets OPENBLAS_CORETYPE to it and
/// re-executes the program (/proc/self/exe with `argv`); after that the
/// variable is set, so it happens at most once. Returns when there is
/// nothing to do or the exec fails. Only before threads, MPI or open output.
void reexec_with_the_cpus_blas_kernels(char** argv);

}  // namespace hydraopt::util
