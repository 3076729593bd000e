"""Where ``ZiPo.denoise`` puts its results: arrays in memory, or an ``.h5ad`` file written a
batch at a time, so that a million cells never need their cells x genes matrix in memory."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd


def _var_frame(adata, genes: Sequence[str]) -> pd.DataFrame:
    """``adata.var`` rows of ``genes`` (string index), for the output file."""
    var = adata.var.copy()
    var.index = var.index.astype(str)
    return var.loc[list(genes)]


class MemoryOutput:
    """Results gathered in memory, then stored into an AnnData."""

    def __init__(self, n_cells: int, n_genes: int, n_latent: int, denoised: bool,
                 zero_inflation: bool):
        self.latent = np.empty((n_cells, n_latent), dtype=np.float32)
        self.library = np.empty(n_cells, dtype=np.float32)
        self.mean = np.empty((n_cells, n_genes), dtype=np.float32) if denoised else None
        self.zprob = np.empty((n_cells, n_genes), dtype=np.float32) if zero_inflation else None

    def __enter__(self) -> "MemoryOutput":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def write(self, idx, latent, library, mean, zprob) -> None:
        self.latent[idx], self.library[idx] = latent, library
        if self.mean is not None:
            self.mean[idx] = mean
        if self.zprob is not None:
            self.zprob[idx] = zprob

    def store(self, adata, key: str, genes: Sequence[str], subset: bool) -> None:
        """Into ``layers`` (all genes) or, for a subset of genes, ``obsm`` DataFrames."""
        for name, values in (("denoised", self.mean), ("zero_prob", self.zprob)):
            if values is None:
                continue
            if subset:
                adata.obsm[f"{key}_{name}"] = pd.DataFrame(
                    values, index=adata.obs_names, columns=list(genes))
            else:
                adata.layers[f"{key}_{name}"] = values
        adata.obsm[f"X_{key}"] = self.latent
        adata.obs[f"{key}_library_size"] = self.library


def _write_elem():
    try:
        from anndata.io import write_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import write_elem
    return write_elem


class StreamedOutput:
    """An ``.h5ad`` file filled one batch of cells at a time.

    It is written to a temporary file beside ``path`` and renamed only when complete, so an
    interrupted run leaves no half-written file. The layout is anndata's own: the denoised
    counts are ``X`` (which a backed AnnData leaves on disk), zero probabilities a layer,
    latents ``obsm``, library sizes a column of ``obs``.
    """

    # Rows per HDF5 chunk are chosen to keep chunks near this many bytes.
    CHUNK_BYTES = 4 << 20

    def __init__(self, path, obs: pd.DataFrame, genes: Sequence[str], n_latent: int, key: str,
                 denoised: bool, zero_inflation: bool, var: pd.DataFrame,
                 overwrite: bool = False):
        self.path = Path(path)
        if self.path.suffix != ".h5ad":
            raise ValueError(f"out={str(path)!r}: the output file name must end in .h5ad")
        if self.path.exists() and not overwrite:
            raise ValueError(f"{str(path)!r} already exists; choose another out= or pass "
                             "overwrite=True")
        if not self.path.parent.is_dir():
            raise ValueError(f"cannot write {str(path)!r}: the folder "
                             f"{str(self.path.parent)!r} does not exist")
        self.obs, self.var, self.genes, self.key = obs, var, list(genes), key
        self.n_cells, self.n_latent = len(obs), n_latent
        self.want = {"denoised": denoised, "zero_prob": zero_inflation}
        self.library = np.empty(self.n_cells, dtype=np.float32)
        self.file = None
        self.tmp: str | None = None

    def _dataset(self, group, name: str, width: int):
        rows = max(1, min(self.n_cells, self.CHUNK_BYTES // (4 * max(width, 1))))
        ds = group.create_dataset(name, shape=(self.n_cells, width), dtype="float32",
                                  chunks=(rows, width))
        ds.attrs["encoding-type"], ds.attrs["encoding-version"] = "array", "0.2.0"
        return ds

    def __enter__(self) -> "StreamedOutput":
        import h5py

        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.tmp-", suffix=".h5ad",
                                        dir=self.path.parent)
        os.close(fd)
        self.file = h5py.File(self.tmp, "w")
        self.file.attrs["encoding-type"], self.file.attrs["encoding-version"] = "anndata", "0.1.0"
        write_elem = _write_elem()
        for group in ("layers", "obsm", "varm", "obsp", "varp", "uns"):
            write_elem(self.file, group, {})
        self.layers = {}
        if self.want["denoised"]:
            self.layers["denoised"] = self._dataset(self.file, "X", len(self.genes))
        if self.want["zero_prob"]:
            self.layers["zero_prob"] = self._dataset(self.file["layers"], f"{self.key}_zero_prob",
                                                     len(self.genes))
        self.latent = self._dataset(self.file["obsm"], f"X_{self.key}", self.n_latent)
        return self

    def write(self, idx, latent, library, mean, zprob) -> None:
        # Inference batches are consecutive runs of cells, so each is one slice on disk.
        rows = slice(int(idx[0]), int(idx[-1]) + 1)
        if rows.stop - rows.start != len(idx):
            raise AssertionError("streamed output expects consecutive cells per batch")
        self.latent[rows] = latent
        self.library[rows] = library
        for name, values in (("denoised", mean), ("zero_prob", zprob)):
            if name in self.layers:
                self.layers[name][rows] = values

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                obs = self.obs.copy()
                obs.index = obs.index.astype(str)
                obs[f"{self.key}_library_size"] = self.library
                write_elem = _write_elem()
                write_elem(self.file, "obs", obs)
                write_elem(self.file, "var", self.var)
            self.file.close()
            if exc_type is None:
                os.replace(self.tmp, self.path)
        finally:
            if self.tmp and os.path.exists(self.tmp):
                os.unlink(self.tmp)

    def result(self):
        """The written file, opened backed (read-only): nothing large is loaded."""
        import anndata as ad

        return ad.read_h5ad(self.path, backed="r")
