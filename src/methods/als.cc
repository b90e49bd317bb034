// Alternating least squares on a fit with its sharing pattern fixed
// (methods/structures.h, als_refine): heads, then cores, then bodies, each
// an exact minimisation, so the objective never rises.
#include <map>

#include "linalg/factored.h"
#include "methods/structures.h"
#include "util/parallel.h"

namespace hydraopt {

using Eigen::Index;
using Eigen::MatrixXd;
using Eigen::VectorXd;

namespace {

auto core_of(const ModuleFit& f, size_t i) -> const MatrixXd* { return f.core_of[i] < 0 ? nullptr : &f.cores[f.core_of[i]]; }

std::vector<MatrixXd> grams(const std::vector<MatrixXd>& ms, bool rows) {
  std::vector<MatrixXd> g;
  for (auto& m : ms) g.push_back(rows ? MatrixXd(m * m.transpose()) : MatrixXd(m.transpose() * m));
  return g;
}

std::vector<MatrixXd> lefts(const ModuleProblem& p) {
  std::vector<MatrixXd> left(p.tasks());
  for (size_t i = 0; i < p.tasks(); ++i) left[i] = p.left(i);
  return left;
}

// Heads: H_g = (sum w L_i A_i M_i^T)(sum w M_i M_i^T)^+ with M_i = C_i R.
void heads_step(const ModuleProblem& p, const std::vector<MatrixXd>& left, ModuleFit* f) {
  const size_t n = p.tasks();
  const bool diag = f->diagonal_cores;
  auto core = [&](size_t i) { return core_of(*f, i); };
  auto rr = grams(f->bodies, true);
  for (size_t g = 0; g < f->heads.size(); ++g) {
    const Index k = f->heads[g].cols();
    MatrixXd num = MatrixXd::Zero(p.out(), k), den = MatrixXd::Zero(k, k);
    bool used = false;
    for (size_t i = 0; i < n; ++i) {
      if (f->head_of[i] != static_cast<int>(g) || p.weights[i] == 0) continue;
      used = true;
      const MatrixXd& r = f->bodies[f->body_of[i]];
      // A_i M_i^T = (A_i R^T) C_i^T
      const MatrixXd a_rt = p.loras[i].A * r.transpose();
      const MatrixXd* c = core(i);
      const MatrixXd a_mt = !c ? a_rt : diag ? MatrixXd(a_rt * c->col(0).asDiagonal()) : MatrixXd(a_rt * c->transpose());
      num += p.weights[i] * (left[i] * a_mt);
      const MatrixXd& g2 = rr[f->body_of[i]];
      den += p.weights[i] * (c ? (diag ? MatrixXd(c->col(0).asDiagonal() * g2 * c->col(0).asDiagonal())
                                       : MatrixXd(*c * g2 * c->transpose()))
                               : g2);
    }
    if (used) f->heads[g] = num * linalg::psd_pinv(den);
  }
}

// Cores, one per task: C = (H^T H)^+ H^T L A R^T (R R^T)^+, or the
// diagonal least-squares solution.
void cores_step(const ModuleProblem& p, const std::vector<MatrixXd>& left, ModuleFit* f) {
  if (f->cores.empty()) return;
  const size_t n = p.tasks();
  const bool diag = f->diagonal_cores;
  std::vector<MatrixXd> hh_pinv(f->heads.size()), rr_pinv(f->bodies.size());
  auto hh = grams(f->heads, false);
  auto rr = grams(f->bodies, true);
  std::map<std::pair<int, int>, MatrixXd> hadamard_pinv;
  for (size_t i = 0; i < n; ++i) {
    if (f->core_of[i] < 0) continue;
    const int hi = f->head_of[i], bi = f->body_of[i];
    MatrixXd hd = f->heads[hi].transpose() * left[i];        // k x r_i
    MatrixXd dr = p.loras[i].A * f->bodies[bi].transpose();  // r_i x k'
    if (diag) {
      auto key = std::make_pair(hi, bi);
      auto it = hadamard_pinv.find(key);
      if (it == hadamard_pinv.end()) it = hadamard_pinv.emplace(key, linalg::psd_pinv(hh[hi].cwiseProduct(rr[bi]))).first;
      VectorXd rhs = (hd.cwiseProduct(dr.transpose())).rowwise().sum();
      f->cores[f->core_of[i]] = it->second * rhs;
    } else {
      if (hh_pinv[hi].size() == 0) hh_pinv[hi] = linalg::psd_pinv(hh[hi]);
      if (rr_pinv[bi].size() == 0) rr_pinv[bi] = linalg::psd_pinv(rr[bi]);
      f->cores[f->core_of[i]] = hh_pinv[hi] * (hd * dr) * rr_pinv[bi];
    }
  }
}

}  // namespace

void solve_heads(const ModuleProblem& p, ModuleFit* f) { heads_step(p, lefts(p), f); }
void solve_cores(const ModuleProblem& p, ModuleFit* f) { cores_step(p, lefts(p), f); }

void als_refine(const ModuleProblem& p, ModuleFit* f, const FitOptions& o, FitStats* stats) {
  // Every product below is rank-sized: with L_i = s_i B_i, the terms of
  // ||L_i A_i - H C_i R||^2 only need A_i R^T (r x k'), H^T L_i (k x r) and
  // the k x k Grams H^T H, R R^T.
  const size_t n = p.tasks();
  const bool diag = f->diagonal_cores;
  const std::vector<MatrixXd> left = lefts(p);
  const std::vector<double> norms = update_norms2(p);
  auto core = [&](size_t i) { return core_of(*f, i); };

  // Objective with the current factors, from rank-sized pieces:
  // ||dW||^2 - 2 <H^T L A R^T, C> + tr(C^T H^T H C R R^T).
  auto objective = [&]() {
    auto hh = grams(f->heads, false);
    auto rr = grams(f->bodies, true);
    double total = 0;
    for (size_t i = 0; i < n; ++i) {
      if (p.weights[i] == 0) continue;
      const MatrixXd& h = f->heads[f->head_of[i]];
      const MatrixXd& r = f->bodies[f->body_of[i]];
      MatrixXd ht_l = h.transpose() * left[i];             // k x r_i
      MatrixXd a_rt = p.loras[i].A * r.transpose();        // r_i x k'
      MatrixXd c_full = core(i) ? (diag ? MatrixXd(core(i)->col(0).asDiagonal()) : *core(i))
                                : MatrixXd::Identity(h.cols(), r.rows());
      double inner = (ht_l * a_rt).cwiseProduct(c_full).sum();
      double sq = (c_full.transpose() * hh[f->head_of[i]] * c_full).cwiseProduct(rr[f->body_of[i]]).sum();
      total += p.weights[i] * std::max(0.0, norms[i] - 2 * inner + sq);
    }
    return total;
  };

  double obj = objective();
  if (stats) stats->objective = {weighted_error(p, *f)};
  for (int it = 0; it < o.max_iters; ++it) {
    ModuleFit prev = *f;
    heads_step(p, left, f);
    cores_step(p, left, f);
    // Bodies: R_b = (sum w N_i^T N_i)^+ (sum w N_i^T L_i A_i) with N_i = H C_i.
    {
      auto hh = grams(f->heads, false);
      for (size_t b = 0; b < f->bodies.size(); ++b) {
        const Index k = f->bodies[b].rows();
        MatrixXd num = MatrixXd::Zero(k, p.in()), den = MatrixXd::Zero(k, k);
        bool used = false;
        for (size_t i = 0; i < n; ++i) {
          if (f->body_of[i] != static_cast<int>(b) || p.weights[i] == 0) continue;
          used = true;
          const MatrixXd& h = f->heads[f->head_of[i]];
          const MatrixXd* c = core(i);
          MatrixXd ht_l = h.transpose() * left[i];  // k x r_i
          MatrixXd nt_l = c ? (diag ? MatrixXd(c->col(0).asDiagonal() * ht_l) : MatrixXd(c->transpose() * ht_l)) : ht_l;
          num += p.weights[i] * (nt_l * p.loras[i].A);
          const MatrixXd& g2 = hh[f->head_of[i]];
          den += p.weights[i] * (c ? (diag ? MatrixXd(c->col(0).asDiagonal() * g2 * c->col(0).asDiagonal())
                                           : MatrixXd(c->transpose() * g2 * *c))
                                   : g2);
        }
        if (used) f->bodies[b] = linalg::psd_pinv(den) * num;
      }
    }
    double next = objective();
    if (next > obj * (1 + 1e-9) + 1e-300) {  // rounding in a pseudo-inverse: keep the better fit
      *f = std::move(prev);
      break;
    }
    if (stats) {
      stats->objective.push_back(weighted_error(p, *f));
      stats->iterations = it + 1;
    }
    bool done = obj - next <= o.tol * obj;
    obj = next;
    if (done) break;
  }
}

}  // namespace hydraopt
