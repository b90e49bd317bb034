// PEFT adapter directories: adapter_config.json + adapter_model.safetensors.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "hydraopt/adapter.h"
#include "hydraopt/error.h"
#include "io/bundle.h"
#include "io/pattern.h"
#include "io/peft_config.h"
#include "io/safetensors.h"
#include "io/text_file.h"
#include "linalg/factored.h"
#include "util/parallel.h"
#include "util/sha256.h"

namespace hydraopt {

namespace fs = std::filesystem;
using nlohmann::ordered_json;

namespace {

constexpr std::string_view kPrefix = "base_model.model.";
constexpr std::string_view kSuffixA = ".lora_A.weight";
constexpr std::string_view kSuffixB = ".lora_B.weight";
constexpr size_t kMaxConfigBytes = 16 << 20;

bool ends_with(std::string_view s, std::string_view suf) {
  return s.size() >= suf.size() && s.substr(s.size() - suf.size()) == suf;
}

// Why a tensor cannot be merged, or empty if it is a LoRA factor.
std::string unmergeable_reason(const std::string& name) {
  if (name.find("lora_magnitude_vector") != std::string::npos) return "DoRA magnitude vector";
  if (name.find("lora_embedding_") != std::string::npos) return "LoRA embedding";
  if (ends_with(name, ".lora_A.bias") || ends_with(name, ".lora_B.bias")) return "LoRA bias";
  if (name.find("modules_to_save") != std::string::npos) return "modules_to_save copy";
  if (name.rfind(kPrefix, 0) == 0 && (ends_with(name, kSuffixA) || ends_with(name, kSuffixB))) {
    return "";
  }
  return "not a LoRA factor (full-weight copy, e.g. modules_to_save)";
}

}  // namespace


namespace io {

PeftConfig parse_peft_config(std::string_view text, const std::string& file) {
  ordered_json j;
  try {
    j = ordered_json::parse(text);
  } catch (const ordered_json::exception& e) {
    throw Error(file, "", std::string("not valid JSON: ") + e.what());
  }
  if (!j.is_object()) throw Error(file, "", "not a JSON object");
  PeftConfig c;
  auto field = [&](const char* key) -> const ordered_json* {
    auto it = j.find(key);
    return it == j.end() || it->is_null() ? nullptr : &*it;
  };
  auto positive_int = [&](const ordered_json& v, const std::string& what) {
    if (!v.is_number_integer() || v.get<int64_t>() <= 0 || v.get<int64_t>() > 65536) {
      throw Error(file, "", what + " must be an integer in 1..65536");
    }
    return v.get<int64_t>();
  };
  auto finite_number = [&](const ordered_json& v, const std::string& what) {
    if (!v.is_number() || !std::isfinite(v.get<double>())) throw Error(file, "", what + " must be a number");
    return v.get<double>();
  };
  if (auto* v = field("peft_type"); v && (!v->is_string() || v->get<std::string>() != "LORA")) {
    // Not v->dump(): it recurses, and a deeply nested value overflows the stack.
    const std::string what = v->is_string() ? "'" + v->get<std::string>() + "'" : std::string("a ") + v->type_name();
    throw Error(file, "", "peft_type is " + what + ", only LORA adapters can be merged");
  }
  if (auto* v = field("use_dora"); v && v->is_boolean() && v->get<bool>()) {
    throw Error(file, "", "use_dora is true: DoRA adapters cannot be merged as LoRA updates");
  }
  if (auto* v = field("r")) c.r = positive_int(*v, "r");
  if (auto* v = field("lora_alpha")) c.alpha = finite_number(*v, "lora_alpha");
  if (auto* v = field("use_rslora")) {
    if (!v->is_boolean()) throw Error(file, "", "use_rslora must be true or false");
    c.rslora = v->get<bool>();
  }
  if (auto* v = field("fan_in_fan_out")) {
    if (!v->is_boolean()) throw Error(file, "", "fan_in_fan_out must be true or false");
    c.fan_in_fan_out = v->get<bool>();
  }
  if (auto* v = field("base_model_name_or_path")) {
    if (!v->is_string()) throw Error(file, "", "base_model_name_or_path must be a string");
    c.base_model = v->get<std::string>();
  }
  if (auto* v = field("target_modules")) {
    if (v->is_string()) {
      c.target_modules.push_back(v->get<std::string>());
    } else if (v->is_array()) {
      for (auto& t : *v) {
        if (!t.is_string()) throw Error(file, "", "target_modules must hold strings");
        c.target_modules.push_back(t.get<std::string>());
      }
    } else {
      throw Error(file, "", "target_modules must be a string or a list of strings");
    }
  }
  if (auto* v = field("rank_pattern")) {
    if (!v->is_object()) throw Error(file, "", "rank_pattern must be an object");
    for (auto& [k, x] : v->items()) c.rank_pattern.emplace_back(k, positive_int(x, "rank_pattern['" + k + "']"));
  }
  if (auto* v = field("alpha_pattern")) {
    if (!v->is_object()) throw Error(file, "", "alpha_pattern must be an object");
    for (auto& [k, x] : v->items()) c.alpha_pattern.emplace_back(k, finite_number(x, "alpha_pattern['" + k + "']"));
  }
  return c;
}

}  // namespace io

bool natural_less(const std::string& a, const std::string& b) {
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    if (std::isdigit(static_cast<unsigned char>(a[i])) && std::isdigit(static_cast<unsigned char>(b[j]))) {
      size_t i2 = i, j2 = j;
      while (i2 < a.size() && std::isdigit(static_cast<unsigned char>(a[i2]))) ++i2;
      while (j2 < b.size() && std::isdigit(static_cast<unsigned char>(b[j2]))) ++j2;
      std::string_view x(a.data() + i, i2 - i), y(b.data() + j, j2 - j);
      while (x.size() > 1 && x[0] == '0') x.remove_prefix(1);
      while (y.size() > 1 && y[0] == '0') y.remove_prefix(1);
      if (x.size() != y.size()) return x.size() < y.size();
      if (x != y) return x < y;
      i = i2;
      j = j2;
    } else {
      if (a[i] != b[j]) return a[i] < b[j];
      ++i;
      ++j;
    }
  }
  if ((a.size() - i) != (b.size() - j)) return a.size() - i < b.size() - j;
  return a < b;
}

