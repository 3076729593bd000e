"""Benchmark protocols: how the data are split or corrupted, and how predictions are scored.

Every function works on a cells x genes matrix of raw counts (scipy sparse or dense numpy) and
knows nothing about the methods; a method only ever sees the part it is allowed to train on.

- :func:`mcv_split` + :func:`score_mcv`: molecular cross-validation (Batson, Royer & Webber
  2019). Each count is split by binomial thinning, ``X' ~ Binomial(X, p)``, ``X'' = X - X'``;
  the method is fitted on ``X'`` only and its prediction, rescaled by ``(1 - p) / p``, is scored
  against ``X''``: Poisson NLL ``mean(pred - X'' log pred)``, Poisson deviance and the MSE of
  square roots. :func:`score_openproblems` adds OpenProblems' denoising MSE on the same split,
  :func:`score_openproblems_lognorm` the same for a prediction made on the log scale.
- :func:`mask_nonzeros` + :func:`score_masked`: the scVI 0.6.8 imputation protocol (10% of the
  non-zero entries are multiplied by Bernoulli(0.9)); median absolute error over the entries
  that changed.
- :func:`cell_split`: cells held out for the held-out-cell NLL; :func:`poisson_nll_entries`,
  :func:`zinb_nll_entries` and :func:`zip_nll_entries` are full log-pmfs (with ``lgamma(x+1)``),
  the same per-entry scale as ``zipo.ZiPo.evaluate``.
- :func:`mean_baseline`: library-size-scaled gene means, the "no denoising" prediction, also used
  for genes a method could not be fitted on (all zero in its training matrix).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.special import gammaln

PRED_FLOOR = 1e-6
"""Predictions are floored here before any log: MAGIC and PCA can return zeros or (after
clipping) tiny values, and a zero prediction of a positive count has infinite Poisson NLL."""


def dense(x) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def _csr(x) -> sp.csr_matrix:
    return sp.csr_matrix(x) if not sp.issparse(x) else x.tocsr()


# --------------------------------------------------------------------------- splits
def mcv_split(x, p: float, rng: np.random.Generator) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Binomial thinning of every count: ``X' ~ Binomial(X, p)``, ``X'' = X - X'`` (both CSR,
    float32, integer-valued). Only non-zeros are touched, so it stays sparse."""
    x = _csr(x).astype(np.float32)
    x.sum_duplicates()
    counts = np.rint(x.data).astype(np.int64)
    kept = rng.binomial(counts, p).astype(np.float32)
    x1 = sp.csr_matrix((kept, x.indices.copy(), x.indptr.copy()), shape=x.shape)
    x2 = sp.csr_matrix((counts - kept, x.indices.copy(), x.indptr.copy()), shape=x.shape)
    x1.eliminate_zeros()
    x2.eliminate_zeros()
    return x1, x2


def mask_nonzeros(x, rng: np.random.Generator, fraction: float = 0.1, keep_prob: float = 0.9
                  ) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """scVI 0.6.8's corruption: pick ``fraction`` of the non-zero entries and multiply each by
    Bernoulli(``keep_prob``), so about 1% of the non-zeros become zero. Returns the corrupted
    matrix and the (rows, cols) of the entries that changed (became zero)."""
    x = _csr(x).astype(np.float32)
    x.sum_duplicates()
    coo = x.tocoo()
    nnz = coo.nnz
    chosen = rng.choice(nnz, size=int(np.floor(fraction * nnz)), replace=False)
    zeroed = chosen[rng.binomial(1, keep_prob, size=chosen.size) == 0]
    data = coo.data.copy()
    data[zeroed] = 0.0
    corrupted = sp.csr_matrix((data, (coo.row, coo.col)), shape=x.shape)
    corrupted.eliminate_zeros()
    return corrupted, coo.row[zeroed], coo.col[zeroed]


def cell_split(n_cells: int, rng: np.random.Generator, test_fraction: float = 0.1
               ) -> tuple[np.ndarray, np.ndarray]:
    """Random (train, test) split of cell indices, both sorted; at least 2 test cells."""
    perm = rng.permutation(n_cells)
    n_test = max(2, int(round(test_fraction * n_cells)))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def expressed_genes(x) -> np.ndarray:
    """Boolean mask of genes with at least one count (what zipo.ZiPo can be fitted on)."""
    return np.asarray((_csr(x) > 0).sum(axis=0)).ravel() > 0


