// Uses the installed hydraopt: opens adapters, reads one module's factors
// (Eigen matrices allocated in the library, freed here), merges them at a
// budget and prints what a test can check.
//
//   consumer ADAPTER_DIR... -> lines "version V", "modules N", "factor r x in",
//                              "merged tasks T fraction F error E"
#include <cstdio>
#include <string>
#include <vector>

#include "hydraopt/adapter.h"
#include "hydraopt/error.h"
#include "hydraopt/merge.h"

int main(int argc, char** argv) {
  try {
    std::vector<std::string> specs(argv + 1, argv + argc);
    auto set = hydraopt::AdapterSet::open(specs);
    std::printf("version %s\n", HYDRAOPT_VERSION);
    std::printf("modules %zu\n", set.modules().size());
    {
      const auto lora = set.task(0).load(set.modules()[0].name);
      std::printf("factor %ld x %ld\n", static_cast<long>(lora.A.rows()),
                  static_cast<long>(lora.A.cols()));
    }
    hydraopt::MergeOptions options;
    options.budget = 0.6;
    auto report = hydraopt::merge(set, options, "");
    std::printf("merged tasks %zu fraction %.3f error %.4f\n", report.tasks.size(), report.fraction,
                report.mean_rel_error);
    return report.fraction <= 0.6 + 1e-9 && report.mean_rel_error < 1 ? 0 : 2;
  } catch (const hydraopt::Error& e) {
    std::fprintf(stderr, "consumer: %s\n", e.what());
    return 1;
  }
}
