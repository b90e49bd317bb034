// Reading (and writing) safetensors files as hydraopt reads every input: the header
// checked against the data (sizes, offsets, dtypes; see src/io/safetensors.h
// for each rule), the data memory-mapped, each tensor converted to double
// on request.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "hydraopt/dtype.h"

namespace hydraopt {

namespace io {
class SafetensorsFile;
}

class TensorFile {
 public:
  /// Opens and checks `path`; throws hydraopt::Error naming the file.
  static TensorFile open(const std::filesystem::path& path);

  const std::string& path() const;
  const std::map<std::string, std::string>& metadata() const;
  /// Tensor names, sorted.
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const;
  std::vector<int64_t> shape(const std::string& name) const;
  DType dtype(const std::string& name) const;
  /// A 2-D tensor (rows x cols) or a 1-D one (as a column), in double.
  /// Throws hydraopt::Error naming the file and tensor if it is missing or
  /// has another rank.
  Eigen::MatrixXd matrix(const std::string& name) const;

 private:
  std::shared_ptr<const io::SafetensorsFile> file_;
};

/// A tensor to write as F32: its values in row-major order.
struct F32Tensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> values;
};

/// Writes a safetensors file of the tensors (sorted by name, header padded
/// to 8 bytes), atomically, stored as `dtype` (F32, or F16 / BF16 rounded
/// to nearest even).
void write_tensors(const std::filesystem::path& path, const std::vector<F32Tensor>& tensors,
                   const std::map<std::string, std::string>& metadata = {}, DType dtype = DType::F32);

/// Writes `data` atomically (a temporary file renamed over `path`): the
/// file is complete or absent, never partial.
void write_file_atomic(const std::filesystem::path& path, const std::string& data);

}  // namespace hydraopt
