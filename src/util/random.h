// The project's one pseudo-random generator: SplitMix64 (Steele, Lea, Flood
// 2014), counter-based, so every value is a pure function of a key and a
// position and never depends on the order or the thread it is drawn in.
//
// SplitMix64 with state s yields, for j = 0, 1, ...,
//   x_j = finalize(s + (j + 1) * kSplitMixGamma)
// so any x_j can be had without the ones before it (splitmix_at); the
// SplitMix64 class draws them in turn. Everything else here derives from
// those two functions.
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <numbers>

namespace hydraopt::util {

/// SplitMix64's increment: 2^64 / phi, odd.
inline constexpr uint64_t kSplitMixGamma = 0x9e3779b97f4a7c15ULL;

/// SplitMix64's output function (Stafford's "Mix13" finaliser), a
/// bijection of 64-bit words that also serves as a hash.
constexpr uint64_t splitmix_finalize(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/// x_j, the j-th (0-based) output of SplitMix64 started at `state`.
constexpr uint64_t splitmix_at(uint64_t state, uint64_t j) {
  return splitmix_finalize(state + (j + 1) * kSplitMixGamma);
}

/// x_0 from state z: the usual one-call "splitmix64(z)" hash of an integer.
constexpr uint64_t splitmix_hash(uint64_t z) { return splitmix_at(z, 0); }

/// Uniform in [0, 1) from the top 53 bits of a 64-bit word.
constexpr double unit_double(uint64_t bits) { return static_cast<double>(bits >> 11) * 0x1.0p-53; }

/// How Box-Muller takes ln(1 - u1) for its radius sqrt(-2 ln(1 - u1)),
/// u1 in [0, 1). 1 - u1 is exact, so both are the same real number, but
/// libm rounds log1p(-u1) and log(1 - u1) apart in about 7% of draws
/// (glibc 2.36), and each form is pinned by published results: log1p by
/// synth's adapters and the range finders' starts, the log of the
/// complement by the baselines' randomized SVD (linalg/dense_svd).
enum class BoxMullerLog { kLog1p, kLogOfComplement };

/// One standard normal from two uniforms in [0, 1) (Box-Muller, cosine
/// branch only: portable, unlike std::normal_distribution).
template <BoxMullerLog kLog>
double box_muller(double u1, double u2) {
  constexpr double kTwoPi = 2 * std::numbers::pi;
  static_assert(kTwoPi == 6.283185307179586);
  const double log_complement = kLog == BoxMullerLog::kLog1p ? std::log1p(-u1) : std::log(1.0 - u1);
  return std::sqrt(-2.0 * log_complement) * std::cos(kTwoPi * u2);
}

/// SplitMix64 from a given state, drawn in turn: the i-th next() is
/// splitmix_at(state, i).
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t state) : state_(state) {}

  uint64_t next() { return splitmix_finalize(state_ += kSplitMixGamma); }
  double uniform() { return unit_double(next()); }  // [0, 1)
  /// A standard normal from the next two uniforms.
  template <BoxMullerLog kLog = BoxMullerLog::kLog1p>
  double normal() {
    const double u1 = uniform();
    const double u2 = uniform();
    return box_muller<kLog>(u1, u2);
  }
  /// r x c, column-major, each entry sd * normal<kLog>().
  template <BoxMullerLog kLog = BoxMullerLog::kLog1p>
  Eigen::MatrixXd normal(Eigen::Index r, Eigen::Index c, double sd) {
    Eigen::MatrixXd m(r, c);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = sd * normal<kLog>();
    return m;
  }
  /// r x c, column-major, uniform in [-bound, bound).
  Eigen::MatrixXd uniform(Eigen::Index r, Eigen::Index c, double bound) {
    Eigen::MatrixXd m(r, c);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = bound * (2 * uniform() - 1);
    return m;
  }

 private:
  uint64_t state_;
};

/// The stream keyed by (seed, a, b, c), with hash = splitmix_hash:
///   key = hash(hash(hash(seed ^ gamma) ^ a) ^ (b * 0xbf58476d1ce4e5b9)) ^ c,
/// SplitMix64 started at key + gamma, i.e. from state key with its first
/// draw skipped (historical; kept so that synth's adapters and the range
/// finders' starts keep their bits).
class Stream : public SplitMix64 {
 public:
  explicit Stream(uint64_t seed, uint64_t a, uint64_t b = 0, uint64_t c = 0)
      : SplitMix64(key(seed, a, b, c) + kSplitMixGamma) {}

  static constexpr uint64_t key(uint64_t seed, uint64_t a, uint64_t b, uint64_t c) {
    return splitmix_hash(splitmix_hash(splitmix_hash(seed ^ kSplitMixGamma) ^ a) ^
                         (b * 0xbf58476d1ce4e5b9ULL)) ^
           c;
  }
};

}  // namespace hydraopt::util
