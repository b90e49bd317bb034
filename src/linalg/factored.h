// Linear algebra on updates kept in factored form.
//
// A task's update on one module is dW = L R with L (m x p) and R (p x n),
// p (the LoRA rank) much smaller than m, n. Nothing here forms an m x n
// matrix: norms, inner products, subspaces and SVDs go through p-sized
// Grams and QR factors.
#pragma once

#include <Eigen/Core>
#include <functional>
#include <vector>

namespace hydraopt::linalg {

/// ||X Y||_F^2 = trace((X^T X)(Y Y^T)) for X (m x p), Y (p x n); >= 0.
double product_norm2(const Eigen::MatrixXd& x, const Eigen::MatrixXd& y);

/// The same given X^T (p x m) and Y^T (n x p): trace((Xt Xt^T)(Yt^T Yt)),
/// i.e. max(0, sum(row_gram(Xt) .* column_gram(Yt))).
double product_norm2_transposed(const Eigen::MatrixXd& xt, const Eigen::MatrixXd& yt);

/// Whether Eigen's product of an m x depth and a depth x n matrix gives the
/// same bits whatever the operands' storage order: its general matrix
/// product (both sides above 1, m + n + depth >= 20) and outer products do;
/// its matrix-vector and small coefficient-based products do not. Code that
/// works on transposed views (ModuleLoraT, row_gram) copies them out where
/// this fails, so it matches the untransposed code bit for bit.
bool order_free_product(Eigen::Index m, Eigen::Index depth, Eigen::Index n);

/// X^T X and Y Y^T, exactly symmetric: the Grams the functions here use.
Eigen::MatrixXd column_gram(const Eigen::MatrixXd& x);
Eigen::MatrixXd row_gram(const Eigen::MatrixXd& y);
/// ||X Y||_F^2 from the Grams X^T X and Y Y^T: max(0, sum(gx .* gy)), as
/// product_norm2 and product_norm2_transposed take it.
double norm2_from_grams(const Eigen::MatrixXd& gx, const Eigen::MatrixXd& gy);


/// Upper-triangular S (p x p) with S^T S = L^T L, so ||L R x|| = ||S R x||
/// for every R, x: the left factor reduced to its rank-sized core.
Eigen::MatrixXd left_core(const Eigen::MatrixXd& l);
/// left_core(Lt^T) given Lt, bit for bit.
Eigen::MatrixXd left_core_transposed(const Eigen::MatrixXd& lt);

struct Subspace {
  Eigen::MatrixXd basis;   ///< n x k, orthonormal columns
  Eigen::VectorXd values;  ///< k singular values, descending
  /// How top_right_subspace got it: randomized iterations run (0 when
  /// exact), and whether the exact solver produced it.
  int iterations = 0;
  bool exact = true;
};

/// Top-k right singular subspace of a stacked matrix T (P x n): the
/// k-dimensional V maximising ||T V||_F. k is clipped to min(P, n).
///
/// Small problems (min(P, n) <= max(128, 2 l), l = k + max(10, k / 2)) are
/// solved exactly (top_right_subspace_exact). Larger ones by randomized
/// subspace iteration on T^T T (Halko, Martinsson & Tropp 2011, Alg. 4.4)
/// with a Rayleigh-Ritz step every iteration: a Gaussian start of l columns
/// from a fixed-seed counter-based stream (same input, same output), each
/// iteration two products with T (P n l flops each) and a QR of n x l.
/// A-posteriori stopping rule on what the fits care about, the residual
/// energy E_q = ||T||^2 - ||T V_q||^2 (non-increasing in q): with decrements
/// d_q = E_{q-1} - E_q and ratio rho = d_q / d_{q-1} < 1, the remaining gain
/// of a geometric tail, d_q rho / (1 - rho), must be below 1e-4 E_q (or d_q
/// below 1e-13 ||T||^2). Without convergence after 40 iterations the exact
/// solver runs instead. So the residual is within ~0.01% of the optimum's,
/// inside the 0.1% the design allows.
///
/// The products run in single precision (twice the speed, half the memory
/// traffic) while E_q >= 1e-3 ||T||^2, where float rounding (~1e-7 ||T||^2)
/// is at most ~1e-4 of E_q, the stopping tolerance; below that the
/// iteration continues in double. In the single-precision phase the top k
/// eigenpairs of T's smaller Gram (formed in single precision, LAPACK's
/// ssyevr) are taken instead of the iterations still to go when, by a
/// multiply-add count, they cost less: at the second iteration if they
/// cost at most four iterations, later if less than the iterations the
/// gains' rate predicts (wide k on a flat spectrum: llama-1b's 4r bodies
/// took 12 iterations, three times the Gram's cost). The
/// basis is re-orthonormalised in double; the values are accurate to the
/// working precision.
Subspace top_right_subspace(const Eigen::MatrixXd& t, Eigen::Index k);

/// The same, for a T too large to keep in double beside its factors: `tf`
/// is T in single precision and `dense()` returns T in double; it is
/// called only when the iteration needs it (the double-precision phase, the
/// exact solver), and what it returns must stay valid until this function
/// returns. The single-precision phase measures E_q against ||tf||^2
/// (each column's in single precision, summed in double). Given tf = T.cast<float>() the result equals
/// top_right_subspace(T, k).
Subspace top_right_subspace(const Eigen::MatrixXf& tf, const std::function<const Eigen::MatrixXd&()>& dense,
                            Eigen::Index k);

/// The top-k eigenpairs of a symmetric positive semi-definite G (n x n),
/// as a Subspace: basis the eigenvectors, values the square roots of the
/// eigenvalues. For G = T T^T these are T's top left singular vectors and
/// its singular values. Exact (an eigendecomposition in double).
Subspace top_eigen_subspace(const Eigen::MatrixXd& g, Eigen::Index k);

/// The same in single precision, for predicted errors: LAPACK's ssyevr for
/// the top k pairs (one tridiagonal reduction of G, n^3 flops, then the
/// k pairs by MRRR), eigenvalues accurate to ~1e-7 of G's largest; exact in
/// double (top_eigen_subspace) in a build without LAPACKE.
Subspace estimate_top_eigen_subspace(const Eigen::MatrixXd& g, Eigen::Index k);

/// The exact solver: eigendecomposition of the smaller Gram (T^T T, or
/// T T^T with V = T^T Y / sigma re-orthonormalised).
Subspace top_right_subspace_exact(const Eigen::MatrixXd& t, Eigen::Index k);

/// All left singular pairs of a tall G (n x k, n >= k) from the
/// eigenpairs of its k x k Gram (LAPACK's divide-and-conquer dsyevd where
/// the build has it, several times faster than the QR iteration of Eigen's
/// solver when every vector is wanted), U = G V / sigma re-orthonormalised.
/// Singular values below ~1e-8 of the largest come out to their square's
/// rounding only, and their vectors are re-orthonormalised, not exact.
/// top_right_subspace_exact(G^T, k) computes the same pairs with Eigen's
/// solver (LAPACK dsyev); it is kept as it is because every pinned output
/// goes through it; this one is the whitening's (BM_WhiteningFactor: 2x
/// faster on a decaying 2048 x 256 G).
Subspace left_singular_pairs(const Eigen::MatrixXd& g);

/// An estimate of the top-k left singular pairs of G (n x m) in single
/// precision, by a one-pass randomized range finder (Halko, Martinsson &
/// Tropp 2011, Alg. 4.1 and 5.1): Q = orth(G Omega) for a fixed-seed
/// Gaussian Omega of k + 32 columns (kept by shape, as the range finders'
/// starts), then the top pairs of (Q^T G)(Q^T G)^T (in double, dsyevd).
/// No power iteration: the subspace is not the tightest, and the values
/// never exceed the true ones.
Subspace sketched_left_singular_pairs(const Eigen::MatrixXf& g, Eigen::Index k);

/// Top-k right singular subspace of the product L R (m x p)(p x n) without
/// forming it: exact through factored_svd when min(p, n) is small, else the
/// randomized iteration above in single precision, each step two products
/// with L and two with R. The stopping rule uses the captured energy C_q
/// (the fits using it, merged updates, compare their error with ||L R||^2,
/// which is not computed): the geometric tail of the gains must be below
/// 1e-4 C_q. Values accurate to single precision.
Subspace top_right_subspace_of_product(const Eigen::MatrixXd& l, const Eigen::MatrixXd& r, Eigen::Index k);

/// An estimate of the top-k singular values of a product L R (m x p)(p x n)
/// from its two p x p Grams only, G_L = L^T L and G_R = R R^T (the values'
/// squares are the eigenvalues of G_L G_R): single-precision subspace
/// iteration in the G_R inner product, two p x p products per iteration,
/// stopped as estimate_top_eigen_subspace is (on ||L R||^2 = sum of
/// G_L o G_R minus the Ritz sum). For predicted errors.
Eigen::VectorXd estimate_product_values(const Eigen::MatrixXd& gl, const Eigen::MatrixXd& gr, Eigen::Index k);

/// Truncated SVD of the product L R (m x p)(p x n), rank k: returns U (m x k)
/// with singular values folded in, and Vt (k x n) with orthonormal rows, so
/// that U Vt is the best rank-k approximation of L R.
void factored_svd(const Eigen::MatrixXd& l, const Eigen::MatrixXd& r, Eigen::Index k, Eigen::MatrixXd* u,
                  Eigen::MatrixXd* vt);

/// Sum of the k largest eigenvalues of a symmetric positive semi-definite
/// matrix G (n x n), in single precision. From n = 640 rows (and k + 8 at
/// most a quarter of them), by Rayleigh-Ritz on a block Krylov space of G
/// (blocks of k + 8 columns from a fixed-seed Gaussian start), grown until
/// the Ritz sum gains less than 1e-6 of itself: a Ritz sum never exceeds
/// the true one (up to float rounding), and converges in a few blocks where
/// subspace iteration takes tens. Else, or when the space would pass n / 2
/// columns first, from all eigenvalues (to ~1e-6 of G's largest). The
/// Krylov route took half the dense one's time on the planner's grouped
/// blocks of 768-1024 rows (k = 32).
double top_eigen_sum(const Eigen::MatrixXd& g, Eigen::Index k);

/// Moore-Penrose pseudo-inverse of a symmetric positive semi-definite
/// matrix (eigenvalues below 1e-12 of the largest are treated as zero).
Eigen::MatrixXd psd_pinv(const Eigen::MatrixXd& g);

}  // namespace hydraopt::linalg
