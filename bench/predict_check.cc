// Predicted against measured errors, on real adapter sets:
//
//   build/hydraopt_predict_check EVERY ADAPTER...
//
// For every EVERY-th module and every candidate the planner considers
// (plan/candidates.cc, both sides), Predictor::predict's error at bf16, as
// the planner has it (FitOptions::estimate), against the closed-form start
// fitted, rounded to bf16 and measured (max_iters = 0: what is predicted).
// Prints, per family, the largest |predicted - measured| / measured, and
// over all the largest deviation as a share of the module's weighted
// energy N. Single-threaded; slow (every candidate is fitted): use
// EVERY > 1 on large sets.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <string>

#include "check_util.h"
#include "hydraopt/adapter.h"
#include "methods/fit_error.h"
#include "methods/predict.h"
#include "methods/structures.h"
#include "plan/candidates.h"

using namespace hydraopt;

int main(int argc, char** argv) {
  const auto [every, set] = bench::check_args(argc, argv);
  std::map<std::string, std::pair<double, int>> worst;  // family -> (largest relative deviation, candidates)
  double worst_share = 0;
  for (size_t m = 0; m < set.modules().size(); m += every) {
    double n = 0;
    const ModuleProblem p = bench::balanced_problem(set, m, &n);
    FitOptions starts, estimate;
    starts.max_iters = 0;
    estimate.estimate = true;  // as the planner predicts
    Predictor predictor(p, estimate);
    ModuleFitter fitter(p, starts);
    for (const auto& c : candidate_specs(shape_of(p), Share::kAuto, 0)) {
      if (c.spec.family == Family::kExact) continue;
      const double predicted = predictor.predict(c.spec, DType::BF16).error;
      const double measured = weighted_error(p, fitter.fit(c.spec).rounded(DType::BF16));
      std::string family = family_name(c.spec.family);
      if (c.spec.groups > 0) family += " (groups)";
      auto& w = worst[family];
      w.first = std::max(w.first, std::abs(predicted - measured) / std::max(measured, 1e-300));
      ++w.second;
      worst_share = std::max(worst_share, std::abs(predicted - measured) / n);
    }
  }
  int count = 0;
  for (const auto& [family, w] : worst) {
    std::printf("%-24s %5d candidates, largest |predicted - measured| / measured = %.2e\n", family.c_str(), w.second,
                w.first);
    count += w.second;
  }
  std::printf("all %d: largest |predicted - measured| / N = %.2e\n", count, worst_share);
}
