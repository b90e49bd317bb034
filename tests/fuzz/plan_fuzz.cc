// libFuzzer target: a --plan file (io::parse_plan: a list of modules, a
// report's "plan" or a bundle header's "modules"). Input: the JSON text.
// Beyond crashes and UB, an accepted entry must be what the planner relies
// on without checking: rank and groups in their ranges, a known family,
// integer formats that name themselves back; a violation aborts.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/quant.h"
#include "hydraopt/error.h"
#include "io/option_files.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace hydraopt;
  try {
    const auto plan = io::parse_plan({reinterpret_cast<const char*>(data), size}, "fuzz");
    for (const auto& [name, entry] : plan) {
      if (entry.spec.rank < 0 || entry.spec.rank > (int64_t{1} << 40)) std::abort();
      if (entry.spec.groups < 0 || entry.spec.groups > (1 << 24)) std::abort();
      if (!family_from_name(family_name(entry.spec.family))) std::abort();
      for (const auto* f : {&entry.precision.heads, &entry.precision.bodies, &entry.precision.cores}) {
        if (*f && parse_quant_format((*f)->name(), "fuzz").name() != (*f)->name()) std::abort();
      }
    }
  } catch (const Error&) {
  }
  return 0;
}
