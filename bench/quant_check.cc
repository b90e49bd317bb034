// What group-wise integer storage (core/quant.h) does to real adapters,
// and how well a white-noise model predicts it:
//
//   build/hydraopt_quant_check EVERY ADAPTER...
//
// Every adapter's A and B quantized on their own, for every format, on
// every EVERY-th module. Prints per format: the bytes as a share of a bf16
// copy of the factors; the mean over tasks of the relative update error
// ||dW - s Q(B) Q(A)||^2 / ||dW||^2 (the modules' sums); and the model's
// prediction from each factor's own quantization error E_X = X - Q(X):
// ||B||^2 ||E_A||^2 / r + ||E_B||^2 ||A||^2 / r (noise uncorrelated with
// the other factor, spread evenly over the rank), with the largest
// |predicted / measured - 1| over tasks. The last column stores each
// adapter quantization-aware (methods/precision.h): A first, then B solved
// against the stored A by least squares, then stored. A second table
// checks the planner's model of a stored precision (Predictor::predict
// with a Precision) against store_in_precision measured, for a few
// structures and per-role precisions (balanced weights per module): the
// mean relative error measured, and the largest miss of the predicted
// rise, |predicted - measured| / (measured - unrounded). Single-threaded.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/quant.h"
#include "check_util.h"
#include "hydraopt/adapter.h"
#include "methods/fit_error.h"
#include "methods/precision.h"
#include "methods/predict.h"
#include "methods/structures.h"

using namespace hydraopt;

int main(int argc, char** argv) {
  const auto [every, set] = bench::check_args(argc, argv);
  const std::vector<QuantFormat> formats = all_quant_formats();
  const size_t tasks = set.size(), nf = formats.size();
  // Per format and task: measured and predicted error, update energy.
  std::vector<std::vector<double>> measured(nf, std::vector<double>(tasks)), predicted = measured, aware = measured;
  std::vector<double> energy(tasks, 0.0), bytes(nf, 0.0);
  double bf16_bytes = 0;
  for (size_t m = 0; m < set.modules().size(); m += every) {
    ModuleProblem p;
    p.loras = set.load(m);
    p.weights.assign(tasks, 1.0);
    const std::vector<ModuleLora>& loras = p.loras;
    const ModuleFit exact = ModuleFitter(p, {}).fit({Family::kExact, 0, 0});
    for (size_t f = 0; f < nf; ++f) {
      const ModuleFit stored = store_in_precision(p, exact, {formats[f], formats[f], std::nullopt}, DType::F32);
      const std::vector<double> err = fit_errors2(p, stored);
      for (size_t i = 0; i < tasks; ++i) aware[f][i] += err[i];
    }
    for (size_t i = 0; i < tasks; ++i) {
      const ModuleLora& l = loras[i];
      if (l.rank() == 0) continue;
      const Eigen::MatrixXd dw = l.scale * l.B * l.A;
      energy[i] += dw.squaredNorm();
      bf16_bytes += 2.0 * static_cast<double>(l.A.size() + l.B.size());
      const double r = static_cast<double>(l.rank());
      for (size_t f = 0; f < nf; ++f) {
        const Eigen::MatrixXd qa = round_to_format(l.A, formats[f]), qb = round_to_format(l.B, formats[f]);
        measured[f][i] += (dw - l.scale * qb * qa).squaredNorm();
        predicted[f][i] += l.scale * l.scale *
                           (l.B.squaredNorm() * (l.A - qa).squaredNorm() + (l.B - qb).squaredNorm() * l.A.squaredNorm()) / r;
        bytes[f] += static_cast<double>(quant_bytes(l.A.rows(), l.A.cols(), formats[f]) +
                                        quant_bytes(l.B.rows(), l.B.cols(), formats[f]));
      }
    }
  }
  std::printf("%-16s %8s %14s %14s %12s %14s\n", "format", "bytes", "mean rel err", "model", "worst model", "B solved");
  for (size_t f = 0; f < nf; ++f) {
    double mean = 0, model = 0, worst = 0, solved = 0;
    for (size_t i = 0; i < tasks; ++i) {
      if (energy[i] <= 0) continue;
      mean += measured[f][i] / energy[i] / static_cast<double>(tasks);
      model += predicted[f][i] / energy[i] / static_cast<double>(tasks);
      solved += aware[f][i] / energy[i] / static_cast<double>(tasks);
      worst = std::max(worst, std::abs(predicted[f][i] / measured[f][i] - 1));
    }
    std::printf("%-16s %7.1f%% %14.3e %14.3e %11.1f%% %14.3e\n", formats[f].name().c_str(), 100 * bytes[f] / bf16_bytes,
                mean, model, 100 * worst, solved);
  }
  // The model of a stored precision, structure by structure.
  const std::vector<StructureSpec> specs = {{Family::kSharedA, 0, 0}, {Family::kSharedACore, 0, 0}, {Family::kExact, 0, 0}};
  const std::vector<Precision> precisions = {{QuantFormat{4, 32, true}, QuantFormat{4, 32, true}, std::nullopt},
                                             {QuantFormat{8, 32, true}, QuantFormat{3, 32, true}, std::nullopt},
                                             {QuantFormat{4, 64, true}, QuantFormat{2, 32, true}, QuantFormat{8, 32, true}}};
  std::printf("\n%-22s %-44s %14s %14s %12s\n", "structure", "precision", "unrounded", "stored", "worst miss");
  for (StructureSpec s : specs) {
    for (const Precision& pr : precisions) {
      double unrounded = 0, stored = 0, worst_miss = 0;
      int modules = 0;
      std::string label;
      for (size_t m = 0; m < set.modules().size(); m += every) {
        double n = 0;
        const ModuleProblem p = bench::balanced_problem(set, m, &n);
        const int64_t r = p.max_rank();
        s.rank = s.family == Family::kExact ? 0 : s.family == Family::kSharedA ? r : 2 * r;
        label = s.label();
        Predictor predictor(p, {});
        ModuleFitter fitter(p, {});
        const ModuleFit fit = fitter.fit(s);
        const double u = weighted_error(p, fit);
        const double measured = weighted_error(p, store_in_precision(p, fit, pr, DType::BF16));
        const double predicted = predictor.predict(s, pr, DType::BF16).error;
        unrounded += u / n;
        stored += measured / n;
        worst_miss = std::max(worst_miss, std::abs(predicted - measured) / std::max(measured - u, 1e-300));
        ++modules;
      }
      std::printf("%-22s %-44s %14.4e %14.4e %11.1f%%\n", label.c_str(), pr.label().c_str(), unrounded / modules,
                  stored / modules, 100 * worst_miss);
    }
  }
  return 0;
}
