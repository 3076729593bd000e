"""Genes with no counts in any cell, as every 10x matrix has thousands of: a model trains on
the detected genes, and its outputs cover every gene of the data, 0 for the undetected ones."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import zipo
from zipo.errors import InputError

from conftest import small_model

# Where the undetected genes go among pbmc_small's 230: some inside, some at the end.
ZERO_AT = [0, 10, 10, 11, 230, 230, 230]
NOTICE = (r"7 of 237 genes have no counts in any cell \(ZERO0, ZERO1, ZERO2, \.\.\. \(7 in "
          r"all\)\): training on the 230 detected genes; the others' denoised values are 0")


def with_undetected_genes(adata, fmt: str = "csr", tmp_path=None):
    """``adata`` with 7 all-zero genes ZERO0..ZERO6 inserted at ``ZERO_AT``, its counts as
    ``fmt`` (csr, csc, dense, or backed: an .h5ad in ``tmp_path`` opened backed)."""
    X = sp.csr_matrix(adata.X)
    zero = sp.csr_matrix((adata.n_obs, 1), dtype=X.dtype)
    columns, names, start = [], [], 0
    for k, at in enumerate(ZERO_AT):
        columns += [X[:, start:at], zero]
        names += list(adata.var_names[start:at]) + [f"ZERO{k}"]
        start = at
    columns.append(X[:, start:])
    names += list(adata.var_names[start:])
    full = ad.AnnData(sp.hstack(columns, format="csr"), obs=adata.obs.copy(),
                      var=pd.DataFrame(index=names))
    return in_format(full, fmt, tmp_path)


def in_format(adata, fmt: str, tmp_path=None):
    """``adata`` with its counts as ``fmt``: csr, csc, dense, or backed (written to an .h5ad in
    ``tmp_path`` and opened backed)."""
    X = sp.csr_matrix(adata.X)
    X = {"csr": X, "csc": X.tocsc(), "dense": X.toarray(), "backed": X}[fmt]
    out = ad.AnnData(X, obs=adata.obs.copy(), var=adata.var.copy())
    if fmt == "backed":
        path = tmp_path / f"{adata.n_vars}_genes.h5ad"
        out.write_h5ad(path)
        out = ad.read_h5ad(path, backed="r")
    return out


def zero_genes(adata) -> np.ndarray:
    return np.flatnonzero(pd.Index(adata.var_names).str.startswith("ZERO"))


@pytest.mark.parametrize("fmt", ["csr", "csc", "dense", "backed"])
def test_trains_on_the_detected_genes_and_denoises_every_gene(pbmc_small, fmt, tmp_path):
    """The same model as on the detected genes alone (same seed), stated in one warning;
    denoised values for every gene of the input, 0 for the undetected ones."""
    full = with_undetected_genes(pbmc_small, fmt, tmp_path)
    with pytest.warns(UserWarning, match=NOTICE):
        model = small_model(full, seed=3)
    assert list(model.var_names) == list(pbmc_small.var_names)
    model.train()
    detected = in_format(pbmc_small, fmt, tmp_path)  # on disk, cells are shuffled in chunks
    reference = small_model(detected, seed=3).train()
    result = model.denoise(full, copy=True, zero_inflation=True)
    denoised = result.layers["zipo_denoised"]
    assert denoised.shape == full.shape == (80, 237)
    zeros = zero_genes(full)
    assert np.all(denoised[:, zeros] == 0) and np.all(result.layers["zipo_zero_prob"][:, zeros] == 0)
    expected = reference.denoise(detected, copy=True).layers["zipo_denoised"]
    np.testing.assert_allclose(np.delete(denoised, zeros, axis=1), expected, rtol=1e-5)
    assert np.all(expected > 0)


@pytest.mark.parametrize("expectation", ["rate", "mixture", "lognorm", "posterior"])
def test_every_expectation_gives_zero_for_undetected_genes(pbmc_small, trained_model, expectation):
    full = with_undetected_genes(pbmc_small)
    with pytest.warns(UserWarning, match="7 of the 237 genes denoised are not in the model and "
                                         "have no counts in any cell here"):
        out = trained_model.denoise(full, expectation=expectation, zero_inflation=True, copy=True)
    own = trained_model.denoise(pbmc_small, expectation=expectation, copy=True)
    for layer in ("zipo_denoised", "zipo_zero_prob"):
        assert out.layers[layer].shape == full.shape
        assert np.all(out.layers[layer][:, zero_genes(full)] == 0)
    np.testing.assert_allclose(np.delete(out.layers["zipo_denoised"], zero_genes(full), axis=1),
                               own.layers["zipo_denoised"], rtol=1e-6)


def test_streamed_output_and_gene_selection_cover_undetected_genes(pbmc_small, trained_model,
                                                                    tmp_path):
    full = with_undetected_genes(pbmc_small)
    with pytest.warns(UserWarning):
        written = trained_model.denoise(full, out=tmp_path / "d.h5ad", zero_inflation=True)
    assert written.shape == full.shape and list(written.var_names) == list(full.var_names)
    X = np.asarray(written.X[:, :])
    assert np.all(X[:, zero_genes(full)] == 0) and np.all(np.delete(X, zero_genes(full), 1) > 0)
    written.file.close()
    with pytest.warns(UserWarning, match="1 of the 2 genes denoised"):
        trained_model.denoise(full, genes=["ZERO4", "CD79A"])
    chosen = full.obsm["zipo_denoised"]
    assert list(chosen.columns) == ["ZERO4", "CD79A"]
    assert np.all(chosen["ZERO4"] == 0) and np.all(chosen["CD79A"] > 0)


def test_undetected_model_genes_are_predicted_and_extra_genes_with_counts_refused(
        pbmc_small, trained_model):
    """A model's gene without counts in new cells is still the model's to predict; a gene the
    model lacks is accepted only without counts."""
    x = pbmc_small.X.toarray()
    x[:, 17] = 0
    unseen = ad.AnnData(sp.csr_matrix(x), obs=pbmc_small.obs, var=pbmc_small.var)
    out = trained_model.denoise(unseen, copy=True)
    assert np.all(out.layers["zipo_denoised"][:, 17] > 0)

    full = with_undetected_genes(pbmc_small)
    counts = full.X.tolil()
    counts[[3, 5], zero_genes(full)[2]] = 2
    full.X = counts.tocsr()
    with pytest.raises(InputError, match=r"1 genes are not in the model and have counts here "
                                         r"\(ZERO2\)\. Drop them with adata\[:, model\.var_names\]"):
        trained_model.denoise(full, copy=True)


def test_gene_programs_give_undetected_genes_no_weight(pbmc_small):
    full = with_undetected_genes(pbmc_small)
    with pytest.warns(UserWarning):
        model = small_model(full, max_epochs=1).train()
    model.gene_programs()
    loadings = full.varm["zipo_programs"]
    loadings = loadings.toarray() if sp.issparse(loadings) else loadings
    assert loadings.shape[0] == 237
    assert np.all(loadings[zero_genes(full)] == 0)
    assert np.count_nonzero(np.delete(loadings, zero_genes(full), axis=0)) > 0


def test_the_shipped_pbmc4k_sample_with_undetected_genes_denoises(pbmc4k_demo_data):
    """The shipped 10x sample with 2,000 undetected genes added, as Cell Ranger's matrices
    have them: zipo.denoise works with its defaults and fills every gene."""
    adata = pbmc4k_demo_data()
    n = adata.n_vars
    X = sp.hstack([sp.csr_matrix(adata.X), sp.csr_matrix((adata.n_obs, 2000), dtype=np.float32)],
                  format="csr")
    full = ad.AnnData(X, obs=adata.obs, var=pd.DataFrame(
        index=list(adata.var_names) + [f"UNDETECTED{k}" for k in range(2000)]))
    with pytest.warns(UserWarning, match=f"2,000 of {n + 2000:,} genes have no counts"):
        model = zipo.denoise(full, max_epochs=2, verbose=False, return_model=True)
    assert len(model.var_names) == n
    assert full.layers["zipo_denoised"].shape == (adata.n_obs, n + 2000)
    assert np.all(full.layers["zipo_denoised"][:, n:] == 0)
    assert np.all(full.layers["zipo_denoised"][:, :n].sum(axis=0) > 0)
