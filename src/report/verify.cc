// hydraopt verify: integrity of a bundle and, given its sources, its errors.
#include <cmath>
#include <map>

#include "hydraopt/bundle.h"
#include "hydraopt/error.h"
#include "io/bundle.h"
#include "io/safetensors.h"
#include "methods/fit_error.h"
#include "util/sha256.h"

namespace hydraopt {

namespace fs = std::filesystem;

VerifyReport verify_bundle(const fs::path& bundle, const std::vector<std::string>& specs,
                           const LoadOptions& options) {
  const std::string file = bundle.string();
  VerifyReport r;
  const io::SafetensorsFile st = io::SafetensorsFile::open(bundle);
  const io::Bundle b = io::bundle_parse(st);
  r.modules = b.modules.size();
  for (const auto& m : b.modules) {
    // The module's bytes in the order the writer stored them.
    util::Sha256 h;
    bool finite = true;
    for (const char* kind : {"head", "body", "core"}) {
      for (size_t j = 0;; ++j) {
        const io::TensorInfo* t = st.find(m.name + "." + kind + "." + std::to_string(j));
        if (!t) break;
        h.update(st.bytes(*t));
        for (const char* part : {".scales", ".minima"}) {  // an integer matrix's other tensors
          if (const io::TensorInfo* q = st.find(t->name + part)) h.update(st.bytes(*q));
        }
      }
    }
    for (const auto* list : {&m.fit.heads, &m.fit.bodies, &m.fit.cores}) {
      for (const auto& x : *list) finite = finite && x.allFinite();
    }
    for (double s : m.fit.scale) finite = finite && std::isfinite(s);
    if (!finite)
      r.problems.push_back(file + ": module '" + m.name + "': stored values are not all finite");
    if (m.sha256.empty()) continue;
    ++r.modules_checksummed;
    if (h.hex() != m.sha256) {
      r.problems.push_back(file + ": module '" + m.name +
                           "': tensor bytes do not match their recorded SHA-256");
    }
  }
  st.release();
  if (specs.empty()) return r;

  r.sources_checked = true;
  const AdapterSet set = AdapterSet::open(specs, options);
  std::map<std::string, size_t> in_set;
  for (size_t i = 0; i < set.size(); ++i) in_set[set.task(i).name()] = i;
  std::vector<size_t> source(b.tasks.size());  // bundle task -> set task
  for (size_t i = 0; i < b.tasks.size(); ++i) {
    auto it = in_set.find(b.tasks[i].name);
    if (it == in_set.end())
      throw Error(file, "",
                  "bundle task '" + b.tasks[i].name + "' is not among the adapters given");
    source[i] = it->second;
  }
  if (set.size() != b.tasks.size()) {
    throw Error(file, "",
                "the bundle has " + std::to_string(b.tasks.size()) + " tasks but " +
                    std::to_string(set.size()) + " adapters were given");
  }
  for (size_t i = 0; i < b.tasks.size(); ++i) {
    const fs::path w = set.task(source[i]).weights_path();
    if (util::sha256_file(w) != b.tasks[i].sha256) {
      r.problems.push_back(w.string() + ": differs from the adapter merged as task '" +
                           b.tasks[i].name + "' (SHA-256 " + b.tasks[i].sha256 + ")");
    }
  }
  std::map<std::string, const io::BundleModule*> by_name;
  for (const auto& m : b.modules) by_name[m.name] = &m;
  std::vector<double> err(b.tasks.size(), 0.0), norm(b.tasks.size(), 0.0);
  for (size_t mi = 0; mi < set.modules().size(); ++mi) {
    const auto& mod = set.modules()[mi];
    std::vector<ModuleLora> loras = set.load(mi);
    ModuleProblem p;
    p.weights.assign(b.tasks.size(), 1.0);
    for (size_t i = 0; i < b.tasks.size(); ++i) p.loras.push_back(std::move(loras[source[i]]));
    const std::vector<double> n2 = update_norms2(p);
    auto it = by_name.find(mod.name);
    if (it == by_name.end()) {
      for (size_t i = 0; i < n2.size(); ++i) err[i] += n2[i], norm[i] += n2[i];
      continue;
    }
    if (it->second->in != mod.in || it->second->out != mod.out) {
      throw Error(file, mod.name, "module shape differs from the adapters'");
    }
    const std::vector<double> e2 = fit_errors2(p, it->second->fit, &n2);
    for (size_t i = 0; i < n2.size(); ++i) err[i] += e2[i], norm[i] += n2[i];
  }
  double sum = 0;
  for (size_t i = 0; i < b.tasks.size(); ++i) {
    const double rel = relative_error(err[i], norm[i]);
    r.tasks.push_back({b.tasks[i].name, rel, std::nullopt});
    sum += rel;
  }
  r.mean_rel_error = sum / static_cast<double>(b.tasks.size());
  return r;
}

}  // namespace hydraopt
