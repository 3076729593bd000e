"""Count matrices and covariates from AnnData, checked once and served in mini-batches of cells.

The counts stay in whatever form the user holds them (scipy CSR/CSC, dense, or the ``X`` of a
backed AnnData). Only one batch of cells is ever densified: :meth:`CountMatrix.rows` slices the
cells and converts that slice alone.
"""

from __future__ import annotations

import queue
import re
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

# Dense chunks read while checking the counts hold about this many values (64 MB of float32).
_CHECK_CHUNK_VALUES = 1 << 24


_BARCODE = re.compile(r"[ACGT]{12,}")  # 10x-style cell barcodes, with or without prefixes


def _share_barcodes(names: Sequence[Any], limit: int = 2000) -> float:
    names = [str(n) for n in list(names)[:limit]]
    return sum(bool(_BARCODE.search(n)) for n in names) / max(len(names), 1)


TRANSPOSED_HINT = (
    "AnnData holds cells x genes, while R/Bioconductor and MatrixMarket files hold genes x "
    "cells: pass adata.T (or build the AnnData from the transposed matrix)"
)


def check_orientation(obs_names: Sequence[Any], var_names: Sequence[Any]) -> None:
    """Refuse an AnnData whose genes look like cell barcodes and whose cells do not."""
    if _share_barcodes(var_names) > 0.9 and _share_barcodes(obs_names) < 0.1:
        raise ValueError(
            f"adata looks transposed: its genes (var_names, e.g. {_examples(list(var_names)[:3])}) "
            f"look like cell barcodes. {TRANSPOSED_HINT}"
        )


