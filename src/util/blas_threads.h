// Our parallelism is OpenMP across modules, tasks and batches; the BLAS
// behind LAPACKE (OpenBLAS) must then run on the calling thread only, or its
// own thread pool would oversubscribe the cores (and its idle workers spin).
#pragma once

namespace hydraopt::util {

/// Makes OpenBLAS single-threaded for the rest of the process and stops its
/// idle worker threads (idempotent, thread-safe; a no-op when built without
/// OpenBLAS). Call it early: the workers spin from the moment OpenBLAS loads.
void single_threaded_blas();

}  // namespace hydraopt::util
