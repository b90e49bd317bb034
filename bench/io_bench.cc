// Micro-benchmarks for adapter I/O kernels.
#include <benchmark/benchmark.h>

#include <Eigen/Core>

#include "io/safetensors.h"

namespace {

void BM_ConvertBf16(benchmark::State& state) {
  const Eigen::Index n = state.range(0);
  Eigen::MatrixXd m = Eigen::MatrixXd::Random(n, 2048);
  auto bytes = hydraopt::io::safetensors_serialize(
      {hydraopt::io::tensor_from_matrix("x", m, hydraopt::DType::BF16)}, {});
  auto file = hydraopt::io::SafetensorsFile::parse(bytes, "bench");
  for (auto _ : state) {
    benchmark::DoNotOptimize(file.matrix(file.tensors()[0]));
  }
  state.SetBytesProcessed(state.iterations() * n * 2048 * 2);
}
BENCHMARK(BM_ConvertBf16)->Arg(32)->Arg(512);

void BM_ParseHeader(benchmark::State& state) {
  std::vector<hydraopt::io::TensorData> ts;
  for (int i = 0; i < state.range(0); ++i) {
    ts.push_back(hydraopt::io::tensor_from_matrix("t" + std::to_string(i), Eigen::MatrixXd::Zero(2, 2),
                                                  hydraopt::DType::F32));
  }
  auto bytes = hydraopt::io::safetensors_serialize(std::move(ts), {});
  for (auto _ : state) {
    benchmark::DoNotOptimize(hydraopt::io::SafetensorsFile::parse(bytes, "bench"));
  }
}
BENCHMARK(BM_ParseHeader)->Arg(512);

}  // namespace
