#include "io/bundle.h"

#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <mutex>
#include <span>
#include <set>
#include <nlohmann/json.hpp>

#include "hydraopt/bundle.h"
#include "hydraopt/error.h"
#include "io/atomic_file.h"
#include "io/json_fields.h"
#include "io/safetensors.h"
#include "util/parallel.h"
#include "io/utf8.h"
#include "core/quant.h"
#include "util/sha256.h"
#include "util/wire.h"

namespace hydraopt::io {

namespace fs = std::filesystem;
using nlohmann::ordered_json;
using Eigen::MatrixXd;

std::string tensor_name(const std::string& module, const char* kind, size_t j) {
  return module + "." + kind + "." + std::to_string(j);
}

namespace {

constexpr const char* kFormat = "hydraopt.bundle";
// Bundles' tensor data starts at a multiple of this (the header padded
// with spaces): the page size, and the block size that lets finish() put
// the header in front of data already written (AtomicFile::insert_front).
constexpr uint64_t kDataAlign = 4096;
constexpr int64_t kMaxBundleIndex = 1 << 24;  // heads/cores/bodies per module
constexpr int64_t kMaxDim = int64_t{1} << 40;

// The roles' names in the metadata ("precision", "shapes") and in tensor
// names (role_name).
constexpr const char* kKinds[] = {"head", "body", "core"};

// `kind` is one of kKinds (checked where read).
const std::optional<QuantFormat>& kind_format(const Precision& p, const std::string& kind) {
  return p.of(*role_named(kind));
}

std::optional<QuantFormat>& kind_format(Precision& p, const std::string& kind) { return p.of(*role_named(kind)); }

const std::vector<MatrixXd>& kind_list(const ModuleFit& f, const std::string& kind) {
  return kind == "head" ? f.heads : kind == "body" ? f.bodies : f.cores;
}

TensorData f16_tensor(std::string name, const std::vector<uint16_t>& bits) {
  TensorData t{std::move(name), DType::F16, {static_cast<int64_t>(bits.size())}, {}};
  t.bytes.resize(bits.size() * 2);
  for (size_t i = 0; i < bits.size(); ++i) {  // little-endian
    t.bytes[2 * i] = static_cast<std::byte>(bits[i] & 0xff);
    t.bytes[2 * i + 1] = static_cast<std::byte>(bits[i] >> 8);
  }
  return t;
}

// A matrix stored in `f`: `name` (U8, the packed codes), `name`.scales and,
// asymmetric, `name`.minima (F16, one per group), in that order. `m` holds
// values the format stores exactly (store_in_precision's output): storing
// anything else would silently change the fit.
std::vector<TensorData> quantized_tensors(const std::string& name, const MatrixXd& m, const QuantFormat& f) {
  const QuantizedMatrix q = quantize(m, f);
  if (dequantize(q) != m) throw std::logic_error(name + ": values are not on the " + f.name() + " grid");
  std::vector<TensorData> out;
  TensorData codes{name, DType::U8, {static_cast<int64_t>(q.codes.size())}, {}};
  codes.bytes.resize(q.codes.size());
  std::memcpy(codes.bytes.data(), q.codes.data(), q.codes.size());
  out.push_back(std::move(codes));
  out.push_back(f16_tensor(name + ".scales", q.scales));
  if (!f.symmetric) out.push_back(f16_tensor(name + ".minima", q.minima));
  return out;
}

std::vector<uint16_t> f16_bits(const SafetensorsFile& st, const TensorInfo& t) {
  const auto bytes = st.bytes(t);
  std::vector<uint16_t> v(bytes.size() / 2);
  for (size_t i = 0; i < v.size(); ++i) {
    v[i] = static_cast<uint16_t>(static_cast<unsigned>(bytes[2 * i]) | static_cast<unsigned>(bytes[2 * i + 1]) << 8);
  }
  return v;
}

ordered_json plan_entry(const std::string& name, int64_t in, int64_t out, const StructureSpec& spec,
                        int64_t params, const Precision& precision) {
  ordered_json j = {{"name", name},         {"in", in},
                    {"out", out},           {"structure", spec.label()},
                    {"family", family_name(spec.family)}, {"rank", spec.rank},
                    {"groups", spec.groups}, {"params", params}};
  if (!precision.all_float()) {
    j["precision"] = ordered_json::object();
    for (const char* kind : kKinds) {
      if (const auto& f = kind_format(precision, kind)) j["precision"][kind] = f->name();
    }
  }
  return j;
}

ordered_json plan_entry(const BundleModule& m, bool with_layout, int64_t params) {
  ordered_json j = plan_entry(m.name, m.in, m.out, m.spec, params, m.precision);
  if (with_layout && !m.precision.all_float()) {
    ordered_json shapes = ordered_json::object();
    for (const char* kind : kKinds) {
      if (!kind_format(m.precision, kind)) continue;
      shapes[kind] = ordered_json::array();
      for (const auto& x : kind_list(m.fit, kind)) shapes[kind].push_back({x.rows(), x.cols()});
    }
    j["shapes"] = shapes;
  }
  if (with_layout) {
    j["diagonal_cores"] = m.fit.diagonal_cores;
    j["head_of"] = m.fit.head_of;
    j["core_of"] = m.fit.core_of;
    j["body_of"] = m.fit.body_of;
    j["scale"] = m.fit.scale;
  }
  return j;
}

ordered_json history_json(const std::vector<BundleEdit>& history) {
  ordered_json out = ordered_json::array();
  for (const auto& e : history) {
    ordered_json j = {{"op", e.op}, {"tasks", e.tasks}, {"refit", e.refit}, {"reconstructed", e.reconstructed}};
    if (e.op == "add") j["rel_errors"] = e.rel_errors;
    out.push_back(std::move(j));
  }
  return out;
}

std::vector<std::string> name_list(const ordered_json& v, const std::string& file, const std::string& what) {
  if (!v.is_array()) throw Error(file, "", "history: " + what + " is not a list");
  std::vector<std::string> out;
  for (const auto& x : v) {
    if (!x.is_string()) throw Error(file, "", "history: " + what + " holds a non-string");
    out.push_back(x.get<std::string>());
    check_task_name(out.back(), file);
  }
  return out;
}

// The "calibration" record (untrusted): a shrinkage in [0, 1], for tasks
// of the bundle their statistics' SHA-256 (64 hex digits, or ""), and
// optionally the plan's metric and the rounds.
BundleCalibration parse_calibration(const nlohmann::json& c, const Bundle& b, const std::string& file) {
  auto bad = [&](const std::string& why) { return Error(file, "", "bundle calibration record: " + why); };
  if (!c.is_object()) throw bad("not an object");
  BundleCalibration out;
  const auto s = c.find("shrinkage");
  if (s == c.end() || !s->is_number() || !(s->get<double>() >= 0 && s->get<double>() <= 1)) {
    throw bad("shrinkage is not a number in [0, 1]");
  }
  out.shrinkage = s->get<double>();
  if (const auto p = c.find("plan"); p != c.end()) {
    if (!p->is_string() || (p->get<std::string>() != "calibrated" && p->get<std::string>() != "frobenius")) {
      throw bad("plan is not \"calibrated\" or \"frobenius\"");
    }
    out.plan = p->get<std::string>();
  }
  if (const auto r = c.find("rounds"); r != c.end()) {
    if (!r->is_number_integer() || r->get<int64_t>() < 0 || r->get<int64_t>() > 1000000) {
      throw bad("rounds is not an integer in [0, 1000000]");
    }
    out.rounds = static_cast<int>(r->get<int64_t>());
  }
  const auto st = c.find("statistics");
  if (st == c.end() || !st->is_object()) throw bad("statistics is not an object");
  for (const auto& item : st->items()) {
    const std::string& task = item.key();
    const auto& sha = item.value();
    if (std::none_of(b.tasks.begin(), b.tasks.end(), [&](const BundleTask& t) { return t.name == task; })) {
      throw bad("statistics of task '" + task + "', which the bundle does not have");
    }
    const bool hex = sha.is_string() && (sha.get<std::string>().empty() || sha.get<std::string>().size() == 64) &&
                     sha.get<std::string>().find_first_not_of("0123456789abcdef") == std::string::npos;
    if (!hex) throw bad("the statistics checksum of task '" + task + "' is not a SHA-256");
    out.statistics[task] = sha.get<std::string>();
  }
  return out;
}

// The "history" list (untrusted): every field typed and in range.
std::vector<BundleEdit> parse_history(const ordered_json& h, const std::string& file) {
  if (!h.is_array()) throw Error(file, "", "history is not a list");
  std::vector<BundleEdit> out;
  for (const auto& j : h) {
    if (!j.is_object()) throw Error(file, "", "history entry is not an object");
    BundleEdit e;
    e.op = j.at("op").get<std::string>();
    if (e.op != "add" && e.op != "remove") throw Error(file, "", "history: unknown op '" + e.op + "'");
    e.tasks = name_list(j.at("tasks"), file, "tasks");
    if (e.tasks.empty()) throw Error(file, "", "history: an " + e.op + " entry names no tasks");
    e.refit = j.at("refit").get<std::string>();
    if (e.refit != "none" && e.refit != "touched" && e.refit != "all") {
      throw Error(file, "", "history: unknown refit '" + e.refit + "'");
    }
    e.reconstructed = name_list(j.at("reconstructed"), file, "reconstructed");
    if (e.op == "add") {
      const auto& errs = j.at("rel_errors");
      if (!errs.is_array() || errs.size() != e.tasks.size()) {
        throw Error(file, "", "history: rel_errors must list one number per added task");
      }
      for (const auto& x : errs) {
        if (!x.is_number() || !std::isfinite(x.get<double>()) || x.get<double>() < 0) {
          throw Error(file, "", "history: a rel_error is not a finite number >= 0");
        }
        e.rel_errors.push_back(x.get<double>());
      }
    } else if (j.contains("rel_errors")) {
      throw Error(file, "", "history: a remove entry has rel_errors");
    }
    out.push_back(std::move(e));
  }
  return out;
}

std::vector<int> index_list(const ordered_json& v, int lo, const std::string& file, const std::string& tensor,
                            const std::string& what) {
  if (!v.is_array()) throw Error(file, tensor, what + " is not a list");
  std::vector<int> out;
  out.reserve(v.size());
  for (const auto& x : v) out.push_back(static_cast<int>(int_field(x, lo, kMaxBundleIndex, file, tensor, what)));
  return out;
}

}  // namespace

std::string plan_entry_json(const std::string& name, int64_t in, int64_t out, const StructureSpec& spec,
                            int64_t params, const Precision& precision) {
  return plan_entry(name, in, out, spec, params, precision).dump();
}

struct BundleWriter::Impl {
  struct Tensor {
    std::string name;
    DType dtype = DType::F32;
    std::vector<int64_t> shape;
    uint64_t bytes = 0;
  };
  struct Module {
    bool written = false;
    uint64_t spool_offset = 0, bytes = 0;
    int64_t params = 0;
    bool quantized = false;       // some role stored as integers (format version 2)
    std::vector<Tensor> tensors;  // in byte order
    ordered_json entry;           // plan entry with layout
  };
  fs::path path;  // empty: spool only
  DType dtype;
  // Where the modules' bytes go. Once expect() has fixed the layout, straight
  // into the bundle's unnamed temporary file at their final places (data
  // offsets; finish() inserts the header in front). Otherwise appended to an
  // unlinked spool file, which finish() copies in module order.
  std::unique_ptr<AtomicFile> direct;
  std::vector<uint64_t> offset;  // with `direct`: module m's data is [offset[m], offset[m + 1])
  int spool = -1;
  mutable std::mutex mu;
  uint64_t spool_end = 0;
  std::vector<Module> modules;

