"""Count matrices from AnnData, checked once and read a batch of cells at a time.

The counts stay in whatever form the user holds them (scipy CSR/CSC, dense, or the ``X`` of a
backed AnnData). Only one batch of cells is ever densified: :meth:`CountMatrix.rows` slices the
cells and converts that slice alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

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
                raise ValueError(
                    f"layer {layer!r} is not in adata.layers (it has: "
                    f"{examples(list(adata.layers.keys())) or 'no layers'}); pass layer=None "
                    "to use adata.X, or the name of the layer that holds raw counts"
                )
            source, what = adata.layers[layer], f"adata.layers[{layer!r}]"
        if source is None:
            raise ValueError(f"{what} is empty (None); put the raw counts there or name a layer")
        self.what = what
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
                f"{what} has dtype {dtype}, not numbers; ZiPo needs a numeric matrix of raw counts"
            )

    @property
    def on_disk(self) -> bool:
        """True for a backed (on-disk) matrix, read in slices."""
        return not (sp.issparse(self.source) or isinstance(self.source, np.ndarray))

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Dense float32 counts of the cells ``idx`` (only this batch is densified)."""
        src = self.source
        if isinstance(src, np.ndarray):
            return np.asarray(src[idx], dtype=np.float32)
        block = self.rows_csr(idx) if sp.issparse(src) else self._read_backed(idx)
        return block.toarray().astype(np.float32, copy=False) if sp.issparse(block) else block

    def rows_csr(self, idx: np.ndarray) -> sp.csr_matrix:
        """float32 CSR counts of the cells ``idx``, never dense (for the sparse first layer)."""
        src = self.source
        if sp.issparse(src):
            block = src[idx]
        elif isinstance(src, np.ndarray):
            block = sp.csr_matrix(np.asarray(src[idx]))
        else:
            block = self._read_backed(idx)
            block = block if sp.issparse(block) else sp.csr_matrix(block)
        block = block.tocsr().astype(np.float32, copy=False)
        block.sort_indices()
        return block

    def _read_backed(self, idx: np.ndarray):
        """Rows ``idx`` of an on-disk matrix, read as runs of consecutive cells (one read per
        run, which is what makes shuffled chunks fast on HDF5) and put back in ``idx`` order."""
        idx = np.asarray(idx)
        if idx.size == 0:  # e.g. a process's empty share of a small last batch
            block = self.source[0:0]
            return block.tocsr() if sp.issparse(block) else np.asarray(block, dtype=np.float32)
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        breaks = np.flatnonzero(np.diff(sorted_idx) != 1) + 1
        runs = np.split(sorted_idx, breaks)
        blocks = [self.source[int(r[0]):int(r[-1]) + 1] for r in runs]
        if sp.issparse(blocks[0]):
            block = sp.vstack(blocks, format="csr") if len(blocks) > 1 else blocks[0].tocsr()
            inverse = np.empty_like(order)
            inverse[order] = np.arange(len(order))
            return block[inverse]
        block = np.concatenate([np.asarray(b) for b in blocks]).astype(np.float32, copy=False)
        out = np.empty_like(block)
        out[order] = block
        return out

    def chunks(self) -> Iterator[tuple[slice, Any]]:
        """Consecutive blocks of cells as stored (sparse stays sparse) for one-pass checks."""
        step = max(1, _CHECK_CHUNK_VALUES // max(self.n_vars, 1))
        for start in range(0, self.n_obs, step):
            sl = slice(start, min(start + step, self.n_obs))
            block = self.source[sl]
            yield sl, block if sp.issparse(block) else np.asarray(block)


@dataclass
class CountSummary:
    library_size: np.ndarray  # total counts per cell, float64
    gene_total: np.ndarray  # total counts per gene, float64
    nnz: int = 0  # non-zero entries

    @property
    def density(self) -> float:
        return self.nnz / max(len(self.library_size) * len(self.gene_total), 1)


def check_counts(
    counts: CountMatrix,
    cell_names: Sequence[Any],
    gene_names: Sequence[Any],
    allow_non_integer: bool = False,
    require_expressed_genes: bool = False,
) -> CountSummary:
    """One streaming pass that refuses anything that is not a usable raw count matrix."""
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
            raise ValueError(
                f"{counts.what} contains negative values; ZiPo needs raw counts (non-negative "
                "integers), not centred or scaled data: pass the raw count layer via layer=..."
            )
        if not allow_non_integer and np.issubdtype(values.dtype, np.floating):
            if np.any(values != np.round(values)):
                raise ValueError(
                    f"{counts.what} contains non-integer values, which usually means normalised "
                    "or log-transformed data; pass raw UMI counts (layer=...), or set "
                    "allow_non_integer=True if the values are counts on purpose (e.g. ambient-"
                    "corrected)"
                )
        nnz += int(np.count_nonzero(values))
        lib[sl] = np.asarray(block.sum(axis=1), dtype=np.float64).ravel()
        genes += np.asarray(block.sum(axis=0), dtype=np.float64).ravel()
    empty = np.flatnonzero(lib == 0)
    if empty.size:
        raise ValueError(
            f"{empty.size} cells have zero counts in {counts.what} ("
            f"{examples(np.asarray(cell_names)[empty])}); remove them first, e.g. "
            "scanpy.pp.filter_cells(adata, min_counts=1)"
        )
    if require_expressed_genes:
        unexpressed = np.flatnonzero(genes == 0)
        if unexpressed.size:
            raise ValueError(
                f"{unexpressed.size} genes have zero counts in every cell ("
                f"{examples(np.asarray(gene_names)[unexpressed])}); nothing can be learnt "
                "about them: remove them before training, e.g. "
                "scanpy.pp.filter_genes(adata, min_cells=1)"
            )
    return CountSummary(library_size=lib, gene_total=genes, nnz=nnz)


def gene_totals(counts: CountMatrix, idx: np.ndarray) -> np.ndarray:
    """Total counts per gene over the cells ``idx`` (float64), a batch at a time."""
    total = np.zeros(counts.n_vars, dtype=np.float64)
    step = max(1, _CHECK_CHUNK_VALUES // max(counts.n_vars, 1))
    for start in range(0, len(idx), step):
        total += counts.rows(idx[start:start + step]).sum(axis=0, dtype=np.float64)
    return total
