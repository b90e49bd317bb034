// libFuzzer target: bundle reading (metadata JSON, layout, tensor checks).
// Input: either a whole bundle file, or METADATA '\0' FILE where METADATA is
// the hydraopt metadata JSON as plain text and FILE a safetensors image whose
// header is rewritten to carry it; the second form lets the fuzzer mutate
// the JSON directly instead of through the header's string escaping.
// A bundle that parses (its "history" too, issue 20) then has its first
// task removed from every module, as `hydraopt remove` would, and the
// result must still index only stored matrices.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "hydraopt/error.h"
#include "io/bundle.h"
#include "io/safetensors.h"
#include "methods/edit.h"

namespace {

// remove_tasks on every module of a parsed bundle: the kept tasks' indices
// stay within the kept matrices.
void remove_first_task(const hydraopt::io::Bundle& b) {
  if (b.tasks.size() < 2) return;
  std::vector<bool> drop(b.tasks.size(), false);
  drop[0] = true;
  for (const auto& m : b.modules) {
    hydraopt::ModuleFit f = m.fit;
    hydraopt::remove_tasks(&f, drop);
    for (size_t i = 0; i < f.tasks(); ++i) {
      if (f.head_of[i] < 0 || static_cast<size_t>(f.head_of[i]) >= f.heads.size() || f.body_of[i] < 0 ||
          static_cast<size_t>(f.body_of[i]) >= f.bodies.size() || f.core_of[i] >= static_cast<int>(f.cores.size())) {
        __builtin_trap();
      }
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace hydraopt;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  try {
    const size_t nul = in.find('\0');
    if (!in.empty() && in[0] == '{' && nul != std::string_view::npos) {
      const std::string_view file = in.substr(nul + 1);
      auto st = io::SafetensorsFile::parse(
          {reinterpret_cast<const std::byte*>(file.data()), file.size()}, "fuzz");
      std::vector<io::TensorSlot> slots;
      for (const auto& t : st.tensors())
        slots.push_back({t.name, t.dtype, t.shape, t.begin, t.end});
      uint64_t n = 0;
      std::memcpy(&n, file.data(), 8);
      std::string image =
          io::safetensors_header(std::move(slots), {{"hydraopt", std::string(in.substr(0, nul))}});
      image.append(file.substr(8 + n));
      auto st2 = io::SafetensorsFile::parse(
          {reinterpret_cast<const std::byte*>(image.data()), image.size()}, "fuzz");
      remove_first_task(io::bundle_parse(st2));
    } else {
      auto st =
          io::SafetensorsFile::parse({reinterpret_cast<const std::byte*>(data), size}, "fuzz");
      remove_first_task(io::bundle_parse(st));
    }
  } catch (const Error&) {
  }
  return 0;
}
