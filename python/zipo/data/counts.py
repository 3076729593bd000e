"""Count matrices from AnnData, checked once and read a batch of cells at a time.

The counts stay in whatever form the user holds them (scipy CSR/CSC, dense, or the ``X`` of a
backed AnnData). Only one batch of cells is ever densified: :meth:`CountMatrix.rows` slices the
cells and converts that slice alone. A model's genes that are a subset of the AnnData's (it was
trained on the detected genes) are read the same way: each batch of cells is sliced, then its
columns (:meth:`CountMatrix.select_genes`), so the matrix itself is never copied or subset.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import anndata
import numpy as np
import scipy.sparse as sp

from ..errors import InputError, language

# Dense chunks read while checking the counts hold about this many values (64 MB of float32).
_CHECK_CHUNK_VALUES = 1 << 24


def examples(names: Sequence[Any], k: int = 5) -> str:
    """The first ``k`` names, for error messages."""
    names = [str(n) for n in names]
    shown = ", ".join(names[:k])
    return shown + (f", ... ({len(names)} in all)" if len(names) > k else "")


class CountMatrix:
    """Cells x genes counts of an AnnData (``X`` or a layer), sliced by cells without copying
    the whole matrix."""

    def __init__(self, adata, layer: str | None = None):
        if layer is None:
            source, what = adata.X, "adata.X"
        else:
            if layer not in adata.layers:
                raise InputError(
                    f"layer {layer!r} is not in adata.layers (it has: "
                    f"{examples(list(adata.layers.keys())) or 'no layers'})",
                    {"python": "pass layer=None to use adata.X, or the name of the layer that "
                               "holds raw counts",
                     "r": "name the assay that holds raw counts with assay.type = ..."})
            source, what = adata.layers[layer], f"adata.layers[{layer!r}]"
        if source is None:
            raise InputError(f"{what} is empty (None)",
                             {"python": "put the raw counts there or name a layer",
                              "r": "name the assay that holds raw counts with assay.type = ..."})
        # In R the AnnData is the package's copy of an assay, which the user never sees.
        self.what = "the counts" if language() == "r" else what
        self._adata, self._layer = adata, layer  # for the fix of a non-integer error
        self.columns: np.ndarray | None = None  # the genes read (select_genes); None: all
        if sp.issparse(source) and source.format == "csc":
            # Row slicing of CSC scans the whole matrix per batch; CSR costs one copy of the
            # non-zeros (never a dense matrix). R's dgCMatrix arrives as genes x cells CSC, whose
            # transpose is CSR for free, so the bridge never pays this.
            source = source.tocsr()
        elif sp.issparse(source) and source.format != "csr":
            source = source.tocsr()
        self.source = source
        self.n_obs, self.n_vars = adata.n_obs, adata.n_vars
        dtype = getattr(source, "dtype", None)
        if dtype is None or not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
            raise ValueError(
                f"{self.what} has dtype {dtype}, not numbers; ZiPo needs a numeric matrix of raw "
                "counts"
            )

    def select_genes(self, columns: np.ndarray | None) -> "CountMatrix":
        """The same counts read at the gene ``columns`` only (in that order; None: all genes):
        every batch of cells is sliced first and then subset by column, so the matrix is never
        copied, whatever its form (CSR, dense, backed)."""
        if columns is None:
            return self
        selected = copy.copy(self)
        selected.columns = np.asarray(columns, dtype=np.int64)
        selected.n_vars = len(selected.columns)
        return selected

    def _genes(self, block):
        return block if self.columns is None else block[:, self.columns]

    @property
    def stored_sparse(self) -> bool:
        """True when batches are read as sparse blocks with no dense step: a scipy matrix in
        memory, or anndata's backed CSR dataset."""
        return sp.issparse(self.source) or isinstance(self.source, anndata.abc.CSRDataset)

    @property
    def on_disk(self) -> bool:
        """True for a backed (on-disk) matrix, read in slices."""
        return not (sp.issparse(self.source) or isinstance(self.source, np.ndarray))

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Dense float32 counts of the cells ``idx`` (only this batch is densified)."""
        src = self.source
        if isinstance(src, np.ndarray):
            return np.asarray(self._genes(src[idx]), dtype=np.float32)
        block = self.rows_csr(idx) if sp.issparse(src) else self._genes(self._read_backed(idx))
        return block.toarray().astype(np.float32, copy=False) if sp.issparse(block) else block

    def rows_csr(self, idx: np.ndarray) -> sp.csr_matrix:
        """float32 CSR counts of the cells ``idx``, never dense (for the sparse first layer)."""
        src = self.source
        if sp.issparse(src):
            block = self._genes(src[idx])
        elif isinstance(src, np.ndarray):
            block = sp.csr_matrix(np.asarray(self._genes(src[idx])))
        else:
            block = self._genes(self._read_backed(idx))
            block = block if sp.issparse(block) else sp.csr_matrix(block)
        block = block.tocsr().astype(np.float32, copy=False)
        block.sort_indices()
        return block

    def _read_backed(self, idx: np.ndarray):
        """Rows ``idx`` of an on-disk matrix, put back in ``idx`` order. A CSR dataset
        (anndata's backed ``.h5ad`` or ``.zarr`` one, or a collection) is read once for the
        sorted rows: anndata gathers their ranges itself, 3x faster than a read per run of
        consecutive cells (each read costs a fixed 2-5 ms in anndata 0.12). Other on-disk
        arrays are read a run of consecutive cells at a time, which is what makes shuffled
        chunks fast on HDF5."""
        idx = np.asarray(idx)
        if idx.size == 0:  # e.g. a process's empty share of a small last batch
            block = self.source[0:0]
            return block.tocsr() if sp.issparse(block) else np.asarray(block, dtype=np.float32)
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        if isinstance(self.source, anndata.abc.CSRDataset):
            block = self.source[sorted_idx].tocsr()
        else:
            runs = np.split(sorted_idx, np.flatnonzero(np.diff(sorted_idx) != 1) + 1)
            blocks = [self.source[int(r[0]):int(r[-1]) + 1] for r in runs]
            block = (sp.vstack(blocks, format="csr") if sp.issparse(blocks[0]) else
                     np.concatenate([np.asarray(b) for b in blocks]).astype(np.float32,
                                                                             copy=False))
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return block[inverse]

    def chunks(self) -> Iterator[tuple[slice, Any]]:
        """Consecutive blocks of cells as stored (sparse stays sparse) for one-pass checks."""
        step = max(1, _CHECK_CHUNK_VALUES // max(self.source.shape[1], 1))  # values read
        for start in range(0, self.n_obs, step):
            sl = slice(start, min(start + step, self.n_obs))
            block = self._genes(self.source[sl])
            yield sl, block if sp.issparse(block) else np.asarray(block)


class RowsReplaced:
    """The counts of ``base`` with the rows of the cells ``cells`` (sorted) read from
    ``replacement`` instead (CSR, those cells x ``base``'s genes as it reads them), e.g. the
    validation cells' kept molecules; everything else is ``base``'s."""

    def __init__(self, base: CountMatrix, cells: np.ndarray, replacement: sp.csr_matrix):
        self.base, self.replacement = base, replacement
        self.position = np.full(base.n_obs, -1, dtype=np.int64)
        self.position[cells] = np.arange(len(cells))

    def __getattr__(self, name: str):
        if name == "base":  # not set yet (e.g. while copying): no recursion
            raise AttributeError(name)
        return getattr(self.base, name)

    def _replaced(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(which of ``idx`` are replaced, their rows of ``replacement``)."""
        pos = self.position[np.asarray(idx, dtype=np.int64)]
        mine = np.flatnonzero(pos >= 0)
        return mine, pos[mine]

    def rows(self, idx: np.ndarray) -> np.ndarray:
        block = self.base.rows(idx)
        mine, pos = self._replaced(idx)
        if len(mine):
            block[mine] = self.replacement[pos].toarray()
        return block

    def rows_csr(self, idx: np.ndarray) -> sp.csr_matrix:
        idx = np.asarray(idx)
        mine, pos = self._replaced(idx)
        if not len(mine):
            return self.base.rows_csr(idx)
        # The other cells' rows, then the replaced ones, put back in the order of idx (a
        # third of the time of masking and adding whole blocks: 1.1 against 3.0 ms a batch).
        others = np.setdiff1d(np.arange(len(idx)), mine, assume_unique=True)
        parts = sp.vstack([self.base.rows_csr(idx[others]),
                           self.replacement[pos].astype(np.float32, copy=False)], format="csr")
        order = np.empty(len(idx), dtype=np.int64)
        order[np.concatenate([others, mine])] = np.arange(len(idx))
        return parts[order]


@dataclass
class CountSummary:
    library_size: np.ndarray  # total counts per cell, float64
    gene_total: np.ndarray  # total counts per gene, float64
    nnz: int = 0  # non-zero entries

    @property
    def density(self) -> float:
        return self.nnz / max(len(self.library_size) * len(self.gene_total), 1)

    def select_genes(self, columns: np.ndarray | None) -> "CountSummary":
        """The summary of the genes ``columns`` (None: all) when the others have no counts:
        the cells, their library sizes and the non-zeros are the same."""
        if columns is None:
            return self
        return CountSummary(self.library_size, self.gene_total[columns], self.nnz)


def check_counts(
    counts: CountMatrix,
    cell_names: Sequence[Any],
    allow_non_integer: bool = False,
) -> CountSummary:
    """One streaming pass that refuses anything that is not a usable raw count matrix.

    Genes without counts are no error: the summary's ``gene_total`` shows them (0), and the
    model leaves them out of training (:meth:`zipo.ZiPo.__init__`)."""
    if counts.n_obs == 0 or counts.n_vars == 0:
        raise ValueError(
            f"{counts.what} is empty ({counts.n_obs} cells x {counts.n_vars} genes); "
            "ZiPo needs at least one cell and one gene"
        )
    lib = np.zeros(counts.n_obs, dtype=np.float64)
    genes = np.zeros(counts.n_vars, dtype=np.float64)
    nnz = 0
    for sl, block in counts.chunks():
        values = block.data if sp.issparse(block) else block
        if values.dtype == np.bool_:
            values = values.astype(np.float32)
        if not np.all(np.isfinite(values)):
            raise ValueError(
                f"{counts.what} contains NaN or infinite values; ZiPo needs raw counts, "
                "so replace or remove them (e.g. the cells they come from)"
            )
        if np.any(values < 0):
            raise InputError(
                f"{counts.what} contains negative values; ZiPo needs raw counts (non-negative "
                "integers), not centred or scaled data",
                {"python": "pass the raw count layer via layer=...",
                 "r": "name the raw counts assay with assay.type = ..."}, sep=": ")
        if not allow_non_integer and np.issubdtype(values.dtype, np.floating):
            if np.any(values != np.round(values)):
                raise InputError(
                    f"{counts.what} contains non-integer values, which usually means normalised "
                    "or log-transformed data",
                    {"python": f"pass raw UMI counts ({_count_places(counts)}), or set "
                               "allow_non_integer=True if the values are counts on purpose (e.g. "
                               "ambient-corrected)",
                     "r": "use the raw counts assay (assay.type = \"counts\"), or set "
                          "allow_non_integer = TRUE if the values are counts on purpose (e.g. "
                          "ambient-corrected)"})
        nnz += int(np.count_nonzero(values))
        lib[sl] = np.asarray(block.sum(axis=1), dtype=np.float64).ravel()
        genes += np.asarray(block.sum(axis=0), dtype=np.float64).ravel()
    empty = np.flatnonzero(lib == 0)
    if empty.size:
        raise InputError(
            f"{empty.size} cells have zero counts in {counts.what} ("
            f"{examples(np.asarray(cell_names)[empty])})",
            {"python": "remove them first, e.g. scanpy.pp.filter_cells(adata, min_counts=1)",
             "r": "remove them first, e.g. sce <- scuttle::addPerCellQC(sce); "
                  "sce[, sce$sum > 0]"})
    return CountSummary(library_size=lib, gene_total=genes, nnz=nnz)


def _count_places(counts: CountMatrix) -> str:
    """Where else the AnnData holds what looks like raw counts (its first values non-negative
    integers), as the fix of a non-integer error names it: ``here: layer='counts'``, ``layer=None``
    for ``X``, ``adata.raw.to_adata()``; else ``layer=...``."""
    adata, layer = counts._adata, counts._layer
    places = [f"layer={name!r}" for name in adata.layers.keys()
              if name != layer and _looks_like_counts(adata.layers[name])]
    if layer is not None and _looks_like_counts(adata.X):
        places.append("layer=None, adata.X")
    if adata.raw is not None and adata.raw.n_vars == adata.n_vars \
            and _looks_like_counts(adata.raw.X):
        places.append("adata.raw.to_adata()")
    return f"here: {' or '.join(places)}" if places else "layer=..."


def _looks_like_counts(matrix, values: int = 10_000) -> bool:
    try:
        head = matrix.data[:values] if sp.issparse(matrix) else np.asarray(matrix[:100]).ravel()
        head = np.asarray(head, dtype=np.float64)
    except Exception:  # a backed or unusual matrix: no suggestion rather than a second error
        return False
    return head.size > 0 and bool(np.all(head >= 0) and np.all(head == np.round(head)))


def gene_totals(counts: CountMatrix, idx: np.ndarray) -> np.ndarray:
    """Total counts per gene over the cells ``idx`` (float64), a batch at a time."""
    total = np.zeros(counts.n_vars, dtype=np.float64)
    step = max(1, _CHECK_CHUNK_VALUES // max(counts.n_vars, 1))
    for start in range(0, len(idx), step):
        total += counts.rows(idx[start:start + step]).sum(axis=0, dtype=np.float64)
    return total
