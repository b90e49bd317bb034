// libFuzzer target: the calibration statistics reader (metadata, "sites"
// JSON, tensor names, shapes and values), then what a caller does with a
// file that parses: look modules up, take traces, and, for small sites,
// sketch the dense second moment again, whose output must satisfy the
// reader's rules. Input: a whole file image.
#include <cstddef>
#include <cstdint>
#include <span>

#include "hydraopt/error.h"
#include "io/calibration.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace hydraopt;
  try {
    const auto stats =
        io::parse_calibration_stats({reinterpret_cast<const std::byte*>(data), size}, "fuzz");
    double sum = 0;
    for (const auto& [site, modules] : stats.modules) {
      if (stats.for_module(modules.front()) != &stats.sites.at(site)) __builtin_trap();
    }
    for (const auto& [site, s] : stats.sites) {
      sum += s.trace();
      if (s.in() > 32) continue;
      const io::InputStats t = io::sketch_second_moment(s.dense(), s.in(), 1e-3);
      if (t.values.size() > t.in() || t.diagonal.size() != s.in()) __builtin_trap();
      for (Eigen::Index i = 0; i < t.values.size(); ++i) {
        if (!(t.values[i] >= 0) || (i > 0 && t.values[i] > t.values[i - 1])) __builtin_trap();
      }
      if (!(t.diagonal.array() >= 0).all()) __builtin_trap();
    }
    volatile double sink = sum;
    (void)sink;
  } catch (const Error&) {
  }
  return 0;
}