  int data_fd() const { return direct ? direct->fd() : spool; }

  std::string spool_name() const { return path.empty() ? "hydraopt spool" : path.string(); }

  // An unlinked file in `dir`: nothing to clean up, whatever happens.
  void open_spool(const fs::path& dir, const std::string& leaf) {
    std::string templ = (dir / leaf).string();
    spool = ::mkstemp(templ.data());
    if (spool < 0) {
      throw Error(path.empty() ? templ : path.string(), "",
                  std::string("cannot create output file: ") + std::strerror(errno));
    }
    ::unlink(templ.c_str());
  }

  void pread_all(char* data, size_t size, uint64_t at) const {
    size_t done = 0;
    while (done < size) {
      ssize_t n = ::pread(data_fd(), data + done, size - done, static_cast<off_t>(at + done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) throw Error(spool_name(), "", std::string("read failed: ") + std::strerror(errno));
      done += static_cast<size_t>(n);
    }
  }

  // Stores module m, whose tensors' bytes (rec.bytes in all) are the
  // consecutive `pieces`: appended to the spool. Their SHA-256 is computed
  // unless given.
  void store(size_t m, Module rec, const std::vector<std::span<const std::byte>>& pieces,
             const std::string* sha256 = nullptr) {
    if (m >= modules.size()) throw std::logic_error("bundle module index out of range");
    rec.written = true;
    if (sha256) {
      rec.entry["sha256"] = *sha256;
    } else {
      util::Sha256 sha;
      for (auto piece : pieces) sha.update(piece);
      rec.entry["sha256"] = sha.hex();  // `hydraopt verify` checks it
    }
    {
      std::lock_guard<std::mutex> lock(mu);
      if (modules[m].written) throw std::logic_error("bundle module written twice");
      if (direct) {
        if (rec.bytes != offset[m + 1] - offset[m]) {
          throw std::logic_error("bundle module size differs from the expected layout");
        }
        rec.spool_offset = offset[m];
      } else {
        rec.spool_offset = spool_end;
        spool_end += rec.bytes;
      }
    }
    uint64_t at = rec.spool_offset;
    for (auto piece : pieces) {
      if (direct) direct->write_at(piece, at);
      else write_all_at(spool, piece, at, spool_name());
      at += piece.size();
    }
    std::lock_guard<std::mutex> lock(mu);
    modules[m] = std::move(rec);
  }
};

BundleWriter::BundleWriter(fs::path path, DType dtype, size_t modules) : impl_(std::make_unique<Impl>()) {
  impl_->path = std::move(path);
  impl_->dtype = dtype;
  impl_->modules.resize(modules);
  fs::path dir = impl_->path.parent_path();
  if (dir.empty()) dir = ".";
  std::string leaf = ".";  // (not "." + ...: GCC 12 warns falsely, -Wrestrict)
  leaf += impl_->path.filename().string();
  leaf += ".spool.XXXXXX";
  impl_->open_spool(dir, leaf);
}

BundleWriter::BundleWriter(DType dtype, size_t modules) : impl_(std::make_unique<Impl>()) {
  impl_->dtype = dtype;
  impl_->modules.resize(modules);
  std::error_code ec;
  fs::path dir = fs::temp_directory_path(ec);
  if (ec) dir = "/tmp";
  impl_->open_spool(dir, "hydraopt.spool.XXXXXX");
}

BundleWriter::~BundleWriter() {
  if (impl_->spool >= 0) ::close(impl_->spool);
}

void BundleWriter::write_module(size_t m, const BundleModule& module) {
  Impl& w = *impl_;
  const ModuleFit& f = module.fit;
  // Heads, bodies, cores, each in index order; a quantized one as several tensors.
  std::vector<std::pair<const char*, size_t>> items;
  for (const char* kind : kKinds) {
    for (size_t j = 0; j < kind_list(f, kind).size(); ++j) items.emplace_back(kind, j);
  }
  std::vector<std::vector<TensorData>> stored(items.size());
  util::parallel_for(items.size(), [&](size_t i) {
    const auto [kind, j] = items[i];
    const std::string name = tensor_name(module.name, kind, j);
    const MatrixXd& x = kind_list(f, kind)[j];
    if (const auto& format = kind_format(module.precision, kind)) {
      stored[i] = quantized_tensors(name, x, *format);
    } else if (f.diagonal_cores && std::string(kind) == "core") {
      stored[i].push_back(tensor_from_vector(name, x.col(0), w.dtype));
    } else {
      stored[i].push_back(tensor_from_matrix(name, x, w.dtype));
    }
  });
  Impl::Module rec;
  std::vector<std::span<const std::byte>> pieces;
  for (auto& list : stored) {
    for (auto& t : list) {
      pieces.emplace_back(t.bytes);
      rec.bytes += t.bytes.size();
      rec.tensors.push_back({std::move(t.name), t.dtype, std::move(t.shape), t.bytes.size()});
    }
  }
  rec.params = f.params();
  rec.quantized = !module.precision.all_float();
  rec.entry = plan_entry(module, true, rec.params);
  w.store(m, std::move(rec), pieces);
}

void BundleWriter::write_stored(size_t m, const BundleModule& module, const std::vector<StoredTensor>& tensors,
                                int64_t params, const std::string& sha256) {
  // (hydraopt add / remove refuse bundles with integer roles, whose
  // matrices are several tensors each.)
  if (!module.precision.all_float()) throw std::logic_error("write_stored: a module with integer roles");
  Impl::Module rec;
  std::vector<std::span<const std::byte>> pieces;
  for (const auto& t : tensors) {
    pieces.push_back(t.bytes);
    rec.bytes += t.bytes.size();
    rec.tensors.push_back({t.name, impl_->dtype, t.shape, t.bytes.size()});
  }
  if (rec.bytes != static_cast<uint64_t>(params) * dtype_size(impl_->dtype)) {
    throw std::logic_error("write_stored: tensor bytes differ from the module's params");
  }
  rec.params = params;
  rec.entry = plan_entry(module, true, params);
  impl_->store(m, std::move(rec), pieces, &sha256);
}

// Message: tensor count, per tensor (name, shape, byte count), params, the
// plan entry as JSON text, then the tensors' bytes.
std::string BundleWriter::encoded_module(size_t m) const {
  const Impl& w = *impl_;
  Impl::Module rec;
  {
    std::lock_guard<std::mutex> lock(w.mu);
    if (m >= w.modules.size() || !w.modules[m].written) throw std::logic_error("encoding a module not written");
    rec = w.modules[m];
  }
  std::string out;
  util::WireWriter put(out);
  put.put<uint64_t>(rec.tensors.size());
  for (auto& t : rec.tensors) {
    put.put(t.name);
    put.put<uint8_t>(static_cast<uint8_t>(t.dtype));
    put.put(t.shape);
    put.put<uint64_t>(t.bytes);
  }
  put.put<int64_t>(rec.params);
  put.put(rec.entry.dump());
  put.put<uint64_t>(rec.bytes);
  const size_t at = out.size();
  out.resize(at + rec.bytes);
  w.pread_all(out.data() + at, rec.bytes, rec.spool_offset);
  return out;
}

void BundleWriter::write_encoded(size_t m, std::string_view message) {
  util::WireReader get(message);
  Impl::Module rec;
  uint64_t sum = 0;
  for (uint64_t n = get.get<uint64_t>(); n > 0; --n) {
    Impl::Tensor t;
    t.name = get.get_string();
    t.dtype = static_cast<DType>(get.get<uint8_t>());
    t.shape = get.get_vector<int64_t>();
    t.bytes = get.get<uint64_t>();
    sum += t.bytes;
    rec.tensors.push_back(std::move(t));
  }
  rec.params = get.get<int64_t>();
  rec.entry = ordered_json::parse(get.get_string());
  rec.quantized = rec.entry.contains("precision");
  rec.bytes = get.get<uint64_t>();
  const char* data = get.take(rec.bytes);
  if (sum != rec.bytes || !get.done()) throw std::runtime_error("malformed module message");
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), rec.bytes);
  impl_->store(m, std::move(rec), {bytes});
}