# --------------------------------------------------------------------------- baseline
def gene_proportions(x_train) -> np.ndarray:
    """Each gene's share of all counts in ``x_train``; a gene with no counts gets 0.5 of a count
    (as ``zipo.ZiPo.baseline_nll`` does), so every rate is positive."""
    totals = np.asarray(_csr(x_train).sum(axis=0), dtype=np.float64).ravel()
    totals = np.where(totals > 0, totals, 0.5)
    return totals / totals.sum()


def mean_baseline(library: np.ndarray, proportions: np.ndarray) -> np.ndarray:
    """No denoising: ``L_c * p_g`` (cells x genes)."""
    return np.outer(np.asarray(library, dtype=np.float64), proportions)


# --------------------------------------------------------------------------- scores
def _safe(pred) -> np.ndarray:
    return np.maximum(np.asarray(pred, dtype=np.float64), PRED_FLOOR)


def poisson_score(pred, target) -> float:
    """``mean(pred - target * log pred)`` over all entries (the MCV Poisson loss; it drops the
    ``lgamma(target + 1)`` term, which does not depend on the prediction)."""
    pred, target = _safe(pred), dense(target).astype(np.float64)
    return float(np.mean(pred - target * np.log(pred)))


def poisson_deviance_entries(pred, target) -> np.ndarray:
    """Poisson deviance ``2 * (t log(t / pred) - (t - pred))`` per entry, ``0 log 0 = 0``."""
    pred, target = _safe(pred), dense(target).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        term = np.where(target > 0, target * np.log(target / pred), 0.0)
    return 2.0 * (term - (target - pred))


def poisson_deviance(pred, target) -> float:
    """Mean Poisson deviance over all entries (:func:`poisson_deviance_entries`)."""
    return float(np.mean(poisson_deviance_entries(pred, target)))


def sqrt_mse(pred, target) -> float:
    """``mean((sqrt(pred) - sqrt(target))^2)``: the MCV paper's MSE on the variance-stabilised
    scale."""
    pred = np.maximum(np.asarray(pred, dtype=np.float64), 0.0)
    return float(np.mean((np.sqrt(pred) - np.sqrt(dense(target).astype(np.float64))) ** 2))


def log_normalize(x, target_sum: float = 1e4) -> np.ndarray:
    """``log1p`` of each cell scaled to ``target_sum`` counts (cells with no counts stay 0)."""
    x = np.maximum(dense(x).astype(np.float64), 0.0)
    lib = x.sum(axis=1, keepdims=True)
    return np.log1p(np.divide(x * target_sum, lib, out=np.zeros_like(x), where=lib > 0))


def score_openproblems(pred, target) -> dict[str, float]:
    """OpenProblems' denoising MSE: both matrices normalised to 1e4 counts per cell, ``log1p``,
    mean squared difference. (OpenProblems' own Poisson metric passes its arguments in swapped
    order; we report the correct Poisson NLL in :func:`score_mcv` instead.)"""
    return {"op_mse_log1p": float(np.mean((log_normalize(pred) - log_normalize(target)) ** 2))}


def score_openproblems_lognorm(pred_lognorm, target, proportions: np.ndarray,
                               expressed: np.ndarray, target_sum: float = 1e4) -> dict[str, float]:
    """:func:`score_openproblems` for a prediction already on the log scale (ZiPo's
    ``expectation="lognorm"`` at the target's depth, for the ``expressed`` genes).

    The target, ``log1p(1e4 X'' / |X''|)``, is random; the prediction with the least expected
    squared error is its conditional mean E[log1p(1e4 X'' / |X''|)]. :func:`score_openproblems`
    log-normalises an expected count instead, log1p(E[...]), which Jensen's inequality puts above
    that mean wherever expression is low. So this is the same metric on the same target, with
    the prediction's log-normalisation skipped because the method has done it in expectation.
    Genes the method was not fitted on get ``log1p(target_sum * p_g)``: the mean baseline that
    :func:`mean_baseline` fills counts with (``L_c * p_g``), log-normalised by ``L_c``."""
    full = np.repeat(np.log1p(target_sum * np.asarray(proportions, dtype=np.float64))[None, :],
                     np.shape(pred_lognorm)[0], axis=0)
    full[:, expressed] = pred_lognorm
    return {"op_mse_log1p_lognorm":
            float(np.mean((full - log_normalize(target, target_sum)) ** 2))}


def score_mcv(pred_on_x1, x2, p: float) -> dict[str, float]:
    """Scores of a prediction made from ``X'`` (on ``X'``'s depth) against ``X''``."""
    pred = np.asarray(pred_on_x1, dtype=np.float64) * (1.0 - p) / p
    return {
        "poisson_nll": poisson_score(pred, x2),
        "poisson_deviance": poisson_deviance(pred, x2),
        "sqrt_mse": sqrt_mse(pred, x2),
    }


