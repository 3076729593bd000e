"""Latent quality without extra dependencies: k-means (k-means++ starts, best of 10), the
adjusted Rand index and normalised mutual information (arithmetic-mean normalisation, as
scikit-learn's default). Leiden clusters come from the scanpy helper venv
(workers/leiden_worker.py); their ARI/NMI are computed here as well.
"""

from __future__ import annotations

import numpy as np


def kmeans(x: np.ndarray, k: int, seed: int = 0, n_init: int = 10, max_iter: int = 100
           ) -> np.ndarray:
    """Lloyd's k-means on the standardised-free embedding ``x``; returns labels."""
    x = np.asarray(x, dtype=np.float64)
    rng = np.random.default_rng(seed)
    best, best_inertia = None, np.inf
    sq = (x * x).sum(axis=1)
    for _ in range(n_init):
        centres = [x[rng.integers(len(x))]]
        for _ in range(1, k):  # k-means++
            d = np.min([((x - c) ** 2).sum(axis=1) for c in centres], axis=0)
            total = d.sum()
            centres.append(x[rng.choice(len(x), p=d / total)] if total > 0
                           else x[rng.integers(len(x))])
        c = np.array(centres)
        labels = np.zeros(len(x), dtype=int)
        for it in range(max_iter):
            dist = sq[:, None] - 2 * x @ c.T + (c * c).sum(axis=1)[None, :]
            new = dist.argmin(axis=1)
            if it > 0 and np.array_equal(new, labels):
                break
            labels = new
            for j in range(k):
                members = x[labels == j]
                if len(members):
                    c[j] = members.mean(axis=0)
        inertia = float(((x - c[labels]) ** 2).sum())
        if inertia < best_inertia:
            best, best_inertia = labels.copy(), inertia
    return best


def _contingency(a, b) -> np.ndarray:
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(table, (ai, bi), 1)
    return table


def adjusted_rand_index(truth, pred) -> float:
    t = _contingency(truth, pred)
    n = t.sum()

    def comb2(v):
        return (v * (v - 1) / 2).sum()

    index = comb2(t)
    rows, cols = comb2(t.sum(axis=1)), comb2(t.sum(axis=0))
    expected = rows * cols / (n * (n - 1) / 2)
    maximum = (rows + cols) / 2
    if maximum == expected:
        return 1.0
    return float((index - expected) / (maximum - expected))


def normalized_mutual_info(truth, pred) -> float:
    t = _contingency(truth, pred)
    n = t.sum()
    pij = t / n
    pi, pj = pij.sum(axis=1), pij.sum(axis=0)
    nz = pij > 0
    mi = float((pij[nz] * np.log(pij[nz] / np.outer(pi, pj)[nz])).sum())
    hi = float(-(pi[pi > 0] * np.log(pi[pi > 0])).sum())
    hj = float(-(pj[pj > 0] * np.log(pj[pj > 0])).sum())
    if hi == 0 and hj == 0:
        return 1.0
    denom = (hi + hj) / 2
    return float(mi / denom) if denom > 0 else 0.0


def r_squared(z: np.ndarray, y: np.ndarray) -> float:
    """R^2 of the least-squares fit of ``y`` from the columns of ``z`` and an intercept."""
    design = np.c_[np.asarray(z, dtype=np.float64), np.ones(len(z))]
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ coef
    return float(1 - residual @ residual / ((y - y.mean()) @ (y - y.mean())))


def depth_r2_within_labels(embedding: np.ndarray, log_library: np.ndarray,
                           labels: np.ndarray) -> float:
    """How much of each cell's sequencing depth the embedding holds beyond its cell type: R^2
    of log library size from the embedding within each label, weighed by the label's cells
    (``None`` labels are left out). Depth varies with cell type, so only the within-label part
    says the embedding tracks a technical quantity."""
    mask = np.array([lab is not None for lab in labels])
    truth = np.asarray(labels[mask]).astype(str)
    z, y = np.asarray(embedding)[mask], np.asarray(log_library, dtype=np.float64)[mask]
    names = np.unique(truth)
    return float(sum((truth == n).sum() * r_squared(z[truth == n], y[truth == n])
                     for n in names) / len(truth))


def latent_scores(embedding: np.ndarray, labels: np.ndarray, seed: int = 0,
                  leiden: np.ndarray | None = None) -> dict[str, float]:
    """ARI/NMI of k-means (k = number of label categories) and, when given, Leiden clusters
    against ``labels`` over the labelled cells (``None`` labels are left out)."""
    mask = np.array([lab is not None for lab in labels])
    truth = np.asarray(labels[mask]).astype(str)
    k = len(np.unique(truth))
    km = kmeans(np.asarray(embedding)[mask], k, seed=seed)
    out = {"kmeans_ari": adjusted_rand_index(truth, km), "kmeans_nmi": normalized_mutual_info(truth, km)}
    if leiden is not None:
        out["leiden_ari"] = adjusted_rand_index(truth, leiden[mask])
        out["leiden_nmi"] = normalized_mutual_info(truth, leiden[mask])
        out["leiden_clusters"] = int(len(np.unique(leiden)))
    return out
