// Counter-based pseudo-random numbers: each stream is a pure function of its
// key, so values never depend on the order or the thread they are drawn in.
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <cstdint>

namespace hydraopt::util {

/// SplitMix64 (Steele, Lea, Flood 2014) keyed by (seed, a, b, c).
struct Stream {
  uint64_t state;
  explicit Stream(uint64_t seed, uint64_t a, uint64_t b = 0, uint64_t c = 0)
      : state(mix(mix(mix(seed ^ 0x9e3779b97f4a7c15ULL) ^ a) ^ (b * 0xbf58476d1ce4e5b9ULL)) ^ c) {}
  static uint64_t mix(uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  uint64_t next() { return mix(state += 0x9e3779b97f4a7c15ULL); }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  double normal() {  // Box-Muller, one value per pair of uniforms
    double u1 = uniform(), u2 = uniform();
    return std::sqrt(-2.0 * std::log1p(-u1)) * std::cos(6.283185307179586 * u2);
  }
  Eigen::MatrixXd normal(Eigen::Index r, Eigen::Index c, double sd) {
    Eigen::MatrixXd m(r, c);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = sd * normal();
    return m;
  }
  Eigen::MatrixXd uniform(Eigen::Index r, Eigen::Index c, double bound) {
    Eigen::MatrixXd m(r, c);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = bound * (2 * uniform() - 1);
    return m;
  }
};

}  // namespace hydraopt::util
