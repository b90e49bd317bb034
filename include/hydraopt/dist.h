// Running merge() on several processes (MPI ranks).
//
// In a build with -DHYDRAOPT_MPI=ON, a program started by mpirun creates an
// Environment (MPI_Init_thread, MPI_THREAD_FUNNELED: only the thread that
// calls merge() talks to MPI) and calls merge() on every rank with the same
// arguments: each rank fits its share of the modules and rank 0 writes the
// bundle. Without MPI (the default build, or MPI not initialised) there is
// one rank and everything below is trivial.
//
// check(), checked() and first_failed() are collective: all ranks call
// them, in the same order. A step that may fail on some ranks and not others
// (reading a file, a module's fit) is followed by check(), so that no rank
// waits for a peer that has given up.
#pragma once

#include <exception>
#include <string>

#include "hydraopt/error.h"

namespace hydraopt::dist {

/// Initialises MPI in MPI builds and finalises it on destruction. In every
/// build it also makes the BLAS behind LAPACK single-threaded at once (as
/// merge() would later), which stops OpenBLAS's idle workers spinning
/// through the program's first 0.1 s. One per program, created first thing
/// in main(), before any thread, file or MPI call of the program's own:
/// where OpenBLAS fell back to its generic kernels on a CPU it does not
/// know (blas_core_for_this_cpu()), it sets OPENBLAS_CORETYPE and
/// re-executes the program once with the same arguments. Setting
/// OPENBLAS_CORETYPE yourself (any value) keeps the process as started.
class Environment {
 public:
  Environment(int& argc, char**& argv);
  ~Environment();
  Environment(const Environment&) = delete;
  Environment& operator=(const Environment&) = delete;

 private:
  bool initialised_ = false;
};

/// The OpenBLAS kernel set this CPU can run ("SkylakeX", "Haswell" or
/// "Sandybridge") when OpenBLAS fell back to its generic SSE3 ("Prescott")
/// ones, as Debian 12's OpenBLAS 0.3.21 does on Sapphire and Emerald Rapids
/// Xeons, and OPENBLAS_CORETYPE is not set; empty otherwise.
std::string blas_core_for_this_cpu();

/// True when built with MPI support.
bool built_with_mpi();
/// This process's rank, 0..size()-1 (0 without MPI).
int rank();
/// Number of ranks (1 without MPI or when MPI is not initialised).
int size();

/// What a rank throws when another rank failed: that rank reports the
/// error, this one only stops (and is not worth printing).
class PeerFailed : public Error {
 public:
  PeerFailed() : Error("another MPI rank failed") {}
};

/// Collective. If `error` is set on any rank, exactly one failing rank
/// rethrows its error (the one with the lowest `key`, then the lowest rank)
/// and every other rank throws PeerFailed; otherwise returns normally.
/// Passing the lowest failing module index as `key` reports the error a
/// single process would.
void check(std::exception_ptr error, long key = 0);

/// Runs f() and then check()s its outcome.
template <typename F>
void checked(F&& f) {
  std::exception_ptr error;
  try {
    f();
  } catch (...) {
    error = std::current_exception();
  }
  check(error);
}

/// Collective, at the end of a program: the lowest rank whose `failed` is
/// true, or -1 if none (so that one rank prints the error, and every rank
/// exits with a failure).
int first_failed(bool failed);

}  // namespace hydraopt::dist
