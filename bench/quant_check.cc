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
// against the stored A by least squares, then stored. Single-threaded.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/quant.h"
#include "hydraopt/adapter.h"
#include "methods/fit_error.h"
#include "methods/precision.h"
#include "methods/structures.h"

using namespace hydraopt;

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s EVERY ADAPTER...\n", argv[0]);
    return 2;
  }
  const size_t every = std::max(1, std::stoi(argv[1]));
  const AdapterSet set = AdapterSet::open(std::vector<std::string>(argv + 2, argv + argc));
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
  return 0;
}
