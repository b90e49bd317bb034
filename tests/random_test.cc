// util/random.h, the one generator, against SplitMix64's published outputs
// and against independent re-statements of the two sequences that results
// are pinned to: the keyed Stream (synth, range finders) and the dense
// randomized SVD's Gaussian start.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <numbers>

#include "util/random.h"

namespace hydraopt {
namespace {

constexpr uint64_t kGamma = 0x9e3779b97f4a7c15ULL;

uint64_t ref_finalize(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

TEST(Random, SplitMix64PublishedOutputs) {
  // Vigna's splitmix64.c from state 1234567 (the values other ports test).
  util::SplitMix64 g(1234567);
  for (uint64_t want : {6457827717110365317ULL, 3203168211198807973ULL, 9817491932198370423ULL,
                        4593380528125082431ULL, 16408922859458223821ULL}) {
    EXPECT_EQ(g.next(), want);
  }
}

TEST(Random, RandomAccessIsTheSequence) {
  for (uint64_t state : {0ULL, 1ULL, 0xdeadbeefULL, ~0ULL}) {
    util::SplitMix64 g(state);
    for (uint64_t j = 0; j < 100; ++j)
      ASSERT_EQ(util::splitmix_at(state, j), g.next()) << state << " " << j;
    EXPECT_EQ(util::splitmix_hash(state), ref_finalize(state + kGamma));
  }
  EXPECT_EQ(util::unit_double(~0ULL), 1.0 - 0x1.0p-53);
  EXPECT_EQ(util::unit_double(uint64_t{1} << 11), 0x1.0p-53);
}

// The keyed stream as it was first written (its mixing included the
// increment, and next() added it once more); synth's adapters and the
// range finders' starts depend on these exact bits.
struct OldStream {
  uint64_t state;
  static uint64_t mix(uint64_t z) { return ref_finalize(z + kGamma); }
  OldStream(uint64_t seed, uint64_t a, uint64_t b, uint64_t c)
      : state(mix(mix(mix(seed ^ kGamma) ^ a) ^ (b * 0xbf58476d1ce4e5b9ULL)) ^ c) {}
  uint64_t next() { return mix(state += kGamma); }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  double normal() {
    double u1 = uniform(), u2 = uniform();
    return std::sqrt(-2.0 * std::log1p(-u1)) * std::cos(6.283185307179586 * u2);
  }
};

TEST(Random, KeyedStreamKeepsItsBits) {
  for (uint64_t seed : {0ULL, 7ULL, 0x5ca1ab1eULL}) {
    util::Stream s(seed, 3, 512, 16);
    OldStream o(seed, 3, 512, 16);
    for (int i = 0; i < 200; ++i) {
      ASSERT_EQ(s.next(), o.next());
      ASSERT_EQ(s.uniform(), o.uniform());
      ASSERT_EQ(s.normal(), o.normal());
    }
    const Eigen::MatrixXd n = util::Stream(seed, 1, 2).normal(7, 5, 0.25);
    const Eigen::MatrixXd u = util::Stream(seed, 4).uniform(7, 5, 3.0);
    OldStream on(seed, 1, 2, 0), ou(seed, 4, 0, 0);
    for (Eigen::Index j = 0; j < n.size(); ++j) {
      ASSERT_EQ(n.data()[j], 0.25 * on.normal());
      ASSERT_EQ(u.data()[j], 3.0 * (2 * ou.uniform() - 1));
    }
  }
}

TEST(Random, DenseSvdStartKeepsItsBits) {
  // The randomized SVD's start as first written: from state finalize(seed),
  // u1 = 1 - uniform in (0, 1], Box-Muller with log(u1).
  for (uint64_t seed : {0ULL, 42ULL}) {
    const Eigen::MatrixXd g = util::SplitMix64(util::splitmix_finalize(seed))
                                  .normal<util::BoxMullerLog::kLogOfComplement>(9, 4, 1.0);
    uint64_t state = ref_finalize(seed);
    for (Eigen::Index j = 0; j < g.size(); ++j) {
      state += kGamma;
      const double u1 = 1.0 - static_cast<double>(ref_finalize(state) >> 11) * 0x1.0p-53;
      state += kGamma;
      const double u2 = static_cast<double>(ref_finalize(state) >> 11) * 0x1.0p-53;
      ASSERT_EQ(g.data()[j], std::sqrt(-2 * std::log(u1)) * std::cos(2 * std::numbers::pi * u2))
          << j;
    }
  }
}

}  // namespace
}  // namespace hydraopt