def _examples(names: Sequence[Any], k: int = 5) -> str:
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
                    f"{_examples(list(adata.layers.keys())) or 'no layers'}); pass layer=None "
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
            f"{_examples(np.asarray(cell_names)[empty])}); remove them first, e.g. "
            "scanpy.pp.filter_cells(adata, min_counts=1)"
        )
    if require_expressed_genes:
        unexpressed = np.flatnonzero(genes == 0)
        if unexpressed.size:
            raise ValueError(
                f"{unexpressed.size} genes have zero counts in every cell ("
                f"{_examples(np.asarray(gene_names)[unexpressed])}); nothing can be learnt "
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


#: An integer covariate with at most this many distinct values draws a warning: it is
#: probably a label (batch 1, 2, 3) that should be one-hot encoded, not a number.
FEW_INTEGER_VALUES = 20


class CovariateEncoder:
    """Encodes ``adata.obs`` columns: categories one-hot, numbers standardised.

    The categories and the mean/sd are fixed when training, so inference encodes new cells
    exactly as the training cells were encoded.
    """

    def __init__(self, specs: list[dict[str, Any]] | None = None):
        self.specs = specs or []

    @property
    def names(self) -> list[str]:
        return [s["name"] for s in self.specs]

    @property
    def width(self) -> int:
        return sum(len(s["categories"]) if s["kind"] == "categorical" else 1 for s in self.specs)

    @classmethod
    def fit(cls, obs: pd.DataFrame, columns: Sequence[str]) -> "CovariateEncoder":
        specs = []
        for name in columns:
            col = _column(obs, name)
            if _is_numeric(col):
                n_values = col.nunique()
                if pd.api.types.is_integer_dtype(col) and n_values <= FEW_INTEGER_VALUES:
                    warnings.warn(
                        f"covariate {name!r} holds integers with only {n_values} distinct "
                        "values, so it is standardised as one number, not one-hot encoded as "
                        "categories; if these are labels (batch, donor...), cast the column to "
                        f"str or category first: adata.obs[{name!r}] = "
                        f"adata.obs[{name!r}].astype(str)",
                        UserWarning, stacklevel=3,
                    )
                values = col.to_numpy(dtype=np.float64)
                sd = float(values.std())
                specs.append(
                    {"name": name, "kind": "continuous", "mean": float(values.mean()),
                     "sd": sd if sd > 0 else 1.0}
                )
            else:
                cats = col.cat.categories if isinstance(col.dtype, pd.CategoricalDtype) else None
                observed = set(col.astype(str))
                ordered = [str(c) for c in cats if str(c) in observed] if cats is not None else []
                specs.append(
                    {"name": name, "kind": "categorical",
                     "categories": ordered or sorted(observed)}
                )
        return cls(specs)

    def transform(self, obs: pd.DataFrame) -> np.ndarray:
        parts = [np.zeros((len(obs), 0), dtype=np.float32)]
        for s in self.specs:
            col = _column(obs, s["name"])
            if s["kind"] == "continuous":
                if not _is_numeric(col):
                    raise ValueError(
                        f"covariate {s['name']!r} was numeric when the model was trained but is "
                        f"{col.dtype} now; pass the same kind of values"
                    )
                v = (col.to_numpy(dtype=np.float64) - s["mean"]) / s["sd"]
                parts.append(v.astype(np.float32)[:, None])
            else:
                values = col.astype(str).to_numpy()
                index = {c: i for i, c in enumerate(s["categories"])}
                unseen = sorted(set(values) - set(index))
                if unseen:
                    raise ValueError(
                        f"covariate {s['name']!r} has categories the model never saw in "
                        f"training: {_examples(unseen)}; the model knows "
                        f"{_examples(s['categories'])}. Map these cells to a known category or "
                        "retrain with them included"
                    )
                onehot = np.zeros((len(values), len(index)), dtype=np.float32)
                onehot[np.arange(len(values)), [index[v] for v in values]] = 1.0
                parts.append(onehot)
        return np.concatenate(parts, axis=1)


def _column(obs: pd.DataFrame, name: str) -> pd.Series:
    if name not in obs.columns:
        raise ValueError(
            f"covariate {name!r} is not a column of adata.obs (columns: "
            f"{_examples(list(obs.columns)) or 'none'}); add it or fix the name"
        )
    col = obs[name]
    if col.isna().any():
        raise ValueError(
            f"covariate {name!r} has {int(col.isna().sum())} missing values (NaN); fill them "
            "(e.g. with an 'unknown' category) or drop those cells"
        )
    return col


def _is_numeric(col: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)


def split_cells(n_obs: int, validation_fraction: float, rng: np.random.Generator):
    """Random train/validation split of cell indices (both sorted)."""
    perm = rng.permutation(n_obs)
    n_val = int(round(n_obs * validation_fraction))
    if validation_fraction > 0 and n_obs - n_val < 2:
        raise ValueError(f"{n_obs} cells are too few to hold out a validation split")
    if validation_fraction > 0:
        n_val = max(n_val, 2)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def csr_to_torch(block: sp.csr_matrix) -> torch.Tensor:
    """A scipy CSR batch as a torch sparse CSR tensor (shares the arrays, no dense copy)."""
    return torch.sparse_csr_tensor(
        torch.from_numpy(block.indptr.astype(np.int64, copy=False)),
        torch.from_numpy(block.indices.astype(np.int64, copy=False)),
        torch.from_numpy(block.data),
        size=block.shape,
    )


class CellBatches:
    """Mini-batches of cells as (counts, covariates, indices); counts are a dense tensor, or a
    torch sparse CSR tensor with ``sparse=True`` (for the sparse first layer).

    Shuffling permutes *chunks* of ``chunk_size`` consecutive cells (of ``indices``) and fills
    each batch with several chunks: with ``chunk_size=1`` it is a plain permutation; larger
    chunks turn the reads of an on-disk (backed) matrix into a few contiguous slices.
    With ``prefetch > 0`` a background thread prepares the next batches while the model trains
    on the current one; ``wait_seconds`` accumulates the time the consumer waited for data.
    """

    def __init__(
        self,
        counts: CountMatrix,
        covariates: np.ndarray,
        indices: np.ndarray,
        batch_size: int,
        shuffle: bool = False,
        rng: np.random.Generator | None = None,
        device: torch.device | str = "cpu",
        sparse: bool = False,
        chunk_size: int = 1,
        prefetch: int = 0,
        shard: tuple[int, int] = (0, 1),
    ):
        self.counts, self.covariates = counts, covariates
        self.indices, self.batch_size = np.asarray(indices), batch_size
        self.shuffle, self.rng, self.device = shuffle, rng, torch.device(device)
        self.sparse, self.chunk_size, self.prefetch = sparse, max(1, int(chunk_size)), prefetch
        # (rank, world size): each process takes its own contiguous share of every global
        # batch, so N processes see exactly the cells one process would see per step.
        self.shard = shard
        self.wait_seconds = 0.0

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def order(self) -> np.ndarray:
        """The cells of one pass, in batch order (draws from ``rng`` when shuffling)."""
        if not self.shuffle:
            return self.indices
        if self.chunk_size == 1:
            return self.rng.permutation(self.indices)
        n_chunks = -(-len(self.indices) // self.chunk_size)
        chunks = self.rng.permutation(n_chunks)
        starts = chunks * self.chunk_size
        return np.concatenate([self.indices[a:a + self.chunk_size] for a in starts])

    def _global_batches(self) -> Iterator[np.ndarray]:
        order = self.order()
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            if self.shuffle and len(idx) < 2 * self.shard[1]:
                continue  # batch norm cannot train on one cell; it comes back next epoch
            yield idx

    def local(self, idx: np.ndarray) -> np.ndarray:
        """This process's share of the global batch ``idx``."""
        rank, world = self.shard
        if world == 1:
            return idx
        bounds = np.linspace(0, len(idx), world + 1).round().astype(int)
        return idx[bounds[rank]:bounds[rank + 1]]

    def _load(self, idx: np.ndarray):
        local = self.local(idx)
        if self.sparse:
            x = csr_to_torch(self.counts.rows_csr(local))
        else:
            x = torch.from_numpy(self.counts.rows(local))
        c = torch.from_numpy(np.ascontiguousarray(self.covariates[local]))
        return x, c, local, len(idx)

    def _to_device(self, x: torch.Tensor, c: torch.Tensor):
        if self.device.type != "cuda":
            return x, c
        # Pinned host memory lets the copy run asynchronously beside the GPU's work.
        if x.layout == torch.strided:
            x = x.pin_memory()
        c = c.pin_memory()
        return x.to(self.device, non_blocking=True), c.to(self.device, non_blocking=True)

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, np.ndarray, int]]:
        """(counts, covariates, this process's cell indices, global batch size) per step."""
        loaded = map(self._load, self._global_batches())
        if self.prefetch > 0:
            loaded = _prefetched(loaded, self.prefetch, self)
        else:
            loaded = _timed(loaded, self)
        for x, c, local, n_global in loaded:
            x, c = self._to_device(x, c)
            yield x, c, local, n_global

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, np.ndarray]]:
        for x, c, idx, _ in self.batches():
            yield x, c, idx


def _timed(items: Iterator, owner: CellBatches) -> Iterator:
    while True:
        started = time.perf_counter()
        try:
            item = next(items)
        except StopIteration:
            return
        owner.wait_seconds += time.perf_counter() - started
        yield item


def _prefetched(items: Iterator, depth: int, owner: CellBatches) -> Iterator:
    """Run ``items`` in a background thread, ``depth`` batches ahead. Reading and slicing
    release the GIL for most of their time, so this overlaps I/O with the training step."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        """Queue ``item`` unless the consumer has gone; never blocks for good."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(done)
        except BaseException as e:  # surfaced in the consumer, with its traceback
            put(e)

    worker = threading.Thread(target=produce, name="zipo-batch-loader", daemon=True)
    worker.start()
    try:
        while True:
            started = time.perf_counter()
            item = q.get()
            owner.wait_seconds += time.perf_counter() - started
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()
