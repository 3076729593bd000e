"""Extreme but valid counts train without NaN: library sizes from 1 to 1e6, and cells where
one gene holds 90% of the counts."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import zipo


def extreme_counts(n_cells=240, n_genes=60, seed=0):
    rng = np.random.default_rng(seed)
    library = np.round(10 ** rng.uniform(0, 6, n_cells)).astype(int)  # 1 .. 1e6 counts
    library[:2] = [1, 1_000_000]
    props = rng.dirichlet(np.full(n_genes, 0.3), n_cells)
    dominated = rng.random(n_cells) < 0.3  # a third of cells: one gene holds 90%
    props[dominated] *= 0.1 / props[dominated].sum(axis=1, keepdims=True)
    props[dominated, rng.integers(0, n_genes, dominated.sum())] += 0.9
    X = np.vstack([rng.multinomial(n, p) for n, p in zip(library, props)]).astype(np.float32)
    X[0, :] = 0
    X[0, 0] = 1  # the 1-count cell
    adata = ad.AnnData(sp.csr_matrix(X))
    adata.obs_names = [f"cell{i}" for i in range(n_cells)]
    adata.var_names = [f"gene{j}" for j in range(n_genes)]
    return adata[:, np.asarray(adata.X.sum(axis=0)).ravel() > 0].copy()


@pytest.mark.parametrize("likelihood", ["zip", "zinb", "poisson", "nb"])
def test_extreme_library_sizes_train_without_nan(likelihood):
    adata = extreme_counts()
    lib = np.asarray(adata.X.sum(axis=1)).ravel()
    assert lib.min() == 1 and lib.max() >= 9e5
    model = zipo.ZiPo(adata, likelihood=likelihood, encoder_dims=[128, 32], max_epochs=8,
                      batch_size=64, verbose=False)
    model.train()  # the paper's default learning rate start would be a harder test still
    assert np.isfinite(model.history[["train_loss", "validation_loss"]].to_numpy()).all()
    model.denoise(adata, zero_inflation=True)
    den = adata.layers["zipo_denoised"]
    assert np.isfinite(den).all() and (den >= 0).all()
    predicted = adata.obs["zipo_library_size"].to_numpy()
    assert np.isfinite(predicted).all() and (predicted > 0).all()


def test_paper_learning_rate_on_extremes_is_finite():
    adata = extreme_counts(seed=1)
    model = zipo.ZiPo(adata, encoder_dims=[128, 32], max_epochs=8, batch_size=64,
                      learning_rate=0.0212, verbose=False).train()
    assert np.isfinite(model.history["train_loss"]).all()
