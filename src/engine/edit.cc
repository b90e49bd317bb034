// Bundles that grow and shrink (include/hydraopt/edit.h): `hydraopt add`
// and `hydraopt remove`. One read of the bundle, the per-module steps of
// methods/edit.h (refit "none") or a merge whose targets are the stored
// tasks' reconstructions plus the new adapters (refit "touched"/"all"), a
// history entry, one atomic write. One file, a little over 500 lines, so that
// a newcomer finds all of add and remove in one place.
#include "hydraopt/edit.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fmt/format.h>
#include <map>
#include <set>
#include <thread>

#include "hydraopt/error.h"
#include "hydraopt/merge.h"
#include "io/atomic_file.h"
#include "io/bundle.h"
#include "io/safetensors.h"
#include "methods/edit.h"
#include "methods/fit_error.h"
#include "util/clock.h"
#include "util/parallel.h"
#include "util/sha256.h"

namespace hydraopt {

namespace fs = std::filesystem;

namespace {

using util::seconds_since;

int thread_count(int threads) {
  return threads > 0 ? threads : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
}

std::string refit_mode(const EditOptions& o, bool adding) {
  const bool budget = o.budget || o.budget_bytes;
  if (o.budget && o.budget_bytes) throw Error("give --budget or --budget-bytes, not both");
  if (o.budget && !(*o.budget > 0 && *o.budget <= 1)) {
    throw Error("--budget must be a fraction in (0, 1], got " + fmt::format("{}", *o.budget));
  }
  if (o.budget_bytes && *o.budget_bytes <= 0) throw Error("--budget-bytes must be positive");
  const std::string mode = o.refit.value_or(budget ? "all" : "none");
  if (mode != "none" && mode != "touched" && mode != "all") {
    throw Error("--refit must be none, touched or all, not '" + mode + "'");
  }
  if (mode == "none" && budget) throw Error("a budget needs a refit: --refit touched or all (--refit none keeps every stored factor)");
  if (mode == "touched" && !adding) throw Error("remove --refit takes none or all (no module is touched by a removal)");
  return mode;
}

// Each task's relative error as the history recorded it (added tasks only).
std::map<std::string, double> recorded_errors(const io::Bundle& b) {
  std::map<std::string, double> out;
  for (const auto& e : b.history) {
    if (e.refit != "none") out.clear();  // every task's factors fitted again
    if (e.op == "add") {
      for (size_t i = 0; i < e.tasks.size(); ++i) out[e.tasks[i]] = e.rel_errors[i];
    } else {
      for (const auto& t : e.tasks) out.erase(t);
    }
  }
  return out;
}

EditReport report_of(const io::Bundle& b, const std::string& op, const std::string& refit) {
  EditReport r;
  r.op = op;
  r.refit = refit;
  r.params = b.params_stored;
  r.original_params = b.original_params;
  r.bytes = b.params_stored * static_cast<int64_t>(dtype_size(b.dtype));
  r.fraction = b.original_params > 0 ? static_cast<double>(b.params_stored) / static_cast<double>(b.original_params) : 0;
  return r;
}

// The adapters can join the bundle: same base model and layout convention,
// new names, and every module they have is one of the bundle's, same shape.
void check_compatible(const io::Bundle& b, const AdapterSet& set, const std::string& file) {
  std::map<std::string, const io::BundleModule*> modules;
  for (const auto& m : b.modules) modules[m.name] = &m;
  std::set<std::string> names;
  for (const auto& t : b.tasks) names.insert(t.name);
  for (const Adapter& a : set.tasks()) {
    const std::string dir = a.dir().string();
    if (names.count(a.name())) throw Error(dir, "", "task '" + a.name() + "' is already in the bundle " + file);
    if (!a.base_model().empty() && !b.base_model.empty() && a.base_model() != b.base_model) {
      throw Error(dir, "", "base model '" + a.base_model() + "' differs from the bundle's '" + b.base_model + "' (" + file + ")");
    }
    if (a.fan_in_fan_out() != b.fan_in_fan_out) throw Error(dir, "", "fan_in_fan_out differs from the bundle's (" + file + ")");
    for (const AdapterModule& m : a.modules()) {
      const std::string tensor = "base_model.model." + m.name + ".lora_A.weight";
      auto it = modules.find(m.name);
      if (it == modules.end()) throw Error(a.weights_path().string(), tensor, "module is not in the bundle " + file);
      if (it->second->in != m.in || it->second->out != m.out) {
        throw Error(a.weights_path().string(), tensor,
                    fmt::format("module shape {} x {} differs from the bundle's {} x {} ({})", m.out, m.in,
                                it->second->out, it->second->in, file));
      }
    }
  }
}

// Appends each adapter of `set` to every module of `b` but those in `skip`
// (methods/edit.h), in place; their relative errors over those modules, in
// set order.
std::vector<double> add_none(io::Bundle& b, const AdapterSet& set, const std::set<std::string>& skip, int threads,
                             const std::string& file) {
  std::map<std::string, size_t> in_set;
  for (size_t m = 0; m < set.modules().size(); ++m) in_set[set.modules()[m].name] = m;
  const size_t n = set.size();
  std::vector<std::vector<AddedTask>> added(b.modules.size(), std::vector<AddedTask>(n));
  const util::InnerThreads inner(thread_count(threads));
  util::parallel_for(b.modules.size(), [&](size_t m) {
    io::BundleModule& bm = b.modules[m];
    if (skip.count(bm.name)) return;
    auto it = in_set.find(bm.name);
    for (size_t i = 0; i < n; ++i) {
      ModuleLora l;
      if (it != in_set.end()) l = set.load(it->second, i);
      if (l.A.size() == 0 && l.B.size() == 0) l = {Eigen::MatrixXd(0, bm.in), Eigen::MatrixXd(bm.out, 0), 1.0};
      added[m][i] = add_task(&bm.fit, &bm.spec, l, b.dtype);
      if (!std::isfinite(added[m][i].err2) || !std::isfinite(added[m][i].norm2)) {
        throw Error(file, bm.name, "the stored factors give no finite fit for task '" + set.task(i).name() +
                                       "' (non-finite stored values? see hydraopt verify)");
      }
    }
  });
  std::vector<double> rel(n);
  for (size_t i = 0; i < n; ++i) {
    double err2 = 0, norm2 = 0;
    for (const auto& a : added) err2 += a[i].err2, norm2 += a[i].norm2;
    rel[i] = relative_error(err2, norm2);
  }
  return rel;
}

int64_t stored_params(const io::Bundle& b) {
  int64_t p = 0;
  for (const auto& m : b.modules) p += m.fit.params();
  return p;
}

// A removed task's share of the original parameters: its rank on every
// module (exact when that is how the bundle's count came about, else a
// proportional share of the count).
int64_t original_params_of(const io::Bundle& b, const std::vector<bool>& drop) {
  int64_t per_rank = 0, all = 0, removed = 0;
  for (const auto& m : b.modules) per_rank += m.in + m.out;
  for (size_t i = 0; i < b.tasks.size(); ++i) {
    all += b.tasks[i].rank * per_rank;
    if (drop[i]) removed += b.tasks[i].rank * per_rank;
  }
  if (all == b.original_params || all == 0) return removed;
  return static_cast<int64_t>(std::llround(static_cast<double>(b.original_params) * static_cast<double>(removed) /
                                           static_cast<double>(all)));
}

// A scratch directory beside the output (same file system, writable),
// removed with everything in it at the end.
class Scratch {
 public:
  explicit Scratch(const fs::path& out) {
    fs::path dir = fs::absolute(out).parent_path();
    std::string templ = (dir / ("." + out.filename().string() + ".refit.XXXXXX")).string();
    if (!::mkdtemp(templ.data())) throw Error(out.string(), "", "cannot create a scratch directory beside it");
    path_ = templ;
  }
  ~Scratch() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// Storage for a refit: stored numbers (float factors) or bytes.
struct Storage {
  bool in_bytes = false;
  int64_t amount = 0;
  /// What one stored float number of `dtype` costs in this unit.
  int64_t per_number(DType dtype) const { return in_bytes ? static_cast<int64_t>(dtype_size(dtype)) : 1; }
  /// The bundle's recorded budget: float numbers' worth, as a fraction of `original`.
  double fraction(DType dtype, int64_t original) const {
    return static_cast<double>(amount / per_number(dtype)) / static_cast<double>(original);
  }
};

// The refit: the tasks of `b` marked in `keep`, their reconstructions as
// PEFT adapters (Bundle::task_adapter(task, least_rank = true) in F64,
// restricted to the modules `on`), and the adapters `added`, merged on those modules with b's method,
// parameters and dtype into `storage`. The result's tasks are b's kept
// tasks, with their provenance, then the added ones; `rel_errors` gets each
// task's error against its target.
io::Bundle refit_merge(const io::Bundle& b, const std::vector<bool>& keep, const std::vector<Adapter>& added,
                       const std::set<std::string>& on, const Storage& storage, int threads, const Scratch& scratch,
                       std::vector<double>* rel_errors) {
  std::vector<Adapter> adapters;
  std::vector<io::BundleTask> tasks;
  for (size_t i = 0; i < b.tasks.size(); ++i) {
    if (!keep[i]) continue;
    // At the least rank that holds each update (a refit of rank-inflated
    // targets would plan for ranks the tasks do not have), in double.
    io::PeftImage image = io::peft_image(b, i, true);
    std::vector<io::TensorData> tensors;
    const std::string prefix = "base_model.model.";  // <prefix><module>.lora_A.weight
    for (auto& [name, m] : image.tensors) {
      const std::string module = name.substr(prefix.size(), name.rfind(".lora_") - prefix.size());
      if (on.count(module)) tensors.push_back(io::tensor_from_matrix(name, m, DType::F64));
    }
    const fs::path dir = scratch.path() / b.tasks[i].name;
    fs::create_directories(dir);
    io::write_file_atomic(dir / "adapter_config.json", image.config);
    io::safetensors_write(dir / "adapter_model.safetensors", std::move(tensors), {{"format", "pt"}});
    adapters.push_back(Adapter::open(dir.string()));
    tasks.push_back(b.tasks[i]);
  }
  for (const Adapter& a : added) adapters.push_back(a);
  const AdapterSet set(std::move(adapters));
  MergeOptions mo;
  mo.method = b.method;
  mo.params = b.params;
  if (storage.in_bytes) {
    mo.budget_bytes = storage.amount;
  } else {
    // As a fraction of what this merge's inputs count (the reconstructions
    // at their least rank), so that it stores `amount` numbers.
    mo.budget = static_cast<double>(storage.amount) / static_cast<double>(set.original_params());
  }
  mo.dtype = b.dtype;
  mo.threads = threads;
  const fs::path path = scratch.path() / "refit.safetensors";
  const MergeReport report = merge(set, mo, path);
  io::Bundle out = io::bundle_read(path);
  for (size_t i = tasks.size(); i < out.tasks.size(); ++i) tasks.push_back(out.tasks[i]);
  out.tasks = std::move(tasks);
  rel_errors->clear();
  for (const auto& t : report.tasks) rel_errors->push_back(t.rel_error);
  return out;
}

// A refit's storage, in merge's two units: `--budget F` (and the defaults)
// count stored numbers with float factors, as `merge --budget F` does, so a
// refit of a float bundle stays float and can be added to again;
// `--budget-bytes B` counts bytes, and the planner may store integers.
Storage refit_storage(const EditOptions& o, double default_fraction, int64_t default_params, int64_t original) {
  if (o.budget_bytes) return {true, *o.budget_bytes};
  if (o.budget || default_params <= 0) {
    return {false, static_cast<int64_t>(std::floor(o.budget.value_or(default_fraction) * static_cast<double>(original)))};
  }
  return {false, default_params};
}

// --- Copying stored bytes (refit "none"): the bundle is read without its
// values, the few matrices a new task is fitted against are decoded, and
// every kept tensor goes to the output byte for byte.

using io::tensor_name;

// io::check_destination, and not onto a directory.
void check_output(const fs::path& out) {
  io::check_destination(out);
  if (fs::is_directory(out)) throw Error(out.string(), "", "is a directory");
}

// Decodes the stored matrices add_task reads into `m`'s fit (left empty by
// io::bundle_parse without values).
void decode_reads(const io::SafetensorsFile& st, io::BundleModule& m) {
  const StoredReads reads = add_task_reads(m.fit, m.spec);
  auto decode = [&](const char* kind, std::vector<Eigen::MatrixXd>& list, const std::vector<bool>& read) {
    for (size_t j = 0; j < read.size(); ++j) {
      if (!read[j]) continue;
      const std::string name = tensor_name(m.name, kind, j);
      if (list[j].size() == 0) list[j] = st.matrix(*st.find(name));
      if (!list[j].allFinite()) throw Error(st.path(), name, "stored values are not finite (see hydraopt verify)");
    }
  };
  decode("head", m.fit.heads, reads.heads);
  decode("body", m.fit.bodies, reads.bodies);
}

// Where each stored matrix of an edited module comes from: the index of a
// stored tensor of the source module, or -1 for a new matrix of its fit.
struct Origins {
  std::vector<int> heads, bodies, cores;
};

// Writes module m of the edited bundle: the source module's tensors that
// `from` names, as they are, and the fit's new matrices, encoded. The source
// module's bytes are checked against their recorded SHA-256 on the way (so
// a damaged bundle is not passed on under a fresh checksum), and the new
// module's is computed from the state after the prefix they share.
void write_copied(const io::SafetensorsFile& st, const io::BundleModule& source, const io::BundleModule& edited,
                  const Origins& from, DType dtype, io::BundleWriter& writer, size_t m) {
  const std::string& file = st.path();
  std::vector<std::span<const std::byte>> old_pieces;
  for (const char* kind : {"head", "body", "core"}) {
    for (size_t j = 0;; ++j) {
      const io::TensorInfo* t = st.find(tensor_name(source.name, kind, j));
      if (!t) break;
      if (t->dtype != dtype) {
        throw Error(file, t->name, std::string("stored as ") + std::string(dtype_name(t->dtype)) + ", not the bundle's " +
                                       std::string(dtype_name(dtype)));
      }
      old_pieces.push_back(st.bytes(*t));
    }
  }
  std::vector<io::BundleWriter::StoredTensor> tensors;
  std::vector<io::TensorData> encoded;
  encoded.reserve(edited.fit.heads.size() + edited.fit.bodies.size() + edited.fit.cores.size());
  int64_t params = 0;
  auto add = [&](const char* kind, const std::vector<Eigen::MatrixXd>& list, const std::vector<int>& origin) {
    for (size_t j = 0; j < list.size(); ++j) {
      const std::string name = tensor_name(edited.name, kind, j);
      if (origin[j] >= 0) {
        const io::TensorInfo& t = *st.find(tensor_name(source.name, kind, static_cast<size_t>(origin[j])));
        tensors.push_back({name, t.shape, st.bytes(t)});
        params += t.numel();
      } else {
        const bool vector = edited.fit.diagonal_cores && std::string(kind) == "core";
        encoded.push_back(vector ? io::tensor_from_vector(name, list[j].col(0), dtype)
                                 : io::tensor_from_matrix(name, list[j], dtype));
        tensors.push_back({name, encoded.back().shape, encoded.back().bytes});
        params += list[j].size();
      }
    }
  };
  add("head", edited.fit.heads, from.heads);
  add("body", edited.fit.bodies, from.bodies);
  add("core", edited.fit.cores, from.cores);
  size_t shared = 0;  // leading pieces the old and new modules have in common
  while (shared < old_pieces.size() && shared < tensors.size() && tensors[shared].bytes.data() == old_pieces[shared].data() &&
         tensors[shared].bytes.size() == old_pieces[shared].size()) {
    ++shared;
  }
  util::Sha256 old_sha;
  for (size_t k = 0; k < shared; ++k) old_sha.update(old_pieces[k]);
  util::Sha256 new_sha(old_sha);
  for (size_t k = shared; k < old_pieces.size(); ++k) old_sha.update(old_pieces[k]);
  if (!source.sha256.empty() && old_sha.hex() != source.sha256) {
    throw Error(file, source.name, "tensor bytes do not match their recorded SHA-256 (see hydraopt verify)");
  }
  for (size_t k = shared; k < tensors.size(); ++k) new_sha.update(tensors[k].bytes);
  writer.write_stored(m, edited, tensors, params, new_sha.hex());
}

// Writes `b` (edited from `source`, read from `st` without values) to
// `out`: per module, the tensors `origins` names copied and the new ones
// encoded.
void write_edited(const io::SafetensorsFile& st, const io::Bundle& source, io::Bundle& b,
                  const std::vector<Origins>& origins, const fs::path& out, int threads) {
  std::vector<int64_t> params(b.modules.size(), 0);
  for (size_t m = 0; m < b.modules.size(); ++m) {
    const auto& f = b.modules[m].fit;
    auto count = [&](const char* kind, const std::vector<Eigen::MatrixXd>& list, const std::vector<int>& origin) {
      for (size_t j = 0; j < list.size(); ++j) {
        params[m] += origin[j] >= 0
                         ? st.find(tensor_name(source.modules[m].name, kind, static_cast<size_t>(origin[j])))->numel()
                         : list[j].size();
      }
    };
    count("head", f.heads, origins[m].heads);
    count("body", f.bodies, origins[m].bodies);
    count("core", f.cores, origins[m].cores);
  }
  io::BundleWriter writer(out, b.dtype, b.modules.size());
  std::vector<int64_t> bytes;  // float factors only (check_float_only)
  for (int64_t p : params) bytes.push_back(p * static_cast<int64_t>(dtype_size(b.dtype)));
  writer.expect(bytes);
  const util::InnerThreads inner(thread_count(threads));
  util::parallel_for(b.modules.size(), [&](size_t m) {
    write_copied(st, source.modules[m], b.modules[m], origins[m], b.dtype, writer, m);
  });
  b.params_stored = 0;
  for (int64_t p : params) b.params_stored += p;
  writer.finish(b);
}

}  // namespace

namespace {

// Bundles whose factors are stored as integers (byte budgets, issue 17)
// are not edited yet: a new task's factors would have to be stored in each
// module's formats, and their tensors copied in threes.
void check_float_only(const io::Bundle& b, const std::string& file) {
  for (const auto& m : b.modules) {
    if (!m.precision.all_float()) {
      throw Error(file, m.name, "stores factors as integers (" + m.precision.label() +
                                    "): add and remove edit bundles of float factors only, for now");
    }
  }
}

}  // namespace

EditReport add_adapters(const fs::path& bundle, const AdapterSet& set, const EditOptions& o, const fs::path& out) {
  const auto t0 = std::chrono::steady_clock::now();
  const std::string refit = refit_mode(o, true);
  check_output(out);
  // Without a refit the stored tensors are copied as they are: only the
  // layout is read, and the matrices the new tasks are fitted against.
  const io::SafetensorsFile st = io::SafetensorsFile::open(bundle);
  io::Bundle b = io::bundle_parse(st, refit != "none");
  const std::string file = bundle.string();
  check_float_only(b, file);
  check_compatible(b, set, file);
  std::map<std::string, double> recorded = recorded_errors(b);
  const size_t old_tasks = b.tasks.size();
  const int64_t original = b.original_params + set.original_params();

  // The modules fitted again: none, all, or those the new adapters have.
  std::set<std::string> refit_on;
  for (const auto& m : b.modules) {
    bool touched = refit == "all";
    for (const Adapter& a : set.tasks()) touched = touched || (refit == "touched" && a.find(m.name));
    if (touched) refit_on.insert(m.name);
  }
  io::BundleEdit edit{"add", {}, refit, {}, {}};
  for (const Adapter& a : set.tasks()) edit.tasks.push_back(a.name());
  // The others keep their stored factors; the new tasks' own are appended.
  // (Where no new adapter has a module, the new tasks' update there is zero,
  // so a refit's errors over its modules are their errors over all.)
  const io::Bundle source = b;  // (without a refit: the layout and a few matrices)
  for (auto& m : b.modules) decode_reads(st, m);
  edit.rel_errors = add_none(b, set, refit_on, o.threads, file);
  std::vector<double> refit_errors;
  if (refit_on.empty()) {
    for (size_t i = 0; i < set.size(); ++i) {
      const Adapter& a = set.task(i);
      std::string sha;
      set.scan(i, &sha);  // the source's SHA-256, as merge records it
      b.tasks.push_back({a.name(), a.dir().string(), sha, a.rank(), a.alpha(), a.use_rslora(), a.target_modules()});
    }
  } else {
    Storage storage = refit_storage(o, b.budget, 0, original);
    b.budget = storage.fraction(b.dtype, original);
    for (const auto& m : b.modules) {
      if (!refit_on.count(m.name)) storage.amount -= m.fit.params() * storage.per_number(b.dtype);
    }
    if (storage.amount <= 0) throw Error(file, "", "the budget does not cover the modules the new adapters leave untouched");
    const Scratch scratch(out);
    io::Bundle fitted = refit_merge(b, std::vector<bool>(old_tasks, true), set.tasks(), refit_on, storage, o.threads,
                                    scratch, &refit_errors);
    for (auto& m : b.modules) {
      for (auto& f : fitted.modules) {
        if (f.name == m.name) m = std::move(f);
      }
    }
    for (size_t i = 0; i < old_tasks; ++i) edit.reconstructed.push_back(b.tasks[i].name);
    b.tasks = std::move(fitted.tasks);
    std::copy(refit_errors.begin() + static_cast<long>(old_tasks), refit_errors.end(), edit.rel_errors.begin());
  }
  b.original_params = original;
  b.history.push_back(edit);
  if (!refit_on.empty()) b.calibration.reset();  // refitted without statistics
  if (refit_on.empty()) {
    // Every stored tensor kept at its index; the new matrices after them.
    std::vector<Origins> origins(b.modules.size());
    for (size_t m = 0; m < b.modules.size(); ++m) {
      auto keep = [](size_t stored, size_t now) {
        std::vector<int> from(now, -1);
        for (size_t j = 0; j < stored; ++j) from[j] = static_cast<int>(j);
        return from;
      };
      const ModuleFit &was = source.modules[m].fit, &is = b.modules[m].fit;
      origins[m] = {keep(was.heads.size(), is.heads.size()), keep(was.bodies.size(), is.bodies.size()),
                    keep(was.cores.size(), is.cores.size())};
    }
    write_edited(st, source, b, origins, out, o.threads);
  } else {
    b.params_stored = stored_params(b);
    io::bundle_write(out, b);
  }

  EditReport r = report_of(b, "add", refit);
  double kept_sum = 0;
  int kept_known = 0;
  for (size_t i = 0; i < b.tasks.size(); ++i) {
    EditedTask t{b.tasks[i].name, "kept", std::nullopt, false};
    if (i >= old_tasks) {
      t.status = "added";
      t.rel_error = edit.rel_errors[i - old_tasks];
    } else if (!refit_on.empty()) {
      t.status = "refit";
      t.reconstructed = true;
      t.rel_error = refit_errors[i];  // against its reconstruction, on the refit modules
    } else if (auto it = recorded.find(t.name); it != recorded.end()) {
      t.rel_error = it->second;
      kept_sum += it->second;
      ++kept_known;
    }
    r.tasks.push_back(std::move(t));
  }
  // "Far above the bundle's": twice the recorded mean error of the other
  // tasks and 0.1 above it; with none recorded (a bundle as merge wrote it),
  // above 0.5, where the stored factors miss a quarter of the task's energy.
  const double ref = kept_known ? kept_sum / kept_known : -1;
  for (size_t i = 0; refit_on.empty() && i < set.size(); ++i) {
    const double e = edit.rel_errors[i];
    if (ref >= 0 ? e <= std::max(2 * ref, ref + 0.1) : e <= 0.5) continue;
    r.warnings.push_back(fmt::format(
        "task '{}' fits the stored shared factors badly (rel. error {:.3f}, {}): consider --refit all --budget F",
        set.task(i).name(), e, ref >= 0 ? fmt::format("the bundle's recorded mean {:.3f}", ref) : "above 0.5"));
  }
  r.seconds = seconds_since(t0);
  return r;
}

EditReport remove_tasks(const fs::path& bundle, const std::vector<std::string>& names, const EditOptions& o,
                        const fs::path& out) {
  const auto t0 = std::chrono::steady_clock::now();
  const std::string refit = refit_mode(o, false);
  if (names.empty()) throw Error("remove needs at least one --task");
  check_output(out);
  const io::SafetensorsFile st = io::SafetensorsFile::open(bundle);
  io::Bundle b = io::bundle_parse(st, refit != "none");  // without a refit: the layout only
  const std::string file = bundle.string();
  check_float_only(b, file);
  std::vector<bool> drop(b.tasks.size(), false), keep(b.tasks.size(), true);
  for (const auto& name : names) {
    const size_t i = io::task_index(b, name, file);
    if (drop[i]) throw Error(file, "", "task '" + name + "' is named twice");
    drop[i] = true;
    keep[i] = false;
  }
  if (std::count(drop.begin(), drop.end(), true) == static_cast<long>(drop.size())) {
    throw Error(file, "", "cannot remove every task of a bundle");
  }
  const std::map<std::string, double> recorded = recorded_errors(b);
  const int64_t original = b.original_params - original_params_of(b, drop);
  io::BundleEdit edit{"remove", names, refit, {}, {}};
  std::vector<double> refit_errors;
  const io::Bundle source = b;
  std::vector<Origins> origins(b.modules.size());
  if (refit == "none") {
    for (size_t m = 0; m < b.modules.size(); ++m) {
      KeptMatrices kept = remove_tasks(&b.modules[m].fit, drop);
      origins[m] = {std::move(kept.heads), std::move(kept.bodies), std::move(kept.cores)};
    }
    std::vector<io::BundleTask> tasks;
    for (size_t i = 0; i < b.tasks.size(); ++i) {
      if (keep[i]) tasks.push_back(std::move(b.tasks[i]));
    }
    b.tasks = std::move(tasks);
  } else {
    // The freed space spent on the remaining tasks: by default the storage
    // the bundle had.
    const Storage storage = refit_storage(o, b.budget, b.params_stored, original);
    b.budget = storage.fraction(b.dtype, original);
    std::set<std::string> all;
    for (const auto& m : b.modules) all.insert(m.name);
    const Scratch scratch(out);
    io::Bundle fitted = refit_merge(b, keep, {}, all, storage, o.threads, scratch, &refit_errors);
    b.modules = std::move(fitted.modules);
    b.tasks = std::move(fitted.tasks);
    for (const auto& t : b.tasks) edit.reconstructed.push_back(t.name);
  }
  b.original_params = original;
  b.history.push_back(edit);
  if (refit != "none") b.calibration.reset();  // refitted without statistics
  if (refit == "none") {
    write_edited(st, source, b, origins, out, o.threads);
  } else {
    b.params_stored = stored_params(b);
    io::bundle_write(out, b);
  }

  EditReport r = report_of(b, "remove", refit);
  r.removed = names;
  for (size_t i = 0; i < b.tasks.size(); ++i) {
    EditedTask t{b.tasks[i].name, "kept", std::nullopt, false};
    if (refit != "none") {
      t.status = "refit";
      t.reconstructed = true;
      t.rel_error = refit_errors[i];
    } else if (auto it = recorded.find(t.name); it != recorded.end()) {
      t.rel_error = it->second;
    }
    r.tasks.push_back(std::move(t));
  }
  r.seconds = seconds_since(t0);
  return r;
}

}  // namespace hydraopt
