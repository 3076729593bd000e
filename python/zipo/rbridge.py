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

from .outputs import check_output_options  # noqa: F401  (R checks denoise()'s output first)

# reticulate 1.28 converts pandas indexes with Index.format(), which pandas 2 deprecates; the
# warning would reach every R user's console and is not theirs to act on.
warnings.filterwarnings("ignore", message="Index.format is deprecated", category=FutureWarning)


# reticulate 1.28 turns a Python error message of about 1,000 characters or more into a C++
# "basic_string::substr" error that says nothing of the problem.
R_MESSAGE_LIMIT = 900


def call(function, /, *args: Any, **kwargs: Any) -> Any:
    """``function(*args, **kwargs)`` for R (the R package's ``.py_call()``): a ValueError
    (bad input) whose message is too long for reticulate is raised again with the message
    shortened in the middle, keeping the problem (its start) and the fix (its end)."""
    try:
        return function(*args, **kwargs)
    except ValueError as e:
        message = str(e)
        if len(message) <= R_MESSAGE_LIMIT:
            raise
        keep = (R_MESSAGE_LIMIT - 5) // 2
        raise ValueError(f"{message[:keep]} ... {message[-keep:]}") from None


def anndata_from_csc_parts(
    x: Any, i: Any, p: Any, n_genes: int, n_cells: int,
    gene_names: Any, cell_names: Any, obs: pd.DataFrame | None = None,
):
    """AnnData (cells x genes, CSR float32) from a genes x cells dgCMatrix's ``@x``, ``@i``,
    ``@p`` slots and dimnames; ``obs`` holds the colData columns needed (covariates)."""
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
    return _anndata(X, gene_names, cell_names, obs)


class CsrAssembler:
    """A cells x genes CSR matrix sent by R a block of cells at a time, for counts R holds as a
    DelayedMatrix (e.g. HDF5-backed) that it reads in blocks of columns and never realises
    whole: each block arrives as a genes x cells dgCMatrix's ``@x``, ``@i``, ``@p`` slots, which
    are that block's CSR rows. Python keeps each block as float32 values and int32 indices, and
    :meth:`anndata` copies them into one matrix, freeing each block as it goes, so memory peaks
    at the sparse matrix plus one block."""

    def __init__(self, n_genes: int):
        self.n_genes = int(n_genes)
        self._data: list[np.ndarray] = []
        self._indices: list[np.ndarray] = []
        self._row_nnz: list[np.ndarray] = []

    @property
    def n_cells(self) -> int:
        return sum(len(r) for r in self._row_nnz)

    def add(self, x: Any, i: Any, p: Any) -> None:
        """The next block of cells (columns of the R matrix, in order)."""
        data = np.asarray(x, dtype=np.float32).reshape(-1)
        indices = np.asarray(i, dtype=np.int32).reshape(-1)
        indptr = np.asarray(p, dtype=np.int64).reshape(-1)
        if (indptr.shape[0] < 1 or indptr[0] != 0 or indptr[-1] != data.shape[0]
                or indices.shape[0] != data.shape[0]):
            raise ValueError(
                f"inconsistent block of a sparse matrix: column pointers end at "
                f"{indptr[-1] if indptr.shape[0] else None}, {indices.shape[0]} row indices, "
                f"{data.shape[0]} values")
        if indices.shape[0] and (indices.min() < 0 or indices.max() >= self.n_genes):
            raise ValueError(f"a block has row indices outside 0..{self.n_genes - 1}")
        self._data.append(data)
        self._indices.append(indices)
        self._row_nnz.append(np.diff(indptr))

    def anndata(self, gene_names: Any, cell_names: Any, obs: pd.DataFrame | None = None):
        """AnnData of all blocks added (as :func:`anndata_from_csc_parts` makes it from one
        dgCMatrix: the same CSR float32 ``X``); the assembler is empty afterwards."""
        n_cells = self.n_cells
        indptr = np.zeros(n_cells + 1, dtype=np.int64)
        if n_cells:
            np.cumsum(np.concatenate(self._row_nnz), out=indptr[1:])
        self._row_nnz = []
        nnz = int(indptr[-1])
        data = np.empty(nnz, dtype=np.float32)
        indices = np.empty(nnz, dtype=np.int32)
        pos = 0
        while self._data:
            block, block_indices = self._data.pop(0), self._indices.pop(0)
            data[pos:pos + block.shape[0]] = block
            indices[pos:pos + block.shape[0]] = block_indices
            pos += block.shape[0]
        X = sp.csr_matrix((data, indices, indptr), shape=(n_cells, self.n_genes))
        release_free_heap()
        return _anndata(X, gene_names, cell_names, obs)


