// The collectives the merge pipeline uses across ranks (see
// hydraopt/dist.h). Two implementations: mpi.cc (HYDRAOPT_WITH_MPI) and
// serial.cc (one rank); callers never need to know which one is built.
// Only the calling (main) thread may use them, never inside an OpenMP region.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "hydraopt/dist.h"

namespace hydraopt::dist {

/// Ranks on this node (1 without MPI), to share the node's cores.
int local_size();

/// Sums v element-wise over all ranks, in place on every rank. Exact where
/// each element is non-zero on at most one rank.
void allreduce_sum(std::vector<double>& v);

/// Every rank's `mine`, indexed by rank, on every rank.
std::vector<std::string> allgather(const std::string& mine);

/// Moves items to rank 0 one at a time, in index order: for every item i
/// with owner[i] != 0, rank owner[i] sends produce(i) and rank 0 passes it
/// to consume(i, bytes). Only one item is in flight per rank, so memory
/// stays bounded. A failure in produce or consume does not stop the
/// exchange (failed items travel as markers); it is check()ed at the end.
void stream_to_root(const std::vector<int>& owner, const std::function<std::string(size_t)>& produce,
                    const std::function<void(size_t, std::string&)>& consume);

/// Assigns items of the given costs to `ranks` ranks (longest first, equal
/// costs in a fixed scrambled order, each to the least loaded rank, ties to
/// the lower rank): deterministic, so every rank computes the same.
std::vector<int> partition(const std::vector<double>& costs, int ranks);

}  // namespace hydraopt::dist