void BundleWriter::expect(const std::vector<int64_t>& bytes) {
  Impl& w = *impl_;
  if (bytes.size() != w.modules.size()) throw std::logic_error("expect(): one size per module");
  if (w.path.empty() || w.direct) return;
  for (auto& m : w.modules) {
    if (m.written) throw std::logic_error("expect() after a module was written");
  }
  auto file = std::make_unique<AtomicFile>(w.path);
  // A named temporary file would be left behind by a killed process, with
  // the data so far; the spool is unlinked from the start.
  if (!file->unnamed()) return;
  w.offset.assign(1, 0);
  for (int64_t b : bytes) w.offset.push_back(w.offset.back() + static_cast<uint64_t>(b));
  w.direct = std::move(file);
}

bool BundleWriter::has_module(size_t m) const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return m < impl_->modules.size() && impl_->modules[m].written;
}

void BundleWriter::discard(size_t m) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  if (m >= impl_->modules.size()) throw std::logic_error("bundle module index out of range");
  if (impl_->direct) throw std::logic_error("discard() after expect() fixed the layout");
  impl_->modules[m] = {};
}

void BundleWriter::finish(const Bundle& b) {
  Impl& w = *impl_;
  if (w.path.empty()) throw std::logic_error("a spool-only bundle writer cannot finish");
  std::vector<TensorSlot> slots;
  ordered_json mods = ordered_json::array();
  uint64_t offset = 0;
  int64_t params = 0;
  bool quantized = false;
  for (auto& m : w.modules) {
    if (!m.written) throw std::logic_error("bundle finished before all modules were written");
    for (auto& t : m.tensors) {
      slots.push_back({t.name, t.dtype, t.shape, offset, offset + t.bytes});
      offset += t.bytes;
    }
    params += m.params;
    quantized = quantized || m.quantized;
    mods.push_back(m.entry);
  }
  if (params != b.params_stored) throw std::logic_error("bundle storage differs from the planned storage");
  ordered_json tasks = ordered_json::array();
  for (const auto& t : b.tasks) {
    tasks.push_back({{"name", t.name},
                     {"source", t.source},
                     {"sha256", t.sha256},
                     {"rank", t.rank},
                     {"alpha", t.alpha},
                     {"use_rslora", t.use_rslora},
                     {"target_modules", t.target_modules}});
  }
  ordered_json meta = {{"format", kFormat},
                       {"version", quantized ? kBundleVersion : 1},  // version 1 readers read float bundles
                       {"hydraopt_version", HYDRAOPT_VERSION},
                       {"method", b.method},
                       {"parameters", b.params},
                       {"budget", b.budget},
                       {"dtype", dtype_name(w.dtype)},
                       {"base_model", b.base_model},
                       {"fan_in_fan_out", b.fan_in_fan_out},
                       {"storage", {{"params", b.params_stored}, {"original_params", b.original_params}}},
                       {"tasks", tasks},
                       {"modules", mods}};
  if (!b.history.empty()) meta["history"] = history_json(b.history);
  if (b.calibration) {
    meta["calibration"] = {{"shrinkage", b.calibration->shrinkage},
                           {"statistics", b.calibration->statistics},
                           {"plan", b.calibration->plan},
                           {"rounds", b.calibration->rounds}};
  }
  const std::string header = safetensors_header(std::move(slots), {{"hydraopt", meta.dump()}, {"format", "pt"}}, kDataAlign);
  const auto header_bytes = std::as_bytes(std::span(header.data(), header.size()));
  if (w.direct && w.direct->insert_front(header.size())) {
    w.direct->write_at(header_bytes, 0);
    w.direct->commit();
    return;
  }
  AtomicFile out(w.path);
  out.write(header_bytes);
  for (auto& m : w.modules) out.copy_from(w.data_fd(), m.spool_offset, m.bytes);
  out.commit();
}

