#include "core/fit.h"

#include <algorithm>
#include <cmath>

#include "core/rounding.h"
#include "util/parallel.h"

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

ModuleFit ModuleFit::rounded(DType dtype) const& { return ModuleFit(*this).rounded(dtype); }

ModuleFit ModuleFit::rounded(DType dtype) && {
  std::vector<Eigen::MatrixXd*> all;
  for (auto* list : {&heads, &cores, &bodies}) {
    for (auto& m : *list) all.push_back(&m);
  }
  util::parallel_for(all.size(), [&](size_t j) { *all[j] = round_to_dtype(*all[j], dtype); });
  return std::move(*this);
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

}  // namespace hydraopt
