#include "hydraopt/synth.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include <Eigen/Core>
#include <Eigen/QR>
#include <algorithm>
#include <map>

#include "hydraopt/calibration.h"
#include "hydraopt/error.h"
#include "io/atomic_file.h"
#include "io/calibration.h"
#include "io/safetensors.h"
#include "util/random.h"

namespace hydraopt {

namespace fs = std::filesystem;

namespace {

using util::Stream;

struct ModuleShape {
  std::string name;
  int64_t in, out;
};

std::vector<ModuleShape> preset_modules(const SynthPreset& p) {
  std::vector<ModuleShape> mods;
  for (int l = 0; l < p.layers; ++l) {
    for (const auto& proj : p.projections) {
      bool attn = proj == "q_proj" || proj == "k_proj" || proj == "v_proj" || proj == "o_proj";
      std::string name = "model.layers." + std::to_string(l) + (attn ? ".self_attn." : ".mlp.") + proj;
      int64_t in = p.hidden, out = p.hidden;
      if (proj == "k_proj" || proj == "v_proj") out = p.kv_out;
      if (proj == "gate_proj" || proj == "up_proj") out = p.intermediate;
      if (proj == "down_proj") in = p.intermediate;
      mods.push_back({name, in, out});
    }
  }
  return mods;
}

// Input sites as `hydraopt calibrate` records them (kAttentionInputs
// ...): per layer, the preset's modules that read one input, the site named
// after the first.
std::map<std::string, std::vector<std::string>> preset_sites(const SynthPreset& p) {
  std::map<std::string, std::vector<std::string>> sites;
  for (int l = 0; l < p.layers; ++l) {
    const std::string layer = "model.layers." + std::to_string(l) + ".";
    for (const auto* readers : {&kAttentionInputs, &kAttentionOutputs, &kMlpInputs, &kMlpHidden}) {
      std::vector<std::string> present;
      for (const std::string& r : *readers) {
        const std::string proj = r.substr(r.find('.') + 1);
        if (std::find(p.projections.begin(), p.projections.end(), proj) != p.projections.end()) {
          present.push_back(layer + r);
        }
      }
      if (!present.empty()) sites[present.front()] = std::move(present);
    }
  }
  return sites;
}

// One task's statistics (docs/synth.md): per site of width `in`, a shared
// orthonormal basis U (in x k) all tasks' inputs mostly lie in, each task's
// tilted by its own noise (V_t = orth(U + 0.3 N_t)), eigenvalues
// g_t j^-1.2 (j = 1..k, a per-task gain g_t), and a diagonal remainder of
// 5% of their sum spread unevenly over the inputs.
io::CalibrationStats synth_statistics(const SynthPreset& p, const std::vector<ModuleShape>& mods,
                                      const std::string& task, int t, uint64_t seed, int64_t rank) {
  io::CalibrationStats st;
  st.task = task;
  st.base_model = "hydraopt-synth/" + p.name;
  st.examples = 64;
  st.rows = 64 * 32;
  st.modules = preset_sites(p);
  for (const auto& [site, readers] : st.modules) {
    const auto it = std::find_if(mods.begin(), mods.end(), [&](const ModuleShape& m) { return m.name == site; });
    const auto in = static_cast<Eigen::Index>(it->in);
    const Eigen::Index k = std::min<Eigen::Index>(rank, in);
    const uint64_t s = static_cast<uint64_t>(it - mods.begin());
    Eigen::MatrixXd u = Stream(seed, 7, s).normal(in, k, 1.0 / std::sqrt(static_cast<double>(in)));
    u += Stream(seed, 8, s, t + 1).normal(in, k, 0.3 / std::sqrt(static_cast<double>(in)));
    Eigen::HouseholderQR<Eigen::MatrixXd> qr(u);
    io::InputStats x;
    x.vectors = (qr.householderQ() * Eigen::MatrixXd::Identity(in, k)).transpose();
    const double gain = std::exp(0.2 * Stream(seed, 9, s, t + 1).normal());
    x.values.resize(k);
    for (Eigen::Index j = 0; j < k; ++j) x.values[j] = gain * std::pow(static_cast<double>(j + 1), -1.2);
    const Eigen::ArrayXd spread = 1.0 + Stream(seed, 10, s, t + 1).uniform(in, 1, 0.5).array();  // [0.5, 1.5)
    x.diagonal = (0.05 * x.values.sum() / spread.sum()) * spread.matrix();
    st.sites[site] = std::move(x);
  }
  return st;
}

}  // namespace

SynthPreset synth_preset(const std::string& name) {
  const std::vector<std::string> attn = {"q_proj", "k_proj", "v_proj", "o_proj"};
  if (name == "tiny") return {"tiny", 64, 0, 32, 2, attn, 4, 8, 6, 2, DType::F32};
  if (name == "small") return {"small", 512, 0, 128, 4, attn, 8, 16, 16, 4, DType::BF16};
  if (name == "llama-1b") return {"llama-1b", 2048, 0, 512, 16, attn, 32, 128, 40, 5, DType::BF16};
  if (name == "llama-1b-shared") {
    // The shapes of llama-1b, with a tenth of its A drift: adapters trained
    // the usual way (small learning rates), whose A's share much more.
    SynthPreset p = synth_preset("llama-1b");
    p.name = name;
    p.drift = 0.045;
    p.noise = 0.015;
    return p;
  }
  if (name == "llama-7b") {
    std::vector<std::string> all = attn;
    for (const char* p : {"gate_proj", "up_proj", "down_proj"}) all.push_back(p);
    return {"llama-7b", 4096, 11008, 4096, 32, all, 16, 32, 40, 5, DType::BF16};
  }
  throw Error("unknown synth preset '" + name + "' (choose tiny, small, llama-1b, llama-1b-shared or llama-7b)");
}

std::vector<fs::path> synth_write(const fs::path& out_dir, const SynthOptions& o) {
  SynthPreset p = synth_preset(o.preset);
  if (o.rank < 0 || o.rank > 4096) throw Error("--rank must be in 1..4096");
  if (o.rank > 0) {
    p.alpha *= static_cast<double>(o.rank) / static_cast<double>(p.rank);
    p.rank = o.rank;
  }
  const int tasks = o.tasks > 0 ? o.tasks : p.tasks;
  const double drift = o.drift.value_or(p.drift), noise = o.noise.value_or(p.noise),
               head_noise = o.head_noise.value_or(p.head_noise);
  for (auto [value, flag] : {std::pair{drift, "--drift"}, {noise, "--noise"}, {head_noise, "--head-noise"}}) {
    if (!(value >= 0 && value <= 100)) throw Error(std::string(flag) + " must be in [0, 100]");
  }
  const int clusters = std::max(1, std::min(tasks, o.clusters > 0 ? o.clusters : p.clusters));
  if (tasks > 100000) throw Error("--tasks must be at most 100000");
  if (o.statistics_rank < 1 || o.statistics_rank > 4096) throw Error("--statistics-rank must be in 1..4096");
  const auto modules = preset_modules(p);

  std::vector<fs::path> dirs(tasks);
  for (int t = 0; t < tasks; ++t) {
    char buf[32];
    std::snprintf(buf, sizeof buf, tasks > 100 ? "task%04d" : "task%02d", t);
    dirs[t] = out_dir / buf;
  }
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) throw Error(out_dir.string(), "", "cannot create directory: " + ec.message());
  if (!o.statistics.empty()) {
    fs::create_directories(o.statistics, ec);
    if (ec) throw Error(o.statistics.string(), "", "cannot create directory: " + ec.message());
  }