struct Adapter::Impl {
  std::string name;
  fs::path dir;
  io::PeftConfig config;
  DType dtype = DType::F32;
  io::SafetensorsFile weights;
  std::vector<AdapterModule> modules;
  std::map<std::string, std::pair<const io::TensorInfo*, const io::TensorInfo*>> factors;
};

Adapter Adapter::open(const std::string& spec, const LoadOptions& options) {
  auto impl = std::make_shared<Impl>();
  std::string path = spec;
  if (auto eq = spec.find('='); eq != std::string::npos && eq > 0 && !fs::exists(spec)) {
    impl->name = spec.substr(0, eq);
    path = spec.substr(eq + 1);
  }
  impl->dir = fs::path(path);
  if (!fs::is_directory(impl->dir)) throw Error(path, "", "not a directory (expected a PEFT adapter directory)");
  if (impl->name.empty()) {
    impl->name = fs::weakly_canonical(impl->dir).filename().string();
    if (impl->name.empty()) impl->name = impl->dir.filename().string();
  }
  io::check_task_name(impl->name, spec);  // it becomes a directory name on export
  const fs::path config_path = impl->dir / "adapter_config.json";
  const fs::path weights_path = impl->dir / "adapter_model.safetensors";
  if (!fs::exists(config_path)) throw Error(config_path.string(), "", "missing (not a PEFT adapter directory?)");
  if (!fs::exists(weights_path)) {
    if (fs::exists(impl->dir / "adapter_model.bin")) {
      throw Error((impl->dir / "adapter_model.bin").string(), "",
                  "pickled PyTorch weights are not read; convert the adapter to safetensors");
    }
    throw Error(weights_path.string(), "", "missing");
  }
  impl->config = io::parse_peft_config(io::read_text(config_path, kMaxConfigBytes), config_path.string());
  impl->weights = io::SafetensorsFile::open(weights_path);
  const std::string wfile = weights_path.string();
  const io::PeftConfig& c = impl->config;

  // Classify tensors; collect what cannot be merged.
  std::vector<std::string> bad;
  std::map<std::string, std::pair<const io::TensorInfo*, const io::TensorInfo*>> factors;
  for (const auto& t : impl->weights.tensors()) {
    std::string why = unmergeable_reason(t.name);
    if (!why.empty()) {
      bad.push_back(t.name + " (" + why + ")");
      continue;
    }
    bool is_a = ends_with(t.name, kSuffixA);
    std::string module = t.name.substr(kPrefix.size(), t.name.size() - kPrefix.size() - kSuffixA.size());
    if (module.empty()) throw Error(wfile, t.name, "empty module name");
    auto& slot = factors[module];
    (is_a ? slot.first : slot.second) = &t;
  }
  if (!bad.empty()) {
    std::string list;
    for (auto& b : bad) list += (list.empty() ? "" : ", ") + b;
    if (!options.skip_unmergeable) {
      throw Error(wfile, "", std::to_string(bad.size()) + " tensor(s) cannot be merged: " + list +
                                 " (pass --skip-unmergeable to ignore them)");
    }
    std::string msg = wfile + ": skipping " + std::to_string(bad.size()) + " unmergeable tensor(s): " + list;
    if (options.warn) options.warn(msg); else std::cerr << "warning: " << msg << "\n";
  }
  if (factors.empty()) throw Error(wfile, "", "no LoRA factors (…lora_A.weight / …lora_B.weight) found");

  std::vector<std::string> rank_keys, alpha_keys;
  for (auto& [k, v] : c.rank_pattern) rank_keys.push_back(k);
  for (auto& [k, v] : c.alpha_pattern) alpha_keys.push_back(k);
  io::SuffixPatterns rank_match(rank_keys, config_path.string());
  io::SuffixPatterns alpha_match(alpha_keys, config_path.string());

  bool first = true;
  for (auto& [module, ab] : factors) {
    auto [A, B] = ab;
    const std::string base = std::string(kPrefix) + module;
    if (!A) throw Error(wfile, base + std::string(kSuffixA), "missing (lora_B present without lora_A)");
    if (!B) throw Error(wfile, base + std::string(kSuffixB), "missing (lora_A present without lora_B)");
    if (A->shape.size() != 2) throw Error(wfile, A->name, "lora_A must be 2-D (r x in)");
    if (B->shape.size() != 2) throw Error(wfile, B->name, "lora_B must be 2-D (out x r)");
    for (const io::TensorInfo* t : {A, B}) {
      if (!is_float(t->dtype)) {
        throw Error(wfile, t->name, "dtype " + std::string(dtype_name(t->dtype)) + " is not a float type (need F64, F32, F16 or BF16)");
      }
    }
    AdapterModule m;
    m.name = module;
    m.rank = A->shape[0];
    m.in = A->shape[1];
    m.out = B->shape[0];
    if (B->shape[1] != m.rank) {
      throw Error(wfile, B->name, "has rank " + std::to_string(B->shape[1]) + " but lora_A has rank " +
                                      std::to_string(m.rank));
    }
    if (m.rank == 0 || m.in == 0 || m.out == 0) throw Error(wfile, A->name, "empty LoRA factor");
    int64_t cfg_rank = c.r;
    if (auto i = rank_match.match(module)) cfg_rank = c.rank_pattern[*i].second;
    if (cfg_rank != m.rank) {
      throw Error(wfile, A->name, "has rank " + std::to_string(m.rank) + " but adapter_config.json gives " +
                                      std::to_string(cfg_rank) + " for this module");
    }
    m.alpha = c.alpha;
    if (auto i = alpha_match.match(module)) m.alpha = c.alpha_pattern[*i].second;
    m.scale = c.rslora ? m.alpha / std::sqrt(static_cast<double>(m.rank)) : m.alpha / static_cast<double>(m.rank);
    m.dtype = dtype_widest(A->dtype, B->dtype);
    impl->dtype = first ? m.dtype : dtype_widest(impl->dtype, m.dtype);
    first = false;
    impl->modules.push_back(m);
  }
  impl->factors = std::move(factors);
  std::sort(impl->modules.begin(), impl->modules.end(),
            [](const AdapterModule& a, const AdapterModule& b) { return natural_less(a.name, b.name); });
  Adapter a;
  a.impl_ = std::move(impl);
  return a;
}

