// The module partition every rank computes alike (src/dist/partition.cc),
// and the one-rank collectives (serial.cc) held to the contracts the merge
// engine relies on (src/engine/). Tests never start MPI; the MPI
// path is tests/mpi_merge_test.sh.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <stdexcept>

#include "dist/dist.h"

namespace hydraopt::dist {
namespace {

std::vector<double> loads(const std::vector<double>& costs, const std::vector<int>& owner,
                          int ranks) {
  std::vector<double> load(static_cast<size_t>(ranks), 0.0);
  for (size_t i = 0; i < costs.size(); ++i) load[static_cast<size_t>(owner[i])] += costs[i];
  return load;
}

double max_load(const std::vector<double>& costs, const std::vector<int>& owner, int ranks) {
  auto l = loads(costs, owner, ranks);
  return *std::max_element(l.begin(), l.end());
}

// The best possible largest load, by trying every assignment (small inputs).
double optimal_max_load(const std::vector<double>& costs, int ranks) {
  std::vector<int> owner(costs.size(), 0);
  double best = INFINITY;
  while (true) {
    best = std::min(best, max_load(costs, owner, ranks));
    size_t i = 0;
    while (i < owner.size() && ++owner[i] == ranks) owner[i++] = 0;
    if (i == owner.size()) return best;
  }
}

// Costs like a model's modules: a few sizes, repeated, in layer order.
std::vector<double> module_costs(size_t n, std::mt19937_64& g) {
  const double sizes[] = {4096 * 16.0, 1024 * 16.0, 11008 * 16.0, 4096 * 8.0};
  std::vector<double> c;
  for (size_t i = 0; i < n; ++i)
    c.push_back(g() % 3 == 0 ? sizes[i % 4] : 1 + static_cast<double>(g() % 1000));
  return c;
}

TEST(Dist, PartitionAssignsEveryItemToOneExistingRank) {
  std::mt19937_64 g(1);
  for (size_t n : {0, 1, 2, 3, 7, 30, 200}) {
    for (int ranks : {1, 2, 3, 5, 8, 64, 300}) {
      const auto costs = module_costs(n, g);
      const auto owner = partition(costs, ranks);
      ASSERT_EQ(owner.size(), n) << n << " items, " << ranks << " ranks";
      for (int o : owner) ASSERT_TRUE(o >= 0 && o < ranks) << o << " of " << ranks;
      if (ranks == 1) EXPECT_EQ(owner, std::vector<int>(n, 0));
      // More ranks than items: every item has a rank of its own, the lowest ones.
      if (static_cast<size_t>(ranks) >= n) {
        std::vector<int> sorted = owner;
        std::sort(sorted.begin(), sorted.end());
        std::vector<int> first(n);
        std::iota(first.begin(), first.end(), 0);
        EXPECT_EQ(sorted, first) << n << " items, " << ranks << " ranks";
      }
    }
  }
}

TEST(Dist, PartitionIsBalanced) {
  // Longest first, each to the least loaded rank: within 4/3 - 1/(3 ranks)
  // of the best possible largest load (Graham's bound for LPT), and no two
  // ranks apart by more than the largest item.
  std::mt19937_64 g(2);
  for (int trial = 0; trial < 60; ++trial) {
    const int ranks = 2 + trial % 2;
    std::vector<double> costs;
    for (size_t i = 0; i < 6 + static_cast<size_t>(trial % 3); ++i)
      costs.push_back(1 + static_cast<double>(g() % 20));
    const auto owner = partition(costs, ranks);
    const double opt = optimal_max_load(costs, ranks);
    EXPECT_LE(max_load(costs, owner, ranks), (4.0 / 3 - 1.0 / (3 * ranks)) * opt + 1e-9) << trial;
  }
  for (int ranks : {2, 3, 7}) {
    const auto costs = module_costs(500, g);
    const auto l = loads(costs, partition(costs, ranks), ranks);
    EXPECT_LE(*std::max_element(l.begin(), l.end()) - *std::min_element(l.begin(), l.end()),
              *std::max_element(costs.begin(), costs.end()))
        << ranks;
  }
  // Longest first: 2 | 1 1, where taking items as given would make 1 2 | 1.
  EXPECT_EQ(max_load({1, 1, 2}, partition({1, 1, 2}, 2), 2), 2);
}

TEST(Dist, PartitionSpreadsEqualCostsOverTheRanks) {
  // Equal costs in a scrambled order, not in turn: modules of two kinds
  // alternating (q_proj, o_proj, ...) with equal sizes do not all land
  // by kind on one rank.
  const std::vector<double> costs(64, 5.0);
  const auto owner = partition(costs, 2);
  int even_on_0 = 0;
  for (size_t i = 0; i < costs.size(); i += 2) even_on_0 += owner[i] == 0;
  EXPECT_GT(even_on_0, 8);
  EXPECT_LT(even_on_0, 24);
  EXPECT_EQ(std::count(owner.begin(), owner.end(), 0), 32);  // still 32 each
}

TEST(Dist, PartitionIsDeterministic) {
  // Every rank computes the partition on its own and must get the same,
  // run after run: pinned here (a change of the assignment is a change of
  // which rank fits which module, and should be deliberate).
  EXPECT_EQ(partition({5, 1, 1, 3}, 2), (std::vector<int>{0, 1, 1, 1}));
  EXPECT_EQ(partition({2, 2, 2, 2}, 3), (std::vector<int>{0, 1, 2, 0}));
  EXPECT_EQ(partition({3, 3, 3, 3, 3, 3, 1, 1}, 4), (std::vector<int>{1, 3, 0, 0, 2, 1, 3, 2}));
  std::mt19937_64 g(3);
  const auto costs = module_costs(300, g);
  const auto once = partition(costs, 5);
  std::vector<double> copy = costs;
  EXPECT_EQ(partition(copy, 5), once);
}

// What the engine relies on from one rank.
TEST(Dist, OneProcessIsRankZeroOfOne) {
  EXPECT_FALSE(built_with_mpi());
  EXPECT_EQ(rank(), 0);
  EXPECT_EQ(size(), 1);
  EXPECT_EQ(local_size(), 1);  // threads per rank = all cores
  EXPECT_EQ(first_failed(false), -1);
  EXPECT_EQ(first_failed(true), 0);
  // Sums and gathers over one rank: the rank's own values, in place.
  std::vector<double> v{1.5, -2, 0};
  allreduce_sum(v);
  EXPECT_EQ(v, (std::vector<double>{1.5, -2, 0}));
  EXPECT_EQ(allgather("abc"), std::vector<std::string>{"abc"});
  EXPECT_EQ(allgather(std::string("a\0b", 3)), std::vector<std::string>{std::string("a\0b", 3)});
}

TEST(Dist, CheckRethrowsTheFailureItself) {
  // for_modules passes the lowest failing module's exception: a single
  // process must report exactly it (type, file and reason), never PeerFailed.
  EXPECT_NO_THROW(check(nullptr));
  EXPECT_NO_THROW(check(nullptr, 7));
  try {
    check(std::make_exception_ptr(Error("f.safetensors", "t", "bad")), 3);
    ADD_FAILURE() << "check() returned";
  } catch (const PeerFailed&) {
    ADD_FAILURE() << "PeerFailed on one rank";
  } catch (const Error& e) {
    EXPECT_EQ(e.file(), "f.safetensors");
    EXPECT_EQ(e.tensor(), "t");
    EXPECT_EQ(e.reason(), "bad");
  }
  EXPECT_THROW(check(std::make_exception_ptr(std::logic_error("x"))), std::logic_error);
  // checked() runs its body once, and fails exactly when it fails.
  int calls = 0;
  EXPECT_NO_THROW(checked([&] { ++calls; }));
  EXPECT_EQ(calls, 1);
  EXPECT_THROW(checked([&] {
                 ++calls;
                 throw Error("bad");
               }),
               Error);
  EXPECT_EQ(calls, 2);
}

TEST(Dist, StreamToRootOnOneRankMovesNothing) {
  // One rank owns every module (partition(costs, size())) and has written
  // them itself: nothing is produced or consumed.
  const std::vector<int> owner = partition({4, 2, 9}, size());
  int produced = 0, consumed = 0;
  stream_to_root(
      owner, [&](size_t) { return std::string(++produced, 'x'); },
      [&](size_t, std::string&) { ++consumed; });
  EXPECT_EQ(produced + consumed, 0);
  // An owner that is not a rank is a bug in the caller, not a silent skip.
  EXPECT_THROW(stream_to_root(
                   {0, 1}, [](size_t) { return std::string(); }, [](size_t, std::string&) {}),
               std::logic_error);
}

}  // namespace
}  // namespace hydraopt::dist
