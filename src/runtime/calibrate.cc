// `hydraopt calibrate`: the inputs every module sees while each task runs
// (hydraopt/calibration.h), from the project's own forward pass.
#include <omp.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include "hydraopt/adapter.h"
#include "hydraopt/benchmark.h"
#include "hydraopt/calibration.h"
#include "hydraopt/error.h"
#include "hydraopt/model.h"

namespace hydraopt {

namespace fs = std::filesystem;

void calibrate(const CalibrateOptions& o) {
  if (o.adapters.empty()) throw Error("calibrate: no adapters given");
  if (o.examples <= 0) throw Error("calibrate: --examples must be positive");
  const Model model = Model::open(o.model);
  std::vector<Adapter> adapters;
  for (const auto& spec : o.adapters) adapters.push_back(Adapter::open(spec));
  std::vector<TaskExamples> tasks;
  for (const Adapter& a : adapters) tasks.push_back(load_task(o.data / a.name(), o.examples, "calib.jsonl"));
  fs::create_directories(o.out);
  const fs::path scratch = o.out / (".calibrate-" + std::to_string(::getpid()));
  fs::create_directories(scratch);
  struct Cleanup {
    fs::path dir;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } cleanup{scratch};
  const int threads = o.threads > 0 ? o.threads : omp_get_max_threads();
  std::vector<std::string> failed(adapters.size());
#pragma omp parallel for num_threads(threads) schedule(dynamic)
  for (size_t i = 0; i < adapters.size(); ++i) {
    try {
      const Deltas deltas = deltas_from_adapter(adapters[i]);
      CalibrationFile f{adapters[i].name(), adapters[i].base_model(), 0, {}};
      const int eos = model.config().eos;
      constexpr size_t kBatch = 32;  // sequences per forward pass
      const auto& ex = tasks[i].examples;
      for (size_t b = 0; b < ex.size(); b += kBatch) {
        std::vector<std::vector<int>> seqs;
        for (size_t e = b; e < std::min(ex.size(), b + kBatch); ++e) {
          std::vector<int> seq = model.encode_prompt(ex[e].first);
          for (unsigned char c : ex[e].second) seq.push_back(c);
          seq.push_back(eos);
          seqs.push_back(std::move(seq));
        }
        model.add_input_moments(seqs, &deltas, &f.sites);
      }
      f.examples = static_cast<int64_t>(ex.size());
      // Only the inputs of the modules the adapter has, and only those
      // modules listed (merge --calibration refuses modules the adapters
      // lack); a site keeps the name of its first reader.
      for (auto it = f.sites.begin(); it != f.sites.end();) {
        auto& mods = it->second.modules;
        mods.erase(std::remove_if(mods.begin(), mods.end(), [&](const std::string& m) { return deltas.count(m) == 0; }),
                   mods.end());
        it = mods.empty() ? f.sites.erase(it) : std::next(it);
      }
      write_calibration(scratch / (f.task + ".safetensors"), f, o.max_rank);
    } catch (const std::exception& e) {
      failed[i] = e.what();
    }
  }
  for (const auto& why : failed) {
    if (!why.empty()) throw Error(why);
  }
  for (const Adapter& a : adapters) {
    const std::string name = a.name() + ".safetensors";
    fs::rename(scratch / name, o.out / name);
  }
}

}  // namespace hydraopt
