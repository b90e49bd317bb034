// A bundle's tasks written back as standard PEFT adapter directories.
#include <nlohmann/json.hpp>
#include <string_view>

#include "hydraopt/error.h"
#include "io/atomic_file.h"
#include "io/bundle.h"
#include "io/safetensors.h"
#include "linalg/factored.h"

namespace hydraopt::io {

namespace fs = std::filesystem;
using Eigen::MatrixXd;
using nlohmann::ordered_json;

namespace {

// Regex-escapes a module name for PEFT's pattern keys.
std::string regex_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (std::string_view(".^$|()[]{}*+?\\").find(c) != std::string_view::npos) out += '\\';
    out += c;
  }
  return out;
}

// left * right (out x k, k x in) as l * r of the least rank that holds it:
// its SVD through both sides' QR (linalg::factored_svd), singular values
// below 1e-10 of the largest dropped (zero but for rounding: a head times a
// core of rank r is rank r, whatever the core's width). The product is
// unchanged but for rounding in double.
void least_rank(const MatrixXd& left, const MatrixXd& right, MatrixXd* l, MatrixXd* r) {
  MatrixXd u, vt;  // u's columns: left singular vectors times the singular values
  linalg::factored_svd(left, right, left.cols(), &u, &vt);
  const Eigen::VectorXd sv = u.colwise().norm();
  Eigen::Index rank = 0;
  while (rank < sv.size() && sv(rank) > 1e-10 * sv(0)) ++rank;
  *l = u.leftCols(rank);
  *r = vt.topRows(rank);
}

}  // namespace

void export_peft_all(const Bundle& b, const fs::path& dir, DType dtype) {
  AtomicDir out(dir);
  for (auto& t : b.tasks) check_task_name(t.name, out.target().string());
  for (size_t i = 0; i < b.tasks.size(); ++i) export_peft(b, i, out.path() / b.tasks[i].name, dtype);
  out.commit();
}

PeftImage peft_image(const Bundle& b, size_t task, bool least) {
  const BundleTask& t = b.tasks.at(task);
  PeftImage image;
  auto& tensors = image.tensors;
  std::vector<std::pair<std::string, int64_t>> ranks;
  std::vector<std::pair<std::string, double>> alphas;
  std::vector<std::string> leaves;
  for (const auto& m : b.modules) {
    const ModuleFit& f = m.fit;
    MatrixXd left = f.head_core(task);  // H C; the scale goes into alpha
    MatrixXd right = f.right(task);
    double scale = f.scale[task];
    if (least && right.rows() > 0) {
      least_rank(MatrixXd(scale * left), MatrixXd(right), &left, &right);
      scale = 1;
    }
    const int64_t k = right.rows();
    if (k == 0) continue;  // the task has no update on this module
    const std::string base = "base_model.model." + m.name;
    tensors.emplace_back(base + ".lora_A.weight", right);
    tensors.emplace_back(base + ".lora_B.weight", std::move(left));
    ranks.emplace_back(m.name, k);
    alphas.emplace_back(m.name, scale * static_cast<double>(k));
    leaves.push_back(m.name.substr(m.name.rfind('.') + 1));
  }
  if (tensors.empty()) throw Error("task '" + t.name + "' has no modules in the bundle");
  auto most_common = [](auto values) {
    std::map<decltype(values[0].second), int> c;
    for (auto& [k, v] : values) ++c[v];
    return std::max_element(c.begin(), c.end(), [](auto& a, auto& b) { return a.second < b.second; })->first;
  };
  const int64_t r = most_common(ranks);
  const double alpha = most_common(alphas);
  ordered_json rank_pattern = ordered_json::object(), alpha_pattern = ordered_json::object();
  for (auto& [name, k] : ranks) {
    if (k != r) rank_pattern[regex_escape(name)] = k;
  }
  for (auto& [name, a] : alphas) {
    if (a != alpha) alpha_pattern[regex_escape(name)] = a;
  }
  std::sort(leaves.begin(), leaves.end());
  leaves.erase(std::unique(leaves.begin(), leaves.end()), leaves.end());
  ordered_json config = {{"peft_type", "LORA"},
                         {"base_model_name_or_path", b.base_model},
                         {"r", r},
                         {"lora_alpha", alpha},
                         {"rank_pattern", rank_pattern},
                         {"alpha_pattern", alpha_pattern},
                         {"use_rslora", false},
                         {"use_dora", false},
                         {"fan_in_fan_out", b.fan_in_fan_out},
                         {"lora_dropout", 0.0},
                         {"bias", "none"},
                         {"target_modules", leaves},
                         {"inference_mode", true}};
  image.config = config.dump(2) + "\n";
  return image;
}

void export_peft(const Bundle& b, size_t task, const fs::path& dir, DType dtype) {
  PeftImage image = peft_image(b, task);
  std::vector<TensorData> tensors;
  for (auto& [name, m] : image.tensors) tensors.push_back(tensor_from_matrix(name, m, dtype));
  // Build the directory beside its target, then rename: complete or absent.
  AtomicDir out(dir);
  safetensors_write(out.path() / "adapter_model.safetensors", std::move(tensors), {{"format", "pt"}});
  write_file_atomic(out.path() / "adapter_config.json", image.config);
  out.commit();
}

}  // namespace hydraopt::io