def score_masked(pred, original, rows: np.ndarray, cols: np.ndarray) -> dict[str, float]:
    """Median absolute error between the original and the imputed values over the entries
    that the corruption set to zero."""
    orig = np.asarray(_csr(original)[rows, cols], dtype=np.float64).ravel()
    imputed = np.asarray(pred, dtype=np.float64)[rows, cols]
    return {"masked_median_abs_error": float(np.median(np.abs(orig - imputed))),
            "masked_entries": int(rows.size)}


# --------------------------------------------------------------------------- log-pmfs
def poisson_nll_entries(x, rate) -> np.ndarray:
    """``-log Poisson(x; rate)`` per entry."""
    x, rate = dense(x).astype(np.float64), _safe(rate)
    return rate - x * np.log(rate) + gammaln(x + 1.0)


def zip_nll_entries(x, rate, pi) -> np.ndarray:
    """``-log ZIP(x; rate, pi)`` per entry (``pi`` = probability of a structural zero)."""
    x, rate = dense(x).astype(np.float64), _safe(rate)
    pi = np.clip(np.asarray(pi, dtype=np.float64), 0.0, 1.0 - 1e-12)
    log_pois = x * np.log(rate) - rate - gammaln(x + 1.0)
    log_zero = np.logaddexp(np.log(np.maximum(pi, 1e-300)), np.log1p(-pi) - rate)
    return -np.where(x > 0, np.log1p(-pi) + log_pois, log_zero)


def zinb_nll_entries(x, mean, theta, pi) -> np.ndarray:
    """``-log ZINB(x; mean, theta, pi)`` per entry (``theta`` = inverse dispersion)."""
    x, mean = dense(x).astype(np.float64), _safe(mean)
    theta = np.maximum(np.asarray(theta, dtype=np.float64), 1e-8)
    pi = np.clip(np.asarray(pi, dtype=np.float64), 0.0, 1.0 - 1e-12)
    log_t_tm = np.log(theta) - np.log(theta + mean)
    log_nb = (gammaln(x + theta) - gammaln(theta) - gammaln(x + 1.0)
              + theta * log_t_tm + x * (np.log(mean) - np.log(theta + mean)))
    log_zero = np.logaddexp(np.log(np.maximum(pi, 1e-300)), np.log1p(-pi) + theta * log_t_tm)
    return -np.where(x > 0, np.log1p(-pi) + log_nb, log_zero)


def oracle_mcv_prediction(x1, rate, pi, p: float) -> np.ndarray:
    """Bayes-optimal prediction of ``X''`` given ``X'`` and the true ZIP parameters (simulated
    data only), on ``X'``'s depth so :func:`score_mcv` can rescale it like any method's:
    ``E[X'' | X'] = (1 - p) * rate * P(not a structural zero | X')``."""
    x1 = dense(x1).astype(np.float64)
    rate = np.asarray(rate, dtype=np.float64)
    pi = np.asarray(pi, dtype=np.float64)
    survive = (1 - pi) * np.exp(-p * rate)
    p_real = np.where(x1 > 0, 1.0, survive / (pi + survive))
    return p * rate * p_real  # score_mcv multiplies by (1 - p) / p


def bayes_mcv_prediction(x1, mean, theta, pi, p: float) -> np.ndarray:
    """The best prediction of ``X''`` from ``X'`` given the true state-level parameters of a
    zero-inflated Gamma-Poisson world (each entry's rate ~ Gamma(``theta``, ``theta`` /
    ``mean``) at the whole depth, its count Poisson, 0 with probability ``pi`` for both
    parts), on ``X'``'s depth as :func:`oracle_mcv_prediction`. ``X'`` sees the rate at depth
    p, m' = p mean: a count x moves it to (theta + x) m' / (theta + m'); a zero is structural
    with probability pi / (pi + (1 - pi) NB(0; m', theta)), else moves it the same way."""
    x1 = dense(x1).astype(np.float64)
    m1 = p * np.asarray(mean, dtype=np.float64)
    theta = np.asarray(theta, dtype=np.float64)
    pi = np.asarray(pi, dtype=np.float64)
    shrunk = (theta + x1) * m1 / (theta + m1)
    nb_zero = (1 - pi) * np.exp(-theta * np.log1p(m1 / theta))
    return np.where(x1 > 0, shrunk, shrunk * nb_zero / (pi + nb_zero))
