// Truncated SVD of an explicit (dense) matrix, exact or randomized: the one
// the single-merge baselines refactorise their merged out x in update with.
//
// Why not factored.h's range finder (top_right_subspace)? It solves another
// problem under other rules: the right subspace only, an adaptive stopping
// rule on the residual energy, a single-precision phase, Cholesky QR, its
// own exact/randomized threshold and start. Any of these changes the bits,
// and the baselines' results are pinned (tests/pin: synth's 512-wide
// modules take the randomized path), so the baselines keep this fixed-step
// algorithm; it is here, beside the range finders, as linalg's one dense
// randomized SVD.
#pragma once

#include <Eigen/Core>
#include <cstdint>

namespace hydraopt::linalg {

/// Best rank-k approximation of a dense matrix m (rows x cols): writes U
/// (rows x k', singular values folded in) and Vt (k' x cols, orthonormal
/// rows), k' = min(k, rows, cols). Exact (BDCSVD) when min(rows, cols) <=
/// exact_limit or k + 10 >= min(rows, cols); otherwise Halko, Martinsson &
/// Tropp (2011) Alg. 4.4: k + 10 Gaussian samples, 4 power iterations, a
/// Householder QR after every product, then an exact SVD of the projected
/// (k + 10) x cols matrix. The Gaussian start is the util::SplitMix64
/// stream from state splitmix_finalize(seed), column-major, Box-Muller with
/// the log of the complement (util::BoxMullerLog): same input and seed,
/// same bits.
void dense_truncated_svd(const Eigen::MatrixXd& m, Eigen::Index k, uint64_t seed,
                         Eigen::MatrixXd* u, Eigen::MatrixXd* vt, Eigen::Index exact_limit = 256);

}  // namespace hydraopt::linalg