const std::string& Adapter::name() const { return impl_->name; }
const fs::path& Adapter::dir() const { return impl_->dir; }
const std::string& Adapter::base_model() const { return impl_->config.base_model; }
int64_t Adapter::rank() const { return impl_->config.r; }
double Adapter::alpha() const { return impl_->config.alpha; }
bool Adapter::use_rslora() const { return impl_->config.rslora; }
bool Adapter::fan_in_fan_out() const { return impl_->config.fan_in_fan_out; }
DType Adapter::dtype() const { return impl_->dtype; }
const std::vector<std::string>& Adapter::target_modules() const { return impl_->config.target_modules; }
const std::vector<AdapterModule>& Adapter::modules() const { return impl_->modules; }
fs::path Adapter::weights_path() const { return impl_->dir / "adapter_model.safetensors"; }

const AdapterModule* Adapter::find(const std::string& module) const {
  for (auto& m : impl_->modules) {
    if (m.name == module) return &m;
  }
  return nullptr;
}

int64_t Adapter::params() const {
  int64_t p = 0;
  for (auto& m : impl_->modules) p += m.rank * (m.in + m.out);
  return p;
}

ModuleLora Adapter::load(const std::string& module) const {
  auto it = impl_->factors.find(module);
  if (it == impl_->factors.end()) throw Error(weights_path().string(), module, "module not in adapter");
  const AdapterModule* info = find(module);
  ModuleLora l;
  l.A = impl_->weights.matrix(*it->second.first);
  l.B = impl_->weights.matrix(*it->second.second);
  l.scale = info->scale;
  impl_->weights.release();
  return l;
}

