// Predicted errors: what each structure's closed-form start would leave on
// one module, told without fitting it (docs/methods.md, "Predicted errors").
//
// Everything comes from two Grams per module, GA = [A_1; ...; A_N][..]^T
// and GB = [B_1 ... B_N]^T [..] (sum of ranks square, single precision when
// estimating), and one eigenproblem per side on that small space: the
// shared bodies' spectra, the heads and cores in a body's basis, the
// groups' blocks, jd's cores and the merged update's values are all
// products of that size. The input and output dimensions enter only the
// two Grams (and, exact, the merged update's values). The mirrored (shared-B) families are the same
// quantities with the two Grams' roles swapped: nothing is transposed.
#pragma once

#include <Eigen/Core>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/fit.h"
#include "core/quant.h"
#include "core/storage.h"
#include "core/structure.h"
#include "linalg/factored.h"
#include "methods/cluster.h"
#include "methods/structures.h"

namespace hydraopt {

/// A structure's weighted error sum_i w_i ||dW_i - dW_hat_i||^2 after
/// rounding to the stored dtype, told without fitting it.
struct Prediction {
  double error = 0;
};

class Predictor {
 public:
  /// Reads p's factors once (the Grams, the norms, a few tasks' factors for
  /// quantization errors): they may go afterwards. With o.estimate (the
  /// planner) the Grams are summed and the spectra found in single
  /// precision (LAPACK's ssyevr), the merged update's values by subspace
  /// iteration (to ~1e-3 of the residual); without, everything is in
  /// double and exact (tests compare it with the fits' closed-form starts).
  Predictor(const ModuleProblem& p, const FitOptions& o);
  ~Predictor();

  /// ModuleFitter(p).fit(s).rounded(dtype)'s weighted error (its
  /// closed-form start's where ALS refines it): exact but for the
  /// subspaces' tolerance and the rounding, which is modelled.
  Prediction predict(const StructureSpec& s, DType dtype);
  /// The same stored in `precision` (methods/precision.h): each role in an
  /// integer format adds its relative quantization error kappa times the
  /// fitted energy, as rounding does, with kappa measured on the module's
  /// own factors in that format (bodies and cores: the A's; heads: the B's).
  Prediction predict(const StructureSpec& s, const Precision& precision, DType dtype);

 private:
  struct Side;
  /// Side 0 shares the A's (the input side), side 1 the B's; its spectrum
  /// and P at least k wide (or as wide as the stack's rank).
  Side& side(bool b, int64_t k);
  /// The side's S gin S^T, made again if side() let it go.
  const Eigen::MatrixXd& zz_of(Side& sd) const;
  /// <y_i, y_j> for the heads y_i = dW_i V in the side's body basis, k wide.
  const Eigen::MatrixXd& head_gram(Side& sd, int64_t k);
  /// The side's head and body clusterings (as the fits make them), cut.
  std::vector<int> head_groups(Side& sd, int groups);
  std::vector<int> body_groups(Side& sd, int groups);
  /// N minus the side's top-k energy: per-task shared forms' error.
  double tail(const Side& sd, int64_t k) const;
  double unrounded(const StructureSpec& s);
  double predict_unrounded(const StructureSpec& s);
  double quantization_kappa(const QuantFormat& f, bool heads);
  /// Top singular values of the weighted mean update (merged structures).
  const Eigen::VectorXd& merged(int64_t k);

  // What the predictions need of the module, kept so that its factors can
  // go once the predictor is made.
  FitOptions o_;
  ModuleShape shape_;
  std::vector<double> weights_, scales_;
  std::vector<Eigen::Index> at_;  ///< first row of each task in the stacks, and one past the last
  Eigen::MatrixXd ga_, gb_;       ///< A A^T and B^T B of the stacked factors
  double norm2_ = 0;              ///< N = sum_i w_i ||dW_i||^2
  /// sum_i w_i s_i^2 ||A_i||^2 ||B_i||^2 / r_i over N: 1 when every task's
  /// update spreads evenly over its rank.
  double spread_ = 1;
  std::vector<ModuleLora> sample_;  ///< some lines of the first tasks' factors, for quantization_kappa
  std::unique_ptr<Side> sides_[2];
  std::optional<Eigen::VectorXd> merged_;
  std::map<std::string, double> unrounded_;
  std::map<std::pair<std::string, bool>, double> kappa_;
};

}  // namespace hydraopt
