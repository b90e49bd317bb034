// Several ranks: the build with -DHYDRAOPT_MPI=ON. Everything falls back to
// one rank when MPI is not initialised (tests, library users without
// mpirun). Only the thread that initialised MPI calls these functions.
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <optional>
#include <stdexcept>

#include "dist/dist.h"
#include "util/blas_threads.h"

namespace hydraopt::dist {

namespace {

constexpr int kStreamTag = 7001;
constexpr uint64_t kFailed = UINT64_MAX;    // header of a failed item
constexpr uint64_t kChunk = uint64_t{1} << 30;  // MPI counts are ints

int g_local_size = 0;  // ranks on this node, once known

bool active() {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  return init && !fin;
}

int node_ranks() {
  MPI_Comm local;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local);
  int n = 1;
  MPI_Comm_size(local, &n);
  MPI_Comm_free(&local);
  return n;
}

// A message of any length (or a failure marker, bytes == nullptr).
void send_message(int to, const std::string* bytes) {
  const uint64_t n = bytes ? bytes->size() : kFailed;
  MPI_Send(&n, 1, MPI_UINT64_T, to, kStreamTag, MPI_COMM_WORLD);
  if (!bytes) return;
  for (uint64_t at = 0; at < n; at += kChunk) {
    const int len = static_cast<int>(std::min(kChunk, n - at));
    MPI_Send(bytes->data() + at, len, MPI_BYTE, to, kStreamTag, MPI_COMM_WORLD);
  }
}

std::optional<std::string> recv_message(int from) {
  uint64_t n = 0;
  MPI_Recv(&n, 1, MPI_UINT64_T, from, kStreamTag, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  if (n == kFailed) return std::nullopt;
  std::string bytes(n, '\0');
  for (uint64_t at = 0; at < n; at += kChunk) {
    const int len = static_cast<int>(std::min(kChunk, n - at));
    MPI_Recv(bytes.data() + at, len, MPI_BYTE, from, kStreamTag, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  }
  return bytes;
}

}  // namespace

Environment::Environment(int& argc, char**& argv) {
  int init = 0;
  MPI_Initialized(&init);
  if (!init) util::reexec_with_the_cpus_blas_kernels(argv);  // never once MPI is up
  util::single_threaded_blas();
  if (init) return;  // the program's own MPI_Init came first
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  initialised_ = true;
  g_local_size = node_ranks();
}

std::string blas_core_for_this_cpu() { return util::blas_core_for_this_cpu(); }

Environment::~Environment() {
  if (initialised_ && active()) MPI_Finalize();
}

bool built_with_mpi() { return true; }

int rank() {
  if (!active()) return 0;
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

int size() {
  if (!active()) return 1;
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

int local_size() {
  if (!active()) return 1;
  if (g_local_size == 0) g_local_size = node_ranks();  // collective, first call only
  return g_local_size;
}

void check(std::exception_ptr error, long key) {
  if (size() == 1) {
    if (error) std::rethrow_exception(error);
    return;
  }
  struct {
    long key;
    int rank;
  } in{error ? std::min(key, LONG_MAX - 1) : LONG_MAX, rank()}, out{};
  MPI_Allreduce(&in, &out, 1, MPI_LONG_INT, MPI_MINLOC, MPI_COMM_WORLD);
  if (out.key == LONG_MAX) return;
  if (out.rank == in.rank) std::rethrow_exception(error);
  throw PeerFailed();
}

int first_failed(bool failed) {
  const int n = size();
  if (n == 1) return failed ? 0 : -1;
  int in = failed ? rank() : n, out = n;
  MPI_Allreduce(&in, &out, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return out == n ? -1 : out;
}

void allreduce_sum(std::vector<double>& v) {
  if (size() == 1) return;
  for (size_t at = 0; at < v.size(); at += kChunk / sizeof(double)) {
    const int len = static_cast<int>(std::min<size_t>(kChunk / sizeof(double), v.size() - at));
    MPI_Allreduce(MPI_IN_PLACE, v.data() + at, len, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  }
}

std::vector<std::string> allgather(const std::string& mine) {
  const int n = size();
  if (n == 1) return {mine};
  long long len = static_cast<long long>(mine.size());
  std::vector<long long> lens(static_cast<size_t>(n));
  MPI_Allgather(&len, 1, MPI_LONG_LONG, lens.data(), 1, MPI_LONG_LONG, MPI_COMM_WORLD);
  std::vector<int> counts(static_cast<size_t>(n)), displs(static_cast<size_t>(n));
  long long total = 0;
  for (int r = 0; r < n; ++r) {
    displs[static_cast<size_t>(r)] = static_cast<int>(total);
    counts[static_cast<size_t>(r)] = static_cast<int>(lens[static_cast<size_t>(r)]);
    total += lens[static_cast<size_t>(r)];
    if (total > INT_MAX) throw Error("allgather: more than 2 GB of results to exchange");  // same on every rank
  }
  std::string all(static_cast<size_t>(total), '\0');
  MPI_Allgatherv(mine.data(), static_cast<int>(len), MPI_BYTE, all.data(), counts.data(), displs.data(), MPI_BYTE,
                 MPI_COMM_WORLD);
  std::vector<std::string> out;
  for (int r = 0; r < n; ++r) {
    out.push_back(all.substr(static_cast<size_t>(displs[static_cast<size_t>(r)]),
                             static_cast<size_t>(counts[static_cast<size_t>(r)])));
  }
  return out;
}

void stream_to_root(const std::vector<int>& owner, const std::function<std::string(size_t)>& produce,
                    const std::function<void(size_t, std::string&)>& consume) {
  const int n = size(), me = rank();
  std::exception_ptr error;
  for (size_t i = 0; i < owner.size(); ++i) {
    const int from = owner[i];
    if (from < 0 || from >= n) throw std::logic_error("stream_to_root: an item owned by a rank that does not exist");
    if (from == 0) continue;
    if (me == from) {
      std::string bytes;
      if (!error) {
        try {
          bytes = produce(i);
        } catch (...) {
          error = std::current_exception();
        }
      }
      send_message(0, error ? nullptr : &bytes);
    } else if (me == 0) {
      std::optional<std::string> bytes = recv_message(from);
      if (bytes && !error) {
        try {
          consume(i, *bytes);
        } catch (...) {
          error = std::current_exception();
        }
      }
    }
  }
  check(error);
}

}  // namespace hydraopt::dist