ModuleLoraT Adapter::load_transposed(const std::string& module) const {
  auto it = impl_->factors.find(module);
  if (it == impl_->factors.end()) throw Error(weights_path().string(), module, "module not in adapter");
  ModuleLoraT l;
  l.At = impl_->weights.matrix_transposed(*it->second.first);
  l.Bt = impl_->weights.matrix_transposed(*it->second.second);
  l.scale = find(module)->scale;
  impl_->weights.release();
  return l;
}

std::vector<double> Adapter::scan(const std::vector<std::string>& modules, std::string* sha256) const {
  const io::SafetensorsFile& w = impl_->weights;
  struct Item {
    const io::TensorInfo* t;
    size_t module;
    bool a;
  };
  std::vector<Item> items;
  for (size_t m = 0; m < modules.size(); ++m) {
    auto it = impl_->factors.find(modules[m]);
    if (it == impl_->factors.end()) continue;
    items.push_back({it->second.first, m, true});
    items.push_back({it->second.second, m, false});
  }
  std::sort(items.begin(), items.end(), [](const Item& x, const Item& y) { return x.t->begin < y.t->begin; });
  std::vector<double> out(modules.size(), 0.0);
  std::vector<Eigen::MatrixXd> ga(modules.size()), gb(modules.size());  // A A^T, B^T B until both are known
  util::Sha256 hash;
  const auto image = w.image();
  size_t hashed = 0, unreleased = 0;
  for (const Item& item : items) {
    const size_t end = w.data_offset() + item.t->end;
    if (sha256 && end > hashed) {
      hash.update(image.subspan(hashed, end - hashed));
      hashed = end;
    }
    const size_t m = item.module;
    const Eigen::MatrixXd x = w.matrix_transposed(*item.t);  // A^T or B^T
    if (item.a) ga[m] = linalg::column_gram(x);
    else gb[m] = linalg::row_gram(x);
    if (ga[m].size() && gb[m].size()) {  // as update_norm2
      const double s = find(modules[m])->scale;
      out[m] = s * s * linalg::norm2_from_grams(gb[m], ga[m]);
      ga[m] = gb[m] = Eigen::MatrixXd();
    }
    unreleased += item.t->end - item.t->begin;
    if (unreleased > (size_t{8} << 20)) {  // keep the resident set small
      w.release();
      unreleased = 0;
    }
  }
  if (sha256) {
    hash.update(image.subspan(hashed));
    *sha256 = hash.hex();
  }
  w.release();
  return out;
}

double Adapter::update_norm2(const std::string& module) const {
  const ModuleLoraT l = load_transposed(module);
  return l.scale * l.scale * linalg::product_norm2_transposed(l.Bt, l.At);
}

