#include "methods/fit_error.h"

#include <algorithm>
#include <cmath>

#include "linalg/factored.h"
#include "util/parallel.h"

namespace hydraopt {

using Eigen::MatrixXd;

std::vector<double> update_norms2(const ModuleProblem& p) {
  std::vector<double> n(p.tasks());
  util::parallel_for(p.tasks(), [&](size_t i) {
    const auto& l = p.loras[i];
    n[i] = l.scale * l.scale * linalg::product_norm2(l.B, l.A);
  });
  return n;
}

namespace {

// ||dW_i - dW_hat_i||^2 from [s B_i, -L] [A_i; R]: accurate to rounding
// of the norm itself, for any error however small.
double error2_stacked(const ModuleLora& lora, const ModuleFit& f, size_t i) {
  const MatrixXd l = f.left(i);
  const MatrixXd& r = f.right(i);
  MatrixXd x(l.rows(), lora.rank() + l.cols());
  x << lora.scale * lora.B, -l;
  MatrixXd y(lora.rank() + r.rows(), r.cols());
  y << lora.A, r;
  return linalg::product_norm2(x, y);
}

// fit_error2 on task i's factors A (r x in) and B (out x r), given as
// matrices or as transposed views of At and Bt: the same products either
// way. `lora()` gives them as a ModuleLora for the rare exact recount.
template <typename AType, typename BType, typename Lora>
double error2(const AType& a, const BType& b, double lscale, const ModuleFit& f, size_t i, double norm2,
              const MatrixXd& hh, const MatrixXd& rr, Lora&& lora) {
  // ||dW||^2 - 2 <dW, dW_hat> + ||dW_hat||^2 with rank-sized products. That
  // difference loses relative accuracy when the error is tiny, so errors
  // below 1e-6 of ||dW||^2 are recomputed from the stacked factors.
  const MatrixXd& h = f.heads[f.head_of[i]];
  const MatrixXd& r = f.bodies[f.body_of[i]];
  MatrixXd c;  // the core as a full matrix (identity when absent)
  if (f.core_of[i] < 0) c = MatrixXd::Identity(h.cols(), r.rows());
  else if (f.diagonal_cores) c = f.cores[f.core_of[i]].col(0).asDiagonal();
  else c = f.cores[f.core_of[i]];
  const double s = f.scale[i];
  const double inner = s * lscale * ((h.transpose() * b) * (a * r.transpose())).cwiseProduct(c).sum();
  const double sq = s * s * ((c.transpose() * hh * c).cwiseProduct(rr)).sum();
  const double e = norm2 - 2 * inner + sq;
  return e > 1e-6 * norm2 ? e : error2_stacked(lora(), f, i);
}

}  // namespace

std::vector<double> fit_errors2(const ModuleProblem& p, const ModuleFit& f, const std::vector<double>* norms) {
  // The Grams of shared heads and bodies, once; then fit_error2 per task.
  const std::vector<double> own = norms ? std::vector<double>() : update_norms2(p);
  const std::vector<double>& n2 = norms ? *norms : own;
  std::vector<MatrixXd> hh(f.heads.size()), rr(f.bodies.size());
  util::parallel_for(f.heads.size(), [&](size_t j) { hh[j] = f.heads[j].transpose() * f.heads[j]; });
  util::parallel_for(f.bodies.size(), [&](size_t j) { rr[j] = f.bodies[j] * f.bodies[j].transpose(); });
  std::vector<double> e(p.tasks());
  util::parallel_for(p.tasks(), [&](size_t i) { e[i] = fit_error2(p, f, i, n2[i], hh[f.head_of[i]], rr[f.body_of[i]]); });
  return e;
}

double fit_error2(const ModuleProblem& p, const ModuleFit& f, size_t i, double norm2, const MatrixXd& hh,
                  const MatrixXd& rr) {
  const ModuleLora& l = p.loras[i];
  return error2(l.A, l.B, l.scale, f, i, norm2, hh, rr, [&]() -> const ModuleLora& { return l; });
}

double fit_error2(const ModuleLoraT& l, const ModuleFit& f, size_t i, double norm2, const MatrixXd& hh,
                  const MatrixXd& rr) {
  const MatrixXd& h = f.heads[f.head_of[i]];
  const MatrixXd& r = f.bodies[f.body_of[i]];
  // (The functions taking ModuleLoraT copy the factors out where Eigen's
  // products would depend on their storage order: linalg::order_free_product.)
  if (!linalg::order_free_product(h.cols(), l.Bt.cols(), l.rank()) ||
      !linalg::order_free_product(l.rank(), l.At.rows(), r.rows())) {
    const ModuleLora copy{l.At.transpose(), l.Bt.transpose(), l.scale};
    return error2(copy.A, copy.B, copy.scale, f, i, norm2, hh, rr, [&]() -> const ModuleLora& { return copy; });
  }
  return error2(l.At.transpose(), l.Bt.transpose(), l.scale, f, i, norm2, hh, rr,
                [&] { return ModuleLora{l.At.transpose(), l.Bt.transpose(), l.scale}; });
}

double relative_error(double err2, double norm2) {
  return norm2 > 0 ? std::sqrt(err2 / norm2) : (err2 > 0 ? 1.0 : 0.0);
}

double weighted_error(const ModuleProblem& p, const ModuleFit& f) {
  auto e = fit_errors2(p, f, nullptr);
  double s = 0;
  for (size_t i = 0; i < e.size(); ++i) s += p.weights[i] * e[i];
  return s;
}

}  // namespace hydraopt
