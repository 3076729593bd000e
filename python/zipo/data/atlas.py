"""Atlases as they come: ``.h5ad`` files opened backed, ``.zarr`` stores opened with their count
matrices on disk, Cell Ranger's matrix folders and ``.h5`` files (:mod:`zipo.data.tenx`), and
several files with the same genes read as one dataset.

Everything goes through anndata's own readers (``read_h5ad(backed="r")``, ``read_dispatched``
with ``sparse_dataset``). A collection is an ordinary AnnData whose ``X`` (and common layers)
is :class:`ConcatenatedRows`, an index map over its members' own readers: reading a range of
cells reads that range from the file (or files) holding it, and nothing else. obs, var and
obsm are held in memory, as a backed ``.h5ad`` holds them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import anndata as ad
import anndata.abc
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .counts import examples
from .tenx import is_10x, read_10x

# anndata encodings whose elements stay on disk when a .zarr store is opened backed
_SPARSE_ENCODINGS = ("csr_matrix", "csc_matrix")


def read_cells(data: Any, backed: bool = True, label: str | None = None) -> Any:
    """One AnnData of the cells that ``data`` names: the path of an ``.h5ad`` file or a
    ``.zarr`` store, or a list of paths and AnnData objects with the same genes (their cells
    one after another, see :func:`concatenate`). Anything else (an AnnData) is returned as it is.

    With ``backed=True`` the counts stay on disk and are read a batch of cells at a time; with
    ``backed=False`` every file is read into memory. ``label`` names an ``obs`` column that
    records which member each cell came from (file names, or positions for AnnData objects)."""
    if isinstance(data, (str, os.PathLike)):
        if label is None:
            return _read_file(Path(data), backed)
        data = [data]
    if not isinstance(data, (list, tuple)):
        return data
    if not data:
        raise ValueError("no data given: pass an AnnData, a path, or a list of them")
    members = [d if isinstance(d, ad.AnnData) else _read_file(Path(d), backed) for d in data]
    keys = [str(i) if isinstance(d, ad.AnnData) else Path(d).name for i, d in enumerate(data)]
    if len(members) == 1 and label is None:
        return members[0]
    return concatenate(members, label=label, keys=keys)


def _read_file(path: Path, backed: bool):
    if not path.exists():
        raise ValueError(f"input file {str(path)!r} does not exist")
    if is_10x(path):  # into memory: MatrixMarket cannot be read a slice at a time
        return read_10x(path)
    is_zarr = path.is_dir()
    kind = ".zarr store" if is_zarr else ".h5ad file"
    try:
        if is_zarr:
            return open_zarr(path) if backed else ad.read_zarr(path)
        return ad.read_h5ad(path, backed="r" if backed else None)
    except Exception as e:  # h5py, zarr and anndata raise many kinds on other files
        raise ValueError(f"{str(path)!r} could not be read as an {kind} of AnnData: {e}; "
                         "ZiPo reads .h5ad files and .zarr directories written by anndata, and "
                         "Cell Ranger's matrix folders and .h5 files") from None


def open_zarr(path: str | Path) -> ad.AnnData:
    """A ``.zarr`` AnnData whose ``X`` and layers stay on disk (sparse ones as anndata's
    ``sparse_dataset``, dense ones as zarr arrays), read a slice of cells at a time; the rest
    (obs, var, obsm, uns...) is read into memory, as with a backed ``.h5ad``."""
    import zarr
    from anndata.experimental import read_dispatched

    def read(read_elem, key: str, elem, iospec):
        if key == "/X" or key.startswith("/layers/"):
            if iospec.encoding_type in _SPARSE_ENCODINGS:
                return ad.io.sparse_dataset(elem)
            if iospec.encoding_type == "array":
                return elem
        return read_elem(elem)

    return read_dispatched(zarr.open_group(str(path), mode="r"), callback=read)


def concatenate(members: Sequence[ad.AnnData], label: str | None = None,
                keys: Sequence[str] | None = None) -> ad.AnnData:
    """The cells of ``members`` (AnnData objects with the same genes in the same order) one
    after another, as one AnnData: obs concatenated (the columns every member has), var of
    the first. When every member is in memory this is ``anndata.concat``; otherwise ``X`` and
    the layers every member has are :class:`ConcatenatedRows` over the members' own readers."""
    if not members:
        raise ValueError("no AnnData to concatenate")
    keys = list(keys) if keys is not None else [str(i) for i in range(len(members))]
    genes = members[0].var_names
    for key, member in zip(keys[1:], members[1:]):
        if not member.var_names.equals(genes):
            raise ValueError(_gene_mismatch(keys[0], genes, key, member.var_names))
    if not any(_on_disk(m) for m in members):
        return ad.concat(list(members), join="inner", merge="first", label=label,
                         keys=keys if label else None)
    layers = {name: ConcatenatedRows([m.layers[name] for m in members])
              for name in members[0].layers.keys() if all(name in m.layers for m in members)}
    obs = _concat_obs([m.obs for m in members])
    if label is not None:
        obs[label] = pd.Categorical(np.repeat(keys, [m.n_obs for m in members]), categories=keys)
    X = ConcatenatedRows([m.X for m in members]) if all(m.X is not None for m in members) else None
    return ad.AnnData(X=X, obs=obs, var=members[0].var.copy(), layers=layers)