AdapterSet::AdapterSet(std::vector<Adapter> adapters) : tasks_(std::move(adapters)) {
  if (tasks_.empty()) throw Error("no adapters given");
  std::map<std::string, size_t> names;
  for (size_t i = 0; i < tasks_.size(); ++i) {
    const Adapter& t = tasks_[i];
    if (auto [it, fresh] = names.emplace(t.name(), i); !fresh) {
      throw Error(t.dir().string(), "", "task name '" + t.name() + "' is also used by " +
                                            tasks_[it->second].dir().string() + " (rename with NAME=PATH)");
    }
    if (t.fan_in_fan_out() != tasks_[0].fan_in_fan_out()) {
      throw Error((t.dir() / "adapter_config.json").string(), "",
                  "fan_in_fan_out differs from " + tasks_[0].name() + "'s; the base layers must agree");
    }
    if (!t.base_model().empty()) {
      if (base_model_.empty()) {
        base_model_ = t.base_model();
      } else if (t.base_model() != base_model_) {
        throw Error((t.dir() / "adapter_config.json").string(), "",
                    "base model '" + t.base_model() + "' differs from '" + base_model_ +
                        "' of the other adapters; only adapters of one base model can be merged");
      }
    }
  }
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < tasks_.size(); ++i) {
    for (const auto& m : tasks_[i].modules()) {
      auto [it, fresh] = index.emplace(m.name, modules_.size());
      if (fresh) modules_.push_back({m.name, m.in, m.out, std::vector<int64_t>(tasks_.size(), 0)});
      Module& mod = modules_[it->second];
      if (mod.in != m.in || mod.out != m.out) {
        size_t other = 0;
        while (mod.ranks[other] == 0) ++other;
        throw Error(tasks_[i].weights_path().string(), m.name,
                    "shape out x in = " + std::to_string(m.out) + " x " + std::to_string(m.in) + " but " +
                        tasks_[other].name() + " has " + std::to_string(mod.out) + " x " +
                        std::to_string(mod.in));
      }
      mod.ranks[i] = m.rank;
    }
  }
  std::sort(modules_.begin(), modules_.end(),
            [](const Module& a, const Module& b) { return natural_less(a.name, b.name); });
}

AdapterSet AdapterSet::open(const std::vector<std::string>& specs, const LoadOptions& options) {
  std::vector<Adapter> v;
  v.reserve(specs.size());
  for (auto& s : specs) v.push_back(Adapter::open(s, options));
  return AdapterSet(std::move(v));
}

std::vector<ModuleLora> AdapterSet::load(size_t m) const {
  std::vector<ModuleLora> out(tasks_.size());
  util::parallel_for(tasks_.size(), [&](size_t i) { out[i] = load(m, i); });
  return out;
}

ModuleLora AdapterSet::load(size_t m, size_t i) const {
  const Module& mod = modules_.at(m);
  if (mod.ranks.at(i) > 0) return tasks_.at(i).load(mod.name);
  ModuleLora l;
  l.A.setZero(0, mod.in);
  l.B.setZero(mod.out, 0);
  return l;
}

ModuleLoraT AdapterSet::load_transposed(size_t m, size_t i) const {
  const Module& mod = modules_.at(m);
  if (mod.ranks.at(i) > 0) return tasks_.at(i).load_transposed(mod.name);
  ModuleLoraT l;
  l.At.setZero(mod.in, 0);
  l.Bt.setZero(0, mod.out);
  return l;
}

std::vector<double> AdapterSet::scan(size_t i, std::string* sha256) const {
  std::vector<std::string> names;
  for (const Module& m : modules_) names.push_back(m.name);
  return tasks_.at(i).scan(names, sha256);
}

std::vector<double> AdapterSet::update_norms2(size_t m) const {
  const Module& mod = modules_.at(m);
  std::vector<double> out(tasks_.size(), 0.0);
  util::parallel_for(tasks_.size(), [&](size_t i) {
    if (mod.ranks[i] > 0) out[i] = tasks_[i].update_norm2(mod.name);
  });
  return out;
}

int64_t AdapterSet::original_params() const {
  int64_t p = 0;
  for (auto& t : tasks_) p += t.params();
  return p;
}

DType AdapterSet::dtype() const {
  DType d = tasks_[0].dtype();
  for (auto& t : tasks_) d = dtype_widest(d, t.dtype());
  return d;
}

}  // namespace hydraopt
