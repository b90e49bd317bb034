// hydraopt::Bundle (include/hydraopt/bundle.h) over the bundle reader and
// writers of io/.
#include "hydraopt/bundle.h"

#include <nlohmann/json.hpp>

#include "hydraopt/error.h"
#include "io/bundle.h"
#include "io/gguf_export.h"

namespace hydraopt {

const std::string& BundleModule::name() const { return m_->name; }
int64_t BundleModule::in() const { return m_->in; }
int64_t BundleModule::out() const { return m_->out; }
std::string BundleModule::structure() const { return m_->spec.label(); }
int64_t BundleModule::params() const { return m_->fit.params(); }
std::string BundleModule::plan_json() const {
  return io::plan_entry_json(m_->name, m_->in, m_->out, m_->spec, m_->fit.params(), m_->precision);
}
const std::vector<Eigen::MatrixXd>& BundleModule::heads() const { return m_->fit.heads; }
const std::vector<Eigen::MatrixXd>& BundleModule::cores() const { return m_->fit.cores; }
const std::vector<Eigen::MatrixXd>& BundleModule::bodies() const { return m_->fit.bodies; }
const std::vector<int>& BundleModule::head_of() const { return m_->fit.head_of; }
const std::vector<int>& BundleModule::core_of() const { return m_->fit.core_of; }
const std::vector<int>& BundleModule::body_of() const { return m_->fit.body_of; }
const std::vector<double>& BundleModule::scale() const { return m_->fit.scale; }
bool BundleModule::diagonal_cores() const { return m_->fit.diagonal_cores; }

FactoredUpdate BundleModule::task_update(size_t task) const {
  if (task >= m_->fit.tasks()) throw Error("task index " + std::to_string(task) + " is out of range");
  return {m_->name, m_->fit.left(task), m_->fit.right(task)};
}

Bundle Bundle::open(const std::filesystem::path& path) {
  Bundle b;
  b.path_ = path;
  b.data_ = std::make_shared<const io::Bundle>(io::bundle_read(path));
  return b;
}

const std::string& Bundle::method() const { return data_->method; }
const std::string& Bundle::base_model() const { return data_->base_model; }
DType Bundle::dtype() const { return data_->dtype; }
double Bundle::budget() const { return data_->budget; }
int64_t Bundle::params() const { return data_->params_stored; }
int64_t Bundle::original_params() const { return data_->original_params; }
const std::map<std::string, std::string>& Bundle::parameters() const { return data_->params; }

std::vector<std::string> Bundle::tasks() const {
  std::vector<std::string> names;
  for (auto& t : data_->tasks) names.push_back(t.name);
  return names;
}

size_t Bundle::task_index(const std::string& name) const { return io::task_index(*data_, name, path_.string()); }

size_t Bundle::module_count() const { return data_->modules.size(); }

BundleModule Bundle::module(size_t m) const {
  if (m >= data_->modules.size()) throw Error(path_.string(), "", "module index " + std::to_string(m) + " is out of range");
  return BundleModule(&data_->modules[m]);
}

size_t Bundle::module_index(const std::string& name) const {
  for (size_t m = 0; m < data_->modules.size(); ++m) {
    if (data_->modules[m].name == name) return m;
  }
  throw Error(path_.string(), "", "no module '" + name + "' in the bundle");
}

std::string Bundle::plan_json() const {
  nlohmann::ordered_json plan = nlohmann::ordered_json::array();
  for (size_t m = 0; m < module_count(); ++m) plan.push_back(nlohmann::ordered_json::parse(module(m).plan_json()));
  return plan.dump();
}

std::vector<FactoredUpdate> Bundle::task_update(size_t task) const {
  if (task >= data_->tasks.size()) throw Error(path_.string(), "", "task index " + std::to_string(task) + " is out of range");
  std::vector<FactoredUpdate> out;
  for (size_t m = 0; m < module_count(); ++m) out.push_back(module(m).task_update(task));
  return out;
}

Bundle::PeftAdapter Bundle::task_adapter(const std::string& task, bool least_rank) const {
  io::PeftImage image = io::peft_image(*data_, task_index(task), least_rank);
  return {std::move(image.tensors), std::move(image.config)};
}

void Bundle::export_peft(const std::string& task, const std::filesystem::path& dir, std::optional<DType> dtype) const {
  const DType dt = dtype.value_or(data_->dtype);
  if (task.empty()) return io::export_peft_all(*data_, dir, dt);
  io::export_peft(*data_, task_index(task), dir, dt);
}

std::vector<GgufTensorChoice> Bundle::export_gguf(const std::string& task, const std::filesystem::path& base_model,
                                                 const std::filesystem::path& out, std::optional<DType> dtype,
                                                 bool block_types) const {
  return io::export_bundle_gguf(*data_, path_.string(), task, base_model, out, dtype, block_types);  // no second read
}

VerifyReport Bundle::verify(const std::vector<std::string>& sources, const LoadOptions& options) const {
  return verify_bundle(path_, sources, options);
}

}  // namespace hydraopt
