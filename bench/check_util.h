// What the bench checks (predict_check.cc, quant_check.cc) share: their
// command line, EVERY ADAPTER..., and a module's problem weighted on its own.
#pragma once

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/fit.h"
#include "hydraopt/adapter.h"

namespace hydraopt::bench {

struct CheckArgs {
  size_t every;  ///< every EVERY-th module
  AdapterSet set;
};

/// EVERY ADAPTER... from the command line; usage and exit 2 otherwise.
inline CheckArgs check_args(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s EVERY ADAPTER...\n", argv[0]);
    std::exit(2);
  }
  return {static_cast<size_t>(std::max(1, std::stoi(argv[1]))),
          AdapterSet::open(std::vector<std::string>(argv + 2, argv + argc))};
}

/// Module m's factors with balanced weights on this module alone,
/// w_i = 1 / ||dW_i||^2 (0 for an empty update); *tasks: those with an update.
inline ModuleProblem balanced_problem(const AdapterSet& set, size_t m, double* tasks) {
  ModuleProblem p;
  p.loras = set.load(m);
  *tasks = 0;
  for (const auto& l : p.loras) {
    const double norm = l.scale * l.scale * (l.B * l.A).squaredNorm();
    p.weights.push_back(norm > 0 ? 1 / norm : 0);
    *tasks += norm > 0 ? 1 : 0;
  }
  return p;
}

}  // namespace hydraopt::bench