def release_free_heap() -> None:
    """Hand the heap's free pages back to the operating system (glibc's ``malloc_trim``).

    R frees the blocks it read only into the process's heap, which glibc keeps: without this,
    reading 50,000 x 20,000 HDF5-backed counts left ~0.5 GB of freed blocks counted in the
    process's memory all through training. A no-op where the C library is not glibc."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _anndata(X, gene_names: Any, cell_names: Any, obs: pd.DataFrame | None):
    import anndata as ad

    n_cells, n_genes = X.shape
    cells = pd.Index(_names(cell_names, n_cells, "cell"))
    genes = pd.Index(_names(gene_names, n_genes, "gene"))
    if obs is None or len(getattr(obs, "columns", [])) == 0:
        obs = pd.DataFrame(index=cells)
    else:
        obs = pd.DataFrame(obs).copy()
        obs.index = cells
    with warnings.catch_warnings():
        # anndata's advice (.var_names_make_unique) is Python's; ZiPo refuses duplicated genes
        # with R's (zipo.data.genes.check_gene_names).
        warnings.filterwarnings("ignore", message="Variable names are not unique")
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


class ResultReader:
    """One result of :meth:`ZiPo.denoise` in ``adata`` (``what="denoised"`` or ``"zero_prob"``:
    a layer for all genes, an ``obsm`` table for a subset of genes, ``genes=``), read by R a
    block of cells at a time into its one genes x cells double matrix.

    Each block is cast into the same float64 buffer, genes x cells in Fortran order (R's
    column-major layout, so reticulate copies it into R as it is). Python thus never holds a
    float64 copy of the whole float32 result, which converting it whole would make, and no
    block outlives the next one even while R has not yet collected its wrappers."""

    def __init__(self, adata, what: str = "denoised", key_added: str = "zipo",
                 block_values: int = 1 << 20):
        self.values = _result(adata, what, key_added)
        self.n_cells, self.n_genes = (int(v) for v in self.values.shape)
        self.block_cells = max(1, int(block_values) // max(1, self.n_genes))
        self._buffer = np.empty((self.n_genes, min(self.block_cells, self.n_cells)),
                                dtype=np.float64, order="F")

    def block(self, start: int, stop: int) -> dict[str, Any]:
        """Cells ``start:stop`` (at most ``block_cells``) as ``{"block": genes x cells}``; inside
        a dict reticulate 1.28 allocates the R matrix once (a bare array result twice)."""
        start, stop = int(start), int(stop)
        if not 0 <= start < stop <= min(self.n_cells, start + self.block_cells):
            raise ValueError(f"cells {start}:{stop} is not a block of at most "
                             f"{self.block_cells} of {self.n_cells} cells")
        out = self._buffer[:, :stop - start]
        np.copyto(out, self.values[start:stop].T)
        return {"block": out}


def result_cells(adata, key_added: str = "zipo") -> dict[str, Any]:
    """The per-cell results: ``latent`` (cells x latents) and ``library_size``."""
    return {
        "latent": np.asarray(adata.obsm[f"X_{key_added}"], dtype=np.float64),
        "library_size": adata.obs[f"{key_added}_library_size"].to_numpy(dtype=np.float64),
    }


def kept_epoch(model) -> dict[str, Any]:
    """The epoch whose weights ``model`` keeps, for R's ``summary()``: the ``column`` training
    followed (:func:`zipo.train.schedule.monitored_column`), its ``value`` and the ``epoch``."""
    from .train.schedule import kept_row, monitored_column

    history = model.history
    at = kept_row(history)
    column = monitored_column(history)
    return {"column": column, "value": float(history[column].iloc[at]),
            "epoch": int(history["epoch"].iloc[at])}


def drop_results(adata, key_added: str = "zipo") -> None:
    """Remove what :meth:`ZiPo.denoise` wrote into ``adata`` once R has copied it, so the float32
    cells x genes matrices are freed now rather than when R collects the AnnData; close the
    file of the backed AnnData that ``out=`` returns (R reads it with HDF5Array)."""
    for what in ("denoised", "zero_prob"):
        adata.layers.pop(f"{key_added}_{what}", None)
        adata.obsm.pop(f"{key_added}_{what}", None)
    if adata.isbacked:
        adata.file.close()


def output_problem(out: str, overwrite: bool = False) -> str | None:
    """Why :meth:`ZiPo.denoise` could not write ``out`` (None if it can), checked as it checks
    (:class:`zipo.outputs.StreamedOutput`), so that R refuses before training rather than
    after; the fix is named in R's words."""
    from .files import check_target

    if not str(out).endswith(".h5ad"):
        return f"out = {str(out)!r}: the output file name must end in .h5ad"
    try:
        check_target(out, bool(overwrite))
    except ValueError as e:
        return str(e)
    return None


def result_file(adata, what: str = "denoised", key_added: str = "zipo") -> dict[str, Any]:
    """Where a result of ``denoise(out=...)`` is in its ``.h5ad`` (``adata``: the backed AnnData
    it returns): ``path`` and the HDF5 ``dataset`` (cells x genes, C order, which R's HDF5Array
    reads as genes x cells), as :class:`zipo.outputs.StreamedOutput` lays them out."""
    import h5py

    dataset = {"denoised": "X", "zero_prob": f"layers/{key_added}_zero_prob"}[what]
    path = str(adata.filename)
    with h5py.File(path, "r") as f:
        if dataset not in f:
            raise KeyError(f"no {what!r} result in {path!r} (dataset {dataset!r})")
    return {"path": path, "dataset": dataset}


def _result(adata, what: str, key_added: str):
    key = f"{key_added}_{what}"
    if key in adata.layers:
        return adata.layers[key]
    if key in adata.obsm:
        return np.asarray(adata.obsm[key])  # a DataFrame (cells x the genes asked for)
    raise KeyError(f"no {what!r} result in the AnnData (layers or obsm {key!r})")


def _names(names: Any, n: int, what: str) -> list[str]:
    if names is None:
        return [f"{what}{k + 1}" for k in range(n)]
    names = [str(v) for v in np.atleast_1d(np.asarray(names, dtype=object))]
    if len(names) != n:
        raise ValueError(f"{len(names)} {what} names for {n} {what}s")
    return names