void bundle_write(const fs::path& path, const Bundle& b) {
  BundleWriter w(path, b.dtype, b.modules.size());
  std::vector<int64_t> bytes;
  for (const auto& m : b.modules) bytes.push_back(fit_bytes(m.fit, m.precision, b.dtype));
  w.expect(bytes);
  for (size_t m = 0; m < b.modules.size(); ++m) w.write_module(m, b.modules[m]);
  w.finish(b);
}

Bundle bundle_read(const fs::path& path) { return bundle_parse(SafetensorsFile::open(path)); }

Bundle bundle_parse(const SafetensorsFile& st, bool values) {
  const std::string& file = st.path();
  auto it = st.metadata().find("hydraopt");
  if (it == st.metadata().end()) throw Error(file, "", "not a hydraopt bundle (no __metadata__[\"hydraopt\"])");
  ordered_json j;
  try {
    j = ordered_json::parse(it->second);
  } catch (const std::exception& e) {
    throw Error(file, "", std::string("bundle metadata is not valid JSON: ") + e.what());
  }
  Bundle b;
  std::map<std::string, bool> used;
  std::set<std::string> names;
  for (auto& t : st.tensors()) used[t.name] = false;
  try {
    if (j.at("format") != kFormat) throw Error(file, "", "not a hydraopt bundle (format tag)");
    const int64_t version = int_field(j.at("version"), 0, 1 << 30, file, "", "version");
    if (version < 1 || version > kBundleVersion) {
      throw Error(file, "", "bundle format version " + j.at("version").dump() + " is not supported (this reads 1 to " +
                                std::to_string(kBundleVersion) + ")");
    }
    b.method = j.at("method").get<std::string>();
    b.base_model = j.at("base_model").get<std::string>();
    b.budget = j.at("budget").get<double>();
    auto dt = dtype_from_name(j.at("dtype").get<std::string>());
    if (!dt) throw Error(file, "", "unknown bundle dtype");
    b.dtype = *dt;
    b.fan_in_fan_out = j.at("fan_in_fan_out").get<bool>();
    for (auto& [k, v] : j.at("parameters").items()) b.params[k] = v.get<std::string>();
    b.params_stored = int_field(j.at("storage").at("params"), 0, INT64_MAX, file, "", "storage.params");
    b.original_params = int_field(j.at("storage").at("original_params"), 0, INT64_MAX, file, "", "storage.original_params");
    for (auto& t : j.at("tasks")) {
      BundleTask bt;
      bt.name = t.at("name").get<std::string>();
      bt.source = t.at("source").get<std::string>();
      bt.sha256 = t.at("sha256").get<std::string>();
      bt.rank = int_field(t.at("rank"), 0, kMaxDim, file, "", "task rank");
      bt.alpha = t.at("alpha").get<double>();
      bt.use_rslora = t.at("use_rslora").get<bool>();
      bt.target_modules = t.at("target_modules").get<std::vector<std::string>>();
      check_task_name(bt.name, file);  // export uses it as a directory name
      if (!names.insert(bt.name).second) throw Error(file, "", "task name '" + bt.name + "' appears twice");
      b.tasks.push_back(std::move(bt));
    }
    const size_t n = b.tasks.size();
    if (n == 0) throw Error(file, "", "bundle has no tasks");
    for (auto& m : j.at("modules")) {
      BundleModule bm;
      bm.name = m.at("name").get<std::string>();
      bm.in = int_field(m.at("in"), 1, kMaxDim, file, bm.name, "in");
      bm.out = int_field(m.at("out"), 1, kMaxDim, file, bm.name, "out");
      auto fam = family_from_name(m.at("family").get<std::string>());
      if (!fam) throw Error(file, bm.name, "unknown structure family " + m.at("family").dump());
      bm.spec = {*fam, int_field(m.at("rank"), 0, kMaxDim, file, bm.name, "rank"),
                 static_cast<int>(int_field(m.at("groups"), 0, kMaxBundleIndex, file, bm.name, "groups"))};
      ModuleFit& f = bm.fit;
      f.diagonal_cores = m.at("diagonal_cores").get<bool>();
      f.head_of = index_list(m.at("head_of"), 0, file, bm.name, "head_of");
      f.core_of = index_list(m.at("core_of"), -1, file, bm.name, "core_of");
      f.body_of = index_list(m.at("body_of"), 0, file, bm.name, "body_of");
      f.scale = m.at("scale").get<std::vector<double>>();
      if (auto h = m.find("sha256"); h != m.end()) bm.sha256 = h->get<std::string>();
      if (f.head_of.size() != n || f.core_of.size() != n || f.body_of.size() != n || f.scale.size() != n) {
        throw Error(file, bm.name, "layout lists do not have one entry per task");
      }
      // Integer roles: their formats, and each matrix's shape (the codes
      // tensor is a flat byte stream).
      std::map<std::string, std::vector<std::pair<int64_t, int64_t>>> shapes;
      if (auto pr = m.find("precision"); pr != m.end()) {
        if (version < 2) throw Error(file, bm.name, "integer storage (\"precision\") needs bundle format version 2");
        if (!pr->is_object() || pr->empty()) throw Error(file, bm.name, "precision is not an object of roles");
        for (auto& [kind, v] : pr->items()) {
          if (!role_named(kind)) {
            throw Error(file, bm.name, "precision names an unknown role '" + kind + "' (head, body or core)");
          }
          if (!v.is_string()) throw Error(file, bm.name, "precision of " + kind + " is not a string");
          kind_format(bm.precision, kind) = parse_quant_format(v.get<std::string>(), file + ": " + bm.name + ": precision");
          const auto& list = m.at("shapes").at(kind);
          if (!list.is_array()) throw Error(file, bm.name, "shapes of " + kind + " is not a list");
          for (const auto& sh : list) {
            if (!sh.is_array() || sh.size() != 2) throw Error(file, bm.name, "a shape of " + kind + " is not [rows, cols]");
            shapes[kind].emplace_back(int_field(sh[0], 0, kMaxDim, file, bm.name, "rows"),
                                      int_field(sh[1], 0, kMaxDim, file, bm.name, "cols"));
          }
        }
      }
      auto load_quantized = [&](const std::string& name, const TensorInfo& t, const QuantFormat& format,
                                std::pair<int64_t, int64_t> shape) {
        QuantizedMatrix q;
        q.rows = shape.first;
        q.cols = shape.second;
        q.format = format;
        if (t.dtype != DType::U8 || t.shape.size() != 1) throw Error(file, name, "integer codes must be a 1-D U8 tensor");
        // (rows x cols x bits fits the codes before anything is multiplied)
        if (q.rows > 0 && q.cols > static_cast<int64_t>(t.nbytes() * 8 / 2) / q.rows) {
          throw Error(file, name, "shape " + std::to_string(q.rows) + " x " + std::to_string(q.cols) + " needs more codes than the " +
                                      std::to_string(t.nbytes()) + " bytes stored");
        }
        const auto codes = st.bytes(t);
        q.codes.resize(codes.size());
        std::memcpy(q.codes.data(), codes.data(), codes.size());
        for (const char* part : {"scales", "minima"}) {
          const std::string pname = name + "." + part;
          const TensorInfo* p = st.find(pname);
          if (!p) {
            if (std::string(part) == "minima" && format.symmetric) continue;
            throw Error(file, pname, "missing (" + format.name() + " stores it)");
          }
          if (std::string(part) == "minima" && format.symmetric) throw Error(file, pname, "a symmetric format stores no minima");
          if (p->dtype != DType::F16 || p->shape.size() != 1) throw Error(file, pname, "must be a 1-D F16 tensor");
          used[pname] = true;
          (std::string(part) == "scales" ? q.scales : q.minima) = f16_bits(st, *p);
        }
        try {
          return dequantize(q);
        } catch (const Error& e) {
          throw Error(file, name, std::string(e.what()));
        }
      };
      // Shapes (rows, cols; a diagonal core's k-vector as k x 1): from the
      // header, or for integer roles from "shapes"; values decoded unless
      // only the layout is wanted (integer ones are decoded to check them).
      using Shape = std::array<int64_t, 2>;
      auto load = [&](const char* kind, int count, std::vector<MatrixXd>* out, std::vector<Shape>* sizes) {
        const auto& format = kind_format(bm.precision, kind);
        if (format && shapes[kind].size() != static_cast<size_t>(count)) {
          throw Error(file, bm.name, "shapes of " + std::string(kind) + " list " + std::to_string(shapes[kind].size()) +
                                         " matrices, the module stores " + std::to_string(count));
        }
        for (int k = 0; k < count; ++k) {
          std::string name = tensor_name(bm.name, kind, k);
          const TensorInfo* t = st.find(name);
          if (!t) throw Error(file, name, "missing");
          used[name] = true;
          if (format) {
            const auto shape = shapes[kind][k];
            MatrixXd x = load_quantized(name, *t, *format, shape);
            sizes->push_back({shape.first, shape.second});
            out->push_back(values ? std::move(x) : MatrixXd());
            continue;
          }
          TensorInfo as2d = *t;
          if (t->shape.size() == 1 && std::string(kind) == "core" && f.diagonal_cores) as2d.shape = {t->shape[0], 1};
          if (as2d.shape.size() != 2) {
            throw Error(file, name, "expected a 2-D tensor, got " + std::to_string(as2d.shape.size()) + "-D");
          }
          sizes->push_back({as2d.shape[0], as2d.shape[1]});
          out->push_back(values ? st.matrix(as2d) : MatrixXd());
        }
      };
      auto count = [&](const std::vector<int>& of, bool allow_none) {
        int mx = -1;
        for (int x : of) {
          if (x < (allow_none ? -1 : 0)) throw Error(file, bm.name, "negative index in layout");
          mx = std::max(mx, x);
        }
        return mx + 1;
      };
      // Stored heads/bodies may exceed the highest index (unused group slots).
      int nh = count(f.head_of, false), nb = count(f.body_of, false), nc = count(f.core_of, true);
      while (st.find(tensor_name(bm.name, "head", nh))) ++nh;
      while (st.find(tensor_name(bm.name, "body", nb))) ++nb;
      std::vector<Shape> hs, bs, cs;
      load("head", nh, &f.heads, &hs);
      load("body", nb, &f.bodies, &bs);
      load("core", nc, &f.cores, &cs);
      for (auto& h : hs) {
        if (h[0] != bm.out) throw Error(file, bm.name, "head rows differ from the module's out");
      }
      for (auto& r : bs) {
        if (r[1] != bm.in) throw Error(file, bm.name, "body columns differ from the module's in");
      }
      for (size_t i = 0; i < n; ++i) {
        const Shape& h = hs[f.head_of[i]];
        const Shape& r = bs[f.body_of[i]];
        int64_t mid = h[1];
        if (f.core_of[i] >= 0) {
          const Shape& c = cs[f.core_of[i]];
          bool ok = f.diagonal_cores ? (c[0] == h[1] && c[0] == r[0]) : (c[0] == h[1] && c[1] == r[0]);
          if (!ok) throw Error(file, tensor_name(bm.name, "core", f.core_of[i]), "shape does not chain head and body");
          mid = r[0];
        }
        if (mid != r[0]) throw Error(file, bm.name, "head and body ranks differ for task " + b.tasks[i].name);
      }
      b.modules.push_back(std::move(bm));
    }
    if (auto h = j.find("history"); h != j.end()) b.history = parse_history(*h, file);
    if (auto c = j.find("calibration"); c != j.end()) b.calibration = parse_calibration(*c, b, file);
  } catch (const nlohmann::json::exception& e) {
    throw Error(file, "", std::string("bundle metadata is malformed: ") + e.what());
  }
  for (auto& [name, u] : used) {
    if (!u) throw Error(file, name, "tensor not referenced by the bundle metadata");
  }
  return b;
}

// Also valid UTF-8: names are written into the bundle's JSON metadata, whose
// serialiser throws on invalid bytes (after the whole merge has run).
size_t task_index(const Bundle& b, const std::string& name, const std::string& file) {
  for (size_t i = 0; i < b.tasks.size(); ++i) {
    if (b.tasks[i].name == name) return i;
  }
  std::string names;
  for (auto& t : b.tasks) names += (names.empty() ? "" : ", ") + t.name;
  throw Error(file, "", "no task '" + name + "' (tasks: " + names + ")");
}

void check_task_name(const std::string& name, const std::string& file) {
  bool bad = name.empty() || name == "." || name == ".." || name.size() > 255 || !valid_utf8(name);
  for (unsigned char c : name) bad = bad || c < 0x20 || c == 0x7f || c == '/' || c == '\\';
  if (bad) throw Error(file, "", "task name '" + name + "' cannot be used as a directory name");
}

}  // namespace hydraopt::io