def _on_disk(adata: ad.AnnData) -> bool:
    matrices = [adata.X, *adata.layers.values()]
    return adata.isbacked or not all(m is None or sp.issparse(m) or isinstance(m, np.ndarray)
                                     for m in matrices)


def _gene_mismatch(first: str, genes: pd.Index, key: str, other: pd.Index) -> str:
    if len(genes) == len(other) and set(genes) == set(other):
        what = "the same genes in another order"
    else:
        missing, extra = genes.difference(other, sort=False), other.difference(genes, sort=False)
        parts = [f"{len(missing)} of {first}'s genes are missing ({examples(list(missing))})"
                 if len(missing) else "", f"{len(extra)} genes are not in {first} "
                 f"({examples(list(extra))})" if len(extra) else ""]
        what = "; ".join(p for p in parts if p)
    return (f"{key} does not have the genes of {first}: {what}. A collection needs the same "
            "genes (var_names) in the same order in every file: write each file with "
            "adata[:, genes] for one list of genes, or concatenate in memory with "
            "anndata.concat(..., join='inner')")


def _concat_obs(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The columns every frame has, one frame after another; categorical columns stay
    categorical with the union of their categories (as anndata.concat does)."""
    obs = pd.concat(frames, join="inner")
    for name in obs.columns:
        columns = [f[name] for f in frames]
        if all(isinstance(c.dtype, pd.CategoricalDtype) for c in columns):
            categories = pd.api.types.union_categoricals(
                [pd.Categorical(c) for c in columns], ignore_order=True).categories
            obs[name] = pd.Categorical(obs[name], categories=categories)
    return obs


class ConcatenatedRows(anndata.abc.CSRDataset):
    """The rows (cells) of several matrices with the same columns, one after another, read
    from each member's own reader (a backed sparse dataset, a zarr or HDF5 array, or a matrix
    in memory) only when sliced, and given back as CSR. An :class:`anndata.abc.CSRDataset`, so
    an AnnData takes it as ``X`` or as a layer."""

    def __init__(self, parts: Sequence[Any]):
        self.parts = list(parts)
        widths = {p.shape[1] for p in self.parts}
        if len(widths) != 1:
            raise ValueError(f"matrices with different numbers of genes ({sorted(widths)}) "
                             "cannot be stacked")
        sizes = np.array([p.shape[0] for p in self.parts], dtype=np.int64)
        #: first row of each part; a shuffled chunk of rows should not cross one (loader)
        self.starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self.sizes = sizes  # (a backed dataset reads its shape from the file every time)
        self.shape = (int(sizes.sum()), widths.pop())
        self.dtype = np.result_type(*[p.dtype for p in self.parts])
        self.backend = getattr(self.parts[0], "backend", "hdf5")

    def __repr__(self) -> str:
        return (f"ConcatenatedRows: {len(self.parts)} parts, shape {self.shape}, "
                f"dtype {self.dtype}")

    def __getitem__(self, index) -> sp.csr_matrix:
        rows, cols = index if isinstance(index, tuple) else (index, slice(None))
        if isinstance(rows, slice) and rows.step in (None, 1):
            block = self._range(*rows.indices(self.shape[0])[:2])
        else:
            block = self._take(self._positions(rows))
        return block if isinstance(cols, slice) and cols == slice(None) else block[:, cols]

    def to_memory(self) -> sp.csr_matrix:
        return self._range(0, self.shape[0])

    def _positions(self, rows) -> np.ndarray:
        if isinstance(rows, slice):
            return np.arange(*rows.indices(self.shape[0]))
        rows = np.asarray(rows)
        if rows.dtype == np.bool_:
            return np.flatnonzero(rows)
        return np.where(rows < 0, rows + self.shape[0], rows).reshape(-1)

    def _range(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows start..stop-1: one read in each part they fall in."""
        blocks = []
        for part, first, size in zip(self.parts, self.starts, self.sizes):
            lo, hi = max(start, first), min(stop, first + size)
            if lo < hi:
                blocks.append(self._csr(part[int(lo - first):int(hi - first)]))
        if not blocks:
            return sp.csr_matrix((0, self.shape[1]), dtype=self.dtype)
        return blocks[0] if len(blocks) == 1 else sp.vstack(blocks, format="csr")

    def _take(self, positions: np.ndarray) -> sp.csr_matrix:
        """Rows ``positions`` in their order: one read of the sorted rows in each part they
        fall in (a backed CSR dataset gathers them itself, 3x faster than a read per run of
        consecutive rows)."""
        if positions.size == 0:
            return self._range(0, 0)
        order = np.argsort(positions, kind="stable")
        ordered = positions[order]
        part_of = np.searchsorted(self.starts, ordered, side="right") - 1
        blocks = [self._csr(self.parts[k][ordered[part_of == k] - self.starts[k]])
                  for k in np.unique(part_of)]
        block = blocks[0] if len(blocks) == 1 else sp.vstack(blocks, format="csr")
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return block[inverse]

    def _csr(self, block) -> sp.csr_matrix:
        block = block.tocsr() if sp.issparse(block) else sp.csr_matrix(np.asarray(block))
        return block.astype(self.dtype, copy=False)
