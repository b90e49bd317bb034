#include "methods/fit.h"

#include <algorithm>

#include "io/safetensors.h"
#include "linalg/factored.h"

namespace hydraopt {

using Eigen::MatrixXd;

int64_t ModuleFit::params() const {
  int64_t p = 0;
  for (auto* list : {&heads, &cores, &bodies}) {
    for (const auto& m : *list) p += m.size();
  }
  return p;
}

MatrixXd ModuleFit::head_core(size_t i) const {
  const MatrixXd& h = heads[head_of[i]];
  if (core_of[i] < 0) return h;
  const MatrixXd& c = cores[core_of[i]];
  if (diagonal_cores) return h * c.col(0).asDiagonal();
  return h * c;
}

ModuleFit ModuleFit::transposed() const {
  ModuleFit t;
  for (auto& b : bodies) t.heads.push_back(b.transpose());
  for (auto& h : heads) t.bodies.push_back(h.transpose());
  for (auto& c : cores) t.cores.push_back(diagonal_cores ? c : MatrixXd(c.transpose()));
  t.head_of = body_of;
  t.body_of = head_of;
  t.core_of = core_of;
  t.scale = scale;
  t.diagonal_cores = diagonal_cores;
  return t;
}

ModuleFit ModuleFit::rounded(DType dtype) const {
  ModuleFit r = *this;
  for (auto* list : {&r.heads, &r.cores, &r.bodies}) {
    for (auto& m : *list) m = io::round_to_dtype(m, dtype);
  }
  return r;
}

int64_t ModuleProblem::max_rank() const {
  int64_t r = 0;
  for (auto& l : loras) r = std::max<int64_t>(r, l.rank());
  return r;
}

ModuleProblem ModuleProblem::transposed() const {
  ModuleProblem t;
  t.weights = weights;
  t.loras.reserve(loras.size());
  for (auto& l : loras) t.loras.push_back({l.B.transpose(), l.A.transpose(), l.scale});
  return t;
}

std::vector<double> update_norms2(const ModuleProblem& p) {
  std::vector<double> n(p.tasks());
  for (size_t i = 0; i < p.tasks(); ++i) n[i] = linalg::product_norm2(p.left(i), p.loras[i].A);
  return n;
}

std::vector<double> fit_errors2(const ModuleProblem& p, const ModuleFit& f) {
  std::vector<double> e(p.tasks());
  for (size_t i = 0; i < p.tasks(); ++i) {
    const MatrixXd l = f.left(i);
    const MatrixXd& r = f.right(i);
    const auto& lora = p.loras[i];
    // dW_i - dW_hat_i = [s B_i, -L] [A_i; R]
    MatrixXd x(l.rows(), lora.rank() + l.cols());
    x << p.left(i), -l;
    MatrixXd y(lora.rank() + r.rows(), r.cols());
    y << lora.A, r;
    e[i] = linalg::product_norm2(x, y);
  }
  return e;
}

double weighted_error(const ModuleProblem& p, const ModuleFit& f) {
  auto e = fit_errors2(p, f);
  double s = 0;
  for (size_t i = 0; i < e.size(); ++i) s += p.weights[i] * e[i];
  return s;
}

}  // namespace hydraopt