  nlohmann::ordered_json config = {
      {"peft_type", "LORA"},
      {"task_type", "CAUSAL_LM"},
      {"base_model_name_or_path", "hydraopt-synth/" + p.name},
      {"r", p.rank},
      {"lora_alpha", p.alpha},
      {"lora_dropout", 0.0},
      {"bias", "none"},
      {"use_rslora", false},
      {"fan_in_fan_out", false},
      {"target_modules", p.projections},
  };
  const std::string config_text = config.dump(2) + "\n";
  const int64_t r = p.rank, k = 2 * p.rank;
  std::exception_ptr failure;

#pragma omp parallel for schedule(dynamic)
  for (int t = 0; t < tasks; ++t) {
    try {
      std::vector<io::TensorData> tensors;
      const double d_i = drift * (0.6 + 0.8 * Stream(o.seed, 0xd1f7, t).uniform());
      for (size_t m = 0; m < modules.size(); ++m) {
        const auto& mod = modules[m];
        const double a_sd = 1.0 / std::sqrt(3.0 * static_cast<double>(mod.in));
        Eigen::MatrixXd a0 = Stream(o.seed, 1, m).uniform(r, mod.in, std::sqrt(3.0) * a_sd);
        Eigen::MatrixXd d = Stream(o.seed, 2, m).normal(k, mod.in, a_sd);
        Eigen::MatrixXd mix = Stream(o.seed, 3, m, t + 1).normal(r, k, 1.0 / std::sqrt(double(k)));
        Eigen::MatrixXd a = a0 + d_i * (mix * d) + Stream(o.seed, 4, m, t + 1).normal(r, mod.in, noise * a_sd);
        const int c = t % clusters;
        const double b_sd = 0.02 / std::sqrt(1 + head_noise * head_noise);
        Eigen::MatrixXd b = Stream(o.seed, 5, m, c + 1).normal(mod.out, r, b_sd) +
                            Stream(o.seed, 6, m, t + 1).normal(mod.out, r, head_noise * b_sd);
        const std::string base = "base_model.model." + mod.name;
        tensors.push_back(io::tensor_from_matrix(base + ".lora_A.weight", a, p.dtype));
        tensors.push_back(io::tensor_from_matrix(base + ".lora_B.weight", b, p.dtype));
      }
      fs::create_directories(dirs[t]);
      io::write_file_atomic(dirs[t] / "adapter_config.json", config_text);
      io::safetensors_write(dirs[t] / "adapter_model.safetensors", std::move(tensors),
                            {{"format", "pt"}});
      if (!o.statistics.empty()) {
        const std::string task = dirs[t].filename().string();
        io::write_calibration_stats(o.statistics / (task + ".safetensors"),
                                    synth_statistics(p, modules, task, t, o.seed, o.statistics_rank));
      }
    } catch (...) {
#pragma omp critical
      if (!failure) failure = std::current_exception();
    }
  }
  if (failure) std::rethrow_exception(failure);
  return dirs;
}

}  // namespace hydraopt
