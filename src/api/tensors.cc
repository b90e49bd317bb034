// hydraopt::TensorFile (include/hydraopt/tensors.h) over io::SafetensorsFile.
#include "hydraopt/tensors.h"

#include "hydraopt/error.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"

namespace hydraopt {

namespace {

const io::TensorInfo& find(const io::SafetensorsFile& f, const std::string& name) {
  const io::TensorInfo* t = f.find(name);
  if (!t) throw Error(f.path(), name, "missing");
  return *t;
}

}  // namespace

TensorFile TensorFile::open(const std::filesystem::path& path) {
  TensorFile t;
  t.file_ = std::make_shared<const io::SafetensorsFile>(io::SafetensorsFile::open(path));
  return t;
}

const std::string& TensorFile::path() const { return file_->path(); }
const std::map<std::string, std::string>& TensorFile::metadata() const { return file_->metadata(); }

std::vector<std::string> TensorFile::names() const {
  std::vector<std::string> out;
  for (auto& t : file_->tensors()) out.push_back(t.name);
  return out;
}

bool TensorFile::contains(const std::string& name) const { return file_->find(name) != nullptr; }
std::vector<int64_t> TensorFile::shape(const std::string& name) const { return find(*file_, name).shape; }
DType TensorFile::dtype(const std::string& name) const { return find(*file_, name).dtype; }

Eigen::MatrixXd TensorFile::matrix(const std::string& name) const {
  io::TensorInfo t = find(*file_, name);
  if (t.shape.size() == 1) t.shape = {t.shape[0], 1};
  if (t.shape.size() != 2) throw Error(file_->path(), name, "expected a 1-D or 2-D tensor");
  return file_->matrix(t);
}

void write_tensors(const std::filesystem::path& path, const std::vector<F32Tensor>& tensors,
                   const std::map<std::string, std::string>& metadata, DType dtype) {
  if (dtype != DType::F32 && dtype != DType::F16 && dtype != DType::BF16) {
    throw Error(path.string(), "", "write_tensors stores f32, f16 or bf16");
  }
  std::vector<io::TensorData> data;
  for (const F32Tensor& t : tensors) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    if (n != static_cast<int64_t>(t.values.size())) throw Error(path.string(), t.name, "shape and value count differ");
    // One row in the values' order (exact in double), encoded as bundles are.
    const Eigen::Map<const Eigen::RowVectorXf> row(t.values.data(), static_cast<Eigen::Index>(t.values.size()));
    io::TensorData d = io::tensor_from_matrix(t.name, row.cast<double>(), dtype);
    d.shape = t.shape;
    data.push_back(std::move(d));
  }
  io::safetensors_write(path, std::move(data), metadata);
}

void write_file_atomic(const std::filesystem::path& path, const std::string& data) { io::write_file_atomic(path, data); }

}  // namespace hydraopt
