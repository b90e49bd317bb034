// The rank layer as one process sees it (tests never start MPI), and the
// module partition every rank computes alike.
#include <gtest/gtest.h>

#include <algorithm>
#include <stdexcept>

#include "dist/dist.h"

namespace hydraopt::dist {
namespace {

TEST(Dist, OneProcessIsRankZeroOfOne) {
  EXPECT_EQ(rank(), 0);
  EXPECT_EQ(size(), 1);
  EXPECT_EQ(local_size(), 1);
  EXPECT_NO_THROW(check(nullptr));
  EXPECT_THROW(check(std::make_exception_ptr(std::runtime_error("x")), 3), std::runtime_error);
  EXPECT_THROW(checked([] { throw Error("bad"); }), Error);
  EXPECT_EQ(first_failed(false), -1);
  EXPECT_EQ(first_failed(true), 0);
  std::vector<double> v{1.5, -2};
  allreduce_sum(v);
  EXPECT_EQ(v, (std::vector<double>{1.5, -2}));
  EXPECT_EQ(allgather("abc"), std::vector<std::string>{"abc"});
}

TEST(Dist, PartitionIsBalancedAndDeterministic) {
  EXPECT_EQ(partition({5, 1, 1, 3}, 1), (std::vector<int>{0, 0, 0, 0}));
  EXPECT_EQ(partition({5, 1, 1, 3}, 2), (std::vector<int>{0, 1, 1, 1}));
  // Equal costs: spread in a fixed order, two on one rank.
  const auto equal = partition({2, 2, 2, 2}, 3);
  EXPECT_EQ(equal, partition({2, 2, 2, 2}, 3));
  EXPECT_EQ(std::count(equal.begin(), equal.end(), 0), 2);
  EXPECT_EQ(std::count(equal.begin(), equal.end(), 1), 1);
  EXPECT_EQ(std::count(equal.begin(), equal.end(), 2), 1);
  EXPECT_EQ(partition({1}, 4), (std::vector<int>{0}));
  std::vector<double> costs;
  for (int i = 0; i < 100; ++i) costs.push_back(1 + (i * 37) % 11);
  auto owner = partition(costs, 3);
  std::vector<double> load(3, 0);
  for (size_t i = 0; i < costs.size(); ++i) load[static_cast<size_t>(owner[i])] += costs[i];
  EXPECT_LE(*std::max_element(load.begin(), load.end()) - *std::min_element(load.begin(), load.end()), 11);
}

}  // namespace
}  // namespace hydraopt::dist
