// libFuzzer target: the safetensors reader (header, layout, conversion).
// Input: a whole file image.
#include <cstddef>
#include <cstdint>
#include <span>

#include "hydraopt/error.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace hydraopt;
  try {
    auto f = io::SafetensorsFile::parse({reinterpret_cast<const std::byte*>(data), size}, "fuzz");
    double sum = 0;
    for (const auto& t : f.tensors()) {
      f.find(t.name);
      if (t.shape.size() == 2 && t.numel() <= (1 << 16)) sum += f.matrix(t).sum();
    }
    volatile double sink = sum;
    (void)sink;
  } catch (const Error&) {
  }
  return 0;
}
