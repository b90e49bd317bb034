// Micro-benchmarks for adapter I/O kernels.
#include <benchmark/benchmark.h>

#include <Eigen/Core>

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "core/rounding.h"
#include "hydraopt/adapter.h"
#include "io/safetensors.h"

namespace {

// An n x 2048 tensor of `dtype` converted to double, as the reader does per
// factor.
void convert(benchmark::State& state, hydraopt::DType dtype) {
  const Eigen::Index n = state.range(0);
  Eigen::MatrixXd m = Eigen::MatrixXd::Random(n, 2048);
  auto bytes = hydraopt::io::safetensors_serialize({hydraopt::io::tensor_from_matrix("x", m, dtype)}, {});
  auto file = hydraopt::io::SafetensorsFile::parse(bytes, "bench");
  for (auto _ : state) {
    benchmark::DoNotOptimize(file.matrix(file.tensors()[0]));
  }
  state.SetBytesProcessed(state.iterations() * n * 2048 * 2);
}

void BM_ConvertBf16(benchmark::State& state) { convert(state, hydraopt::DType::BF16); }
BENCHMARK(BM_ConvertBf16)->Arg(32)->Arg(512);

void BM_ConvertF16(benchmark::State& state) { convert(state, hydraopt::DType::F16); }
BENCHMARK(BM_ConvertF16)->Arg(32)->Arg(512);

// A 2048 x n BF16 tensor (a B factor: tall and narrow) to column-major double.
void BM_ConvertBf16Tall(benchmark::State& state) {
  const Eigen::Index n = state.range(0);
  auto bytes = hydraopt::io::safetensors_serialize(
      {hydraopt::io::tensor_from_matrix("x", Eigen::MatrixXd::Random(2048, n), hydraopt::DType::BF16)}, {});
  auto file = hydraopt::io::SafetensorsFile::parse(bytes, "bench");
  for (auto _ : state) {
    benchmark::DoNotOptimize(file.matrix(file.tensors()[0]));
  }
  state.SetBytesProcessed(state.iterations() * n * 2048 * 2);
}
BENCHMARK(BM_ConvertBf16Tall)->Arg(32);

// The same two shapes read transposed (in the file's row-major order: no
// transposition), as the norms pass reads A.
void BM_ConvertBf16Transposed(benchmark::State& state) {
  const Eigen::Index rows = state.range(0), cols = state.range(1);
  auto bytes = hydraopt::io::safetensors_serialize(
      {hydraopt::io::tensor_from_matrix("x", Eigen::MatrixXd::Random(rows, cols), hydraopt::DType::BF16)}, {});
  auto file = hydraopt::io::SafetensorsFile::parse(bytes, "bench");
  for (auto _ : state) {
    benchmark::DoNotOptimize(file.matrix_transposed(file.tensors()[0]));
  }
  state.SetBytesProcessed(state.iterations() * rows * cols * 2);
}
BENCHMARK(BM_ConvertBf16Transposed)->Args({32, 2048})->Args({2048, 32});

// A rows x cols double matrix encoded as BF16 row-major bytes, as the bundle
// writer does per factor: heads are tall and narrow (2048 x 32), bodies
// wide (32 x 2048).
void BM_EncodeBf16(benchmark::State& state) {
  const Eigen::MatrixXd m = Eigen::MatrixXd::Random(state.range(0), state.range(1));
  for (auto _ : state) {
    benchmark::DoNotOptimize(hydraopt::io::tensor_from_matrix("x", m, hydraopt::DType::BF16));
  }
  state.SetItemsProcessed(state.iterations() * m.size());
}
BENCHMARK(BM_EncodeBf16)->Args({2048, 32})->Args({32, 2048});

// Rounding a fitted head to BF16 and back (what the bundle will hold).
void BM_RoundToBf16(benchmark::State& state) {
  const Eigen::MatrixXd m = Eigen::MatrixXd::Random(2048, 32);
  for (auto _ : state) {
    benchmark::DoNotOptimize(hydraopt::round_to_dtype(m, hydraopt::DType::BF16));
  }
  state.SetItemsProcessed(state.iterations() * m.size());
}
BENCHMARK(BM_RoundToBf16);

// One module of N llama-1b-shaped BF16 adapters (r = 32, 2048 x 2048), each
// in its own file (page cache warm): what a pass over a module costs in I/O
// and conversion to double.
void BM_ReadModule(benchmark::State& state) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("hydraopt-bench-read-" + std::to_string(::getpid()));
  std::vector<std::string> specs;
  for (int i = 0; i < state.range(0); ++i) {
    const fs::path d = dir / ("task" + std::to_string(i));
    fs::create_directories(d);
    const std::string m = "base_model.model.model.layers.0.self_attn.q_proj.";
    hydraopt::io::safetensors_write(
        d / "adapter_model.safetensors",
        {hydraopt::io::tensor_from_matrix(m + "lora_A.weight", Eigen::MatrixXd::Random(32, 2048), hydraopt::DType::BF16),
         hydraopt::io::tensor_from_matrix(m + "lora_B.weight", Eigen::MatrixXd::Random(2048, 32), hydraopt::DType::BF16)});
    std::ofstream(d / "adapter_config.json")
        << R"({"peft_type": "LORA", "r": 32, "lora_alpha": 64, "target_modules": ["q_proj"]})";
    specs.push_back(d.string());
  }
  const auto set = hydraopt::AdapterSet::open(specs);
  for (auto _ : state) benchmark::DoNotOptimize(set.load(0));
  state.SetBytesProcessed(state.iterations() * state.range(0) * 32 * (2048 + 2048) * 2);
  std::error_code ec;
  fs::remove_all(dir, ec);
}
BENCHMARK(BM_ReadModule)->Arg(40)->Unit(benchmark::kMillisecond);

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
