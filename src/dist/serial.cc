// One rank: the build without MPI.
#include <stdexcept>

#include "dist/dist.h"
#include "util/blas_threads.h"

namespace hydraopt::dist {

Environment::Environment(int&, char**& argv) {
  util::reexec_with_the_cpus_blas_kernels(argv);
  util::single_threaded_blas();
}
std::string blas_core_for_this_cpu() { return util::blas_core_for_this_cpu(); }
Environment::~Environment() = default;

bool built_with_mpi() { return false; }
int rank() { return 0; }
int size() { return 1; }
int local_size() { return 1; }

void check(std::exception_ptr error, long) {
  if (error) std::rethrow_exception(error);
}

int first_failed(bool failed) { return failed ? 0 : -1; }

void allreduce_sum(std::vector<double>&) {}

std::vector<std::string> allgather(const std::string& mine) { return {mine}; }

void stream_to_root(const std::vector<int>& owner, const std::function<std::string(size_t)>&,
                    const std::function<void(size_t, std::string&)>&) {
  for (int o : owner) {
    if (o != 0) throw std::logic_error("stream_to_root: an item owned by a rank that does not exist");
  }
}

}  // namespace hydraopt::dist
