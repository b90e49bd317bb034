// Calibration statistics: the sketch of a second moment, and its file
// (format and rules: calibration.h, docs/formats.md).
#include "io/calibration.h"

#include <fmt/format.h>
#include <Eigen/Eigenvalues>
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "hydraopt/error.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"

namespace hydraopt::io {

using nlohmann::json;

namespace {

constexpr const char* kFormat = "hydraopt-calibration";
constexpr const char* kVersion = "1";
// Eigenvectors are stored in F32: rounding moves V V^T off the identity by
// about 1e-7, so anything past 1e-3 was never orthonormal.
constexpr double kOrthoTolerance = 1e-3;

// The 1-D F32 tensor t in double (its shape checked by the caller).
Eigen::VectorXd read_vector(const SafetensorsFile& st, const TensorInfo& t) {
  auto bytes = st.bytes(t);
  Eigen::VectorXd v(static_cast<Eigen::Index>(bytes.size() / sizeof(float)));
  for (Eigen::Index i = 0; i < v.size(); ++i) {
    float x;
    std::memcpy(&x, bytes.data() + i * sizeof(float), sizeof(float));
    v[i] = x;
  }
  return v;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// A metadata count: decimal digits only (no sign, space or exponent) that
// fit in int64.
int64_t count_field(const std::map<std::string, std::string>& meta, const std::string& key,
                    const std::string& file) {
  auto it = meta.find(key);
  if (it == meta.end()) throw Error(file, "", "metadata has no \"" + key + "\"");
  const std::string& s = it->second;
  int64_t n = 0;
  const bool digits = !s.empty() && s.find_first_not_of("0123456789") == std::string::npos;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
  if (!digits || ec != std::errc() || end != s.data() + s.size()) {
    throw Error(file, "",
                "metadata \"" + key + "\" is not a non-negative decimal integer below 2^63");
  }
  return n;
}

// "sites": a JSON object of site -> non-empty list of non-empty module
// names, each module in one site only.
std::map<std::string, std::vector<std::string>> parse_sites(const std::string& text,
                                                            const std::string& file) {
  // json keeps the last of two equal keys; a callback sees every key of the
  // top-level object, so a site listed twice is refused, not half dropped.
  std::set<std::string> keys;
  std::string repeated;
  auto on_event = [&](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::key && depth == 1 &&
        !keys.insert(parsed.get<std::string>()).second) {
      repeated = parsed.get<std::string>();
    }
    return true;
  };
  json j;
  try {
    j = json::parse(text, on_event, /*allow_exceptions=*/false);
  } catch (const json::exception&) {
    j = json::value_t::discarded;
  }
  if (j.is_discarded()) throw Error(file, "", "metadata \"sites\" is not valid JSON");
  if (!j.is_object()) throw Error(file, "", "metadata \"sites\" is not a JSON object");
  if (!repeated.empty())
    throw Error(file, "", "metadata \"sites\" lists site '" + repeated + "' twice");
  std::map<std::string, std::vector<std::string>> out;
  std::map<std::string, std::string> site_of;  // module -> its site
  for (auto& [site, list] : j.items()) {
    const std::string what = "metadata \"sites\": site '" + site + "'";
    if (site.empty()) throw Error(file, "", "metadata \"sites\" has a site with an empty name");
    // Not list.dump() in messages: it recurses once per nesting level.
    if (!list.is_array())
      throw Error(file, "",
                  what + " is not a list of module names (found " + list.type_name() + ")");
    if (list.empty()) throw Error(file, "", what + " lists no modules");
    auto& modules = out[site];
    for (const json& m : list) {
      if (!m.is_string())
        throw Error(file, "", what + " lists a non-string (" + std::string(m.type_name()) + ")");
      std::string name = m.get<std::string>();
      if (name.empty()) throw Error(file, "", what + " lists an empty module name");
      auto [prev, fresh] = site_of.emplace(name, site);
      if (!fresh && prev->second == site)
        throw Error(file, "", what + " lists module '" + name + "' twice");
      if (!fresh) {
        throw Error(file, "",
                    "metadata \"sites\": module '" + name + "' is in site '" + prev->second +
                        "' and in site '" + site + "'");
      }
      modules.push_back(std::move(name));
    }
  }
  return out;
}

// Every entry of m finite (and, with non_negative, >= 0), or an Error
// naming tensor t and the entry: "<what> i" in a vector, "entry [r, c]" in
// a matrix (as stored: row-major).
void check_entries(const Eigen::MatrixXd& m, bool non_negative, const std::string& file,
                   const std::string& t, const std::string& what) {
  for (Eigen::Index c = 0; c < m.cols(); ++c) {
    for (Eigen::Index r = 0; r < m.rows(); ++r) {
      const double x = m(r, c);
      if (std::isfinite(x) && !(non_negative && x < 0)) continue;
      const std::string where =
          m.cols() == 1 ? what + " " + std::to_string(r)
                        : "entry [" + std::to_string(r) + ", " + std::to_string(c) + "]";
      if (!std::isfinite(x)) throw Error(file, t, where + " is not finite");
      throw Error(file, t, where + " is negative (" + fmt::format("{}", x) + ")");
    }
  }
}

// The tensor S.part, F32 with `rank` dimensions, or an Error.
const TensorInfo& site_tensor(const SafetensorsFile& st, const std::string& site, const char* part,
                              size_t rank) {
  const std::string name = site + "." + part;
  const TensorInfo* t = st.find(name);
  if (!t) throw Error(st.path(), name, "missing (site '" + site + "' is listed in \"sites\")");
  if (t->dtype != DType::F32)
    throw Error(st.path(), name,
                "dtype is " + std::string(dtype_name(t->dtype)) + ", expected F32");
  if (t->shape.size() != rank) {
    throw Error(st.path(), name,
                "shape " + shape_text(t->shape) + " is not " + std::to_string(rank) + "-D");
  }
  return *t;
}

// One site's three tensors, their shapes checked and, with `full`, their
// values (finite, non-negative where they must be, eigenvalues descending,
// eigenvectors orthonormal: k^2 in flops); without, the file was
// validated whole before.
InputStats read_site(const SafetensorsFile& st, const std::string& site, bool full = true) {
  const std::string& file = st.path();
  const TensorInfo& td = site_tensor(st, site, "diagonal", 1);
  const TensorInfo& tv = site_tensor(st, site, "values", 1);
  const TensorInfo& tV = site_tensor(st, site, "vectors", 2);
  const int64_t in = td.shape[0], k = tv.shape[0];
  if (in < 1) throw Error(file, td.name, "shape [0]: a site needs at least one input");
  if (k > in)
    throw Error(file, tv.name,
                std::to_string(k) + " eigenvalues for " + std::to_string(in) + " inputs (k > in)");
  if (tV.shape[0] != k || tV.shape[1] != in) {
    throw Error(file, tV.name,
                "shape " + shape_text(tV.shape) + " is not [k, in] = " + shape_text({k, in}));
  }
  // Sizes need no cap of their own: the safetensors reader checked each
  // shape's product (overflow-checked) against the bytes the file holds,
  // so k * in floats are in the file, and k <= in bounds V V^T (k x k).
  InputStats s;
  s.diagonal = read_vector(st, td);
  s.values = read_vector(st, tv);
  s.vectors = st.matrix(tV);
  if (!full) return s;
  check_entries(s.diagonal, true, file, td.name, "entry");
  check_entries(s.values, true, file, tv.name, "eigenvalue");
  check_entries(s.vectors, false, file, tV.name, "entry");
  for (Eigen::Index i = 1; i < k; ++i) {
    if (s.values[i] > s.values[i - 1]) {
      throw Error(file, tv.name,
                  "eigenvalues are not in descending order (eigenvalue " + std::to_string(i) +
                      ", " + fmt::format("{}", s.values[i]) + ", exceeds the one before, " +
                      fmt::format("{}", s.values[i - 1]) + ")");
    }
  }
  if (k > 0) {
    const Eigen::MatrixXd gram = s.vectors * s.vectors.transpose();
    Eigen::Index r = 0, c = 0;
    const double dev = (gram - Eigen::MatrixXd::Identity(k, k)).cwiseAbs().maxCoeff(&r, &c);
    if (dev > kOrthoTolerance) {
      throw Error(file, tV.name,
                  "rows are not orthonormal: (V V^T - I)[" + std::to_string(r) + ", " +
                      std::to_string(c) + "] is " + fmt::format("{}", dev) + ", beyond 1e-3");
    }
  }
  return s;
}

CalibrationStats parse(const SafetensorsFile& st) {
  const std::string& file = st.path();
  const auto& meta = st.metadata();
  auto text = [&](const std::string& key) -> const std::string& {
    auto it = meta.find(key);
    if (it == meta.end()) throw Error(file, "", "metadata has no \"" + key + "\"");
    return it->second;
  };
  if (!meta.count("format") || meta.at("format") != kFormat) {
    throw Error(file, "",
                std::string("not calibration statistics (__metadata__ \"format\" is not \"") +
                    kFormat + "\")");
  }
  if (text("version") != kVersion) {
    throw Error(
        file, "",
        "calibration format version '" + text("version") + "' is not supported (this reads 1)");
  }
  CalibrationStats out;
  out.task = text("task");
  if (out.task.empty()) throw Error(file, "", "metadata \"task\" is empty");
  out.base_model = text("base_model");
  out.examples = count_field(meta, "examples", file);
  out.rows = count_field(meta, "rows", file);
  out.modules = parse_sites(text("sites"), file);

  // Every tensor is S.values, S.vectors or S.diagonal of a listed site
  // (site names hold dots: the part is after the last one).
  for (const TensorInfo& t : st.tensors()) {
    const size_t dot = t.name.rfind('.');
    const std::string part = dot == std::string::npos ? "" : t.name.substr(dot + 1);
    if (dot == std::string::npos || (part != "values" && part != "vectors" && part != "diagonal")) {
      throw Error(file, t.name,
                  "not a calibration tensor (expected <site>.values, .vectors or .diagonal)");
    }
    if (!out.modules.count(t.name.substr(0, dot))) {
      throw Error(file, t.name, "site '" + t.name.substr(0, dot) + "' is not listed in \"sites\"");
    }
  }
  for (const auto& [site, modules] : out.modules) out.sites.emplace(site, read_site(st, site));
  return out;
}

}  // namespace

Eigen::MatrixXd InputStats::dense() const {
  Eigen::MatrixXd c = vectors.transpose() * values.asDiagonal() * vectors;
  c.diagonal() += diagonal;
  return c;
}

double InputStats::trace() const {
  // sum_i values_i |v_i|^2: the trace as stored, whether or not the rows
  // are exactly of unit norm.
  return vectors.rowwise().squaredNorm().dot(values) + diagonal.sum();
}

const std::string* CalibrationStats::site_of(const std::string& name) const {
  for (const auto& [site, names] : modules) {
    if (std::find(names.begin(), names.end(), name) != names.end() && sites.count(site)) return &site;
  }
  return nullptr;
}

const InputStats* CalibrationStats::for_module(const std::string& name) const {
  const std::string* site = site_of(name);
  return site ? &sites.at(*site) : nullptr;
}

InputStats sketch_second_moment(const Eigen::MatrixXd& c, int64_t max_rank, double tail) {
  if (c.rows() != c.cols()) {
    throw Error("", "",
                "second moment is " + std::to_string(c.rows()) + " x " + std::to_string(c.cols()) +
                    ", not square");
  }
  if (max_rank < 0)
    throw Error("", "", "sketch rank must be >= 0, got " + std::to_string(max_rank));
  if (!(tail >= 0 && tail <= 1))
    throw Error("", "", "sketch tail must be in [0, 1], got " + fmt::format("{}", tail));
  if (!c.allFinite()) throw Error("", "", "second moment has non-finite entries");
  const Eigen::Index n = c.rows();
  if (n == 0) return {Eigen::MatrixXd(0, 0), Eigen::VectorXd(0), Eigen::VectorXd(0)};
  const Eigen::MatrixXd s = (c + c.transpose()) / 2;
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(s);
  if (eig.info() != Eigen::Success)
    throw Error("", "", "eigendecomposition of the second moment failed");
  // Ascending; a PSD matrix's rounding can leave tiny negative ones.
  const Eigen::VectorXd lambda = eig.eigenvalues().cwiseMax(0.0);

  // Drop the smallest while what is dropped stays within tail of the
  // trace. The trace is summed in the same order (not lambda.sum(), whose
  // vectorised order differs), so every partial sum is at most the trace
  // and tail = 1 drops all.
  double total = 0;
  for (Eigen::Index j = 0; j < n; ++j) total += lambda[j];
  double dropped = 0;
  Eigen::Index k = n;
  for (Eigen::Index j = 0; j < n && dropped + lambda[j] <= tail * total; ++j) {
    dropped += lambda[j];
    --k;
  }
  k = std::min<Eigen::Index>(k, max_rank);

  InputStats out;
  out.values.resize(k);
  out.vectors.resize(k, n);
  for (Eigen::Index i = 0; i < k; ++i) {
    out.values[i] = lambda[n - 1 - i];
    out.vectors.row(i) = eig.eigenvectors().col(n - 1 - i).transpose();
    // An eigenvector's sign is arbitrary (LAPACK's choice): fix it, largest
    // entry positive, so the same c gives the same file on any build.
    Eigen::Index top = 0;
    out.vectors.row(i).cwiseAbs().maxCoeff(&top);
    if (out.vectors(i, top) < 0) out.vectors.row(i) *= -1;
  }
  // diag(s - V^T diag(values) V) without forming the product: O(k in).
  const Eigen::VectorXd kept =
      (out.vectors.array().square().colwise() * out.values.array()).colwise().sum();
  out.diagonal = (s.diagonal() - kept).cwiseMax(0.0);
  return out;
}

CalibrationStats read_calibration_stats(const std::filesystem::path& path) {
  return parse(SafetensorsFile::open(path));
}

CalibrationFileReader::CalibrationFileReader(std::filesystem::path path) : path_(std::move(path)) {
  std::error_code ec;
  size_ = std::filesystem::file_size(path_, ec);
  if (!ec) mtime_ = std::filesystem::last_write_time(path_, ec);
  if (ec) throw Error(path_.string(), "", "cannot read: " + ec.message());
  file_ = SafetensorsFile::open(path_);
  header_ = parse(file_);
  for (const auto& [site, x] : header_.sites) widths_[site] = x.in();
  header_.sites.clear();
  file_.release();
}

InputStats CalibrationFileReader::site(const std::string& name) const {
  if (!header_.modules.count(name)) throw std::logic_error("CalibrationFileReader::site: no site " + name);
  std::error_code ec;
  const auto size = std::filesystem::file_size(path_, ec);
  const auto mtime = ec ? std::filesystem::file_time_type() : std::filesystem::last_write_time(path_, ec);
  if (ec || size != size_ || mtime != mtime_) {
    throw Error(path_.string(), "", "changed while it was in use (read it again)");
  }
  InputStats out = read_site(file_, name, false);
  file_.release();
  return out;
}

CalibrationStats parse_calibration_stats(std::span<const std::byte> file,
                                         const std::string& label) {
  return parse(SafetensorsFile::parse(file, label));
}

void write_calibration_stats(const std::filesystem::path& path, const CalibrationStats& stats) {
  const std::string file = path.string();
  json sites = json::object();
  for (const auto& [site, modules] : stats.modules) {
    if (!stats.sites.count(site))
      throw Error(file, "", "site '" + site + "' lists modules but has no statistics");
    sites[site] = modules;
  }
  std::vector<TensorData> tensors;
  for (const auto& [site, s] : stats.sites) {
    if (!stats.modules.count(site))
      throw Error(file, "", "site '" + site + "' has statistics but lists no modules");
    tensors.push_back(tensor_from_vector(site + ".values", s.values, DType::F32));
    tensors.push_back(tensor_from_matrix(site + ".vectors", s.vectors, DType::F32));
    tensors.push_back(tensor_from_vector(site + ".diagonal", s.diagonal, DType::F32));
  }
  std::string sites_text;
  try {
    sites_text = sites.dump(-1, ' ', false, json::error_handler_t::strict);
  } catch (const json::exception&) {
    throw Error(file, "", "a site or module name is not valid UTF-8");
  }
  const std::map<std::string, std::string> meta = {
      {"format", kFormat},
      {"version", kVersion},
      {"task", stats.task},
      {"base_model", stats.base_model},
      {"examples", std::to_string(stats.examples)},
      {"rows", std::to_string(stats.rows)},
      {"sites", sites_text},
  };
  std::vector<std::byte> bytes;
  try {
    bytes = safetensors_serialize(std::move(tensors), meta);
  } catch (const Error& e) {  // e.g. a name that is not UTF-8: name the file too
    throw Error(file, e.tensor(), e.reason());
  }
  // The image goes through the reader first: what is written is exactly
  // what it accepts (after rounding to F32), and a bad stats object is an
  // Error naming the file, the tensor and the reason, as on reading.
  parse_calibration_stats(bytes, file);
  AtomicFile f(path);
  f.write(bytes);
  f.commit();
}

}  // namespace hydraopt::io
