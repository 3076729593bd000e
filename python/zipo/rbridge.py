"""Plain-array entry points for the R package (reached through reticulate).

reticulate 1.28 cannot convert scipy sparse matrices, so R sends a dgCMatrix as its three
arrays. A genes x cells CSC matrix has exactly the arrays of the cells x genes CSR matrix, so
the transpose between R's layout and AnnData's costs nothing and nothing is densified.
Nothing here models anything: it only moves data in and out of :class:`zipo.ZiPo`.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

# reticulate 1.28 converts pandas indexes with Index.format(), which pandas 2 deprecates; the
# warning would reach every R user's console and is not theirs to act on.
warnings.filterwarnings("ignore", message="Index.format is deprecated", category=FutureWarning)


def anndata_from_csc_parts(
    x: Any, i: Any, p: Any, n_genes: int, n_cells: int,
    gene_names: Any, cell_names: Any, obs: pd.DataFrame | None = None,
):
    """AnnData (cells x genes, CSR float32) from a genes x cells dgCMatrix's ``@x``, ``@i``,
    ``@p`` slots and dimnames; ``obs`` holds the colData columns needed (covariates)."""
    import anndata as ad

    n_genes, n_cells = int(n_genes), int(n_cells)
    data = np.asarray(x, dtype=np.float32).reshape(-1)
    indices = np.asarray(i, dtype=np.int32).reshape(-1)
    indptr = np.asarray(p, dtype=np.int64).reshape(-1)
    if indptr.shape[0] != n_cells + 1 or indices.shape[0] != data.shape[0]:
        raise ValueError(
            f"inconsistent sparse matrix parts: {indptr.shape[0]} column pointers for "
            f"{n_cells} cells, {indices.shape[0]} row indices for {data.shape[0]} values"
        )
    X = sp.csr_matrix((data, indices, indptr), shape=(n_cells, n_genes))
    cells = pd.Index(_names(cell_names, n_cells, "cell"))
    genes = pd.Index(_names(gene_names, n_genes, "gene"))
    if obs is None or len(getattr(obs, "columns", [])) == 0:
        obs = pd.DataFrame(index=cells)
    else:
        obs = pd.DataFrame(obs).copy()
        obs.index = cells
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=genes))


def csr_parts(matrix, layer: str | None = None) -> dict[str, Any]:
    """The arrays of a cells x genes matrix (or of an AnnData's ``X``/``layers[layer]``) as
    CSR, which R reads as a genes x cells dgCMatrix (``i = indices``, ``p = indptr``,
    ``x = data``); indices sorted as R requires. Taking the AnnData keeps reticulate from
    converting the scipy matrix itself, which reticulate 1.28 gets wrong."""
    if hasattr(matrix, "obs_names"):
        matrix = matrix.X if layer is None else matrix.layers[layer]
    m = sp.csr_matrix(matrix)
    m.sort_indices()
    return {"x": m.data.astype(np.float64), "i": m.indices.astype(np.int32),
            "p": m.indptr.astype(np.int32), "n_cells": m.shape[0], "n_genes": m.shape[1]}


def denoise_result(adata, key_added: str = "zipo") -> dict[str, Any]:
    """What :meth:`ZiPo.denoise` wrote into ``adata``, as numpy arrays for R: ``denoised`` and
    ``zero_prob`` genes x cells, ``latent`` cells x latents, ``library_size`` per cell."""
    # Transposed views are Fortran-ordered genes x cells: reticulate hands them to R as its
    # column-major genes x cells matrix without a transpose on the R side.
    out = {
        "denoised": np.asarray(adata.layers[f"{key_added}_denoised"]).T,
        "latent": np.asarray(adata.obsm[f"X_{key_added}"]),
        "library_size": adata.obs[f"{key_added}_library_size"].to_numpy(dtype=np.float64),
    }
    zp = adata.layers.get(f"{key_added}_zero_prob") if f"{key_added}_zero_prob" in adata.layers else None
    if zp is not None:
        out["zero_prob"] = np.asarray(zp).T
    return out


def _names(names: Any, n: int, what: str) -> list[str]:
    if names is None:
        return [f"{what}{k + 1}" for k in range(n)]
    names = [str(v) for v in np.atleast_1d(np.asarray(names, dtype=object))]
    if len(names) != n:
        raise ValueError(f"{len(names)} {what} names for {n} {what}s")
    return names
