"""``ZiPo.denoise``'s predictions and where they go: arrays in memory, or an ``.h5ad`` file
written a batch at a time, so that a million cells never need their cells x genes matrix in
memory."""

from __future__ import annotations

import math
from numbers import Real
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import pandas as pd
import torch

from .data.counts import examples
from .data.loader import CellBatches
from .distributions import expected_log1p, posterior_rate
from .errors import InputError, notice
from .nn.sparse import as_dense
from .files import atomic_path, check_target
from .nn.network import NetworkOutput, ZiPoNetwork

Expectation = Literal["rate", "mixture", "lognorm", "posterior"]
EXPECTATIONS = ("rate", "mixture", "lognorm", "posterior")
"""What ``ZiPo.denoise(expectation=...)`` writes per cell and gene:

- ``"rate"``: ``l * mu``, the expected count of the Poisson/NB component, i.e. the denoised
  expression with technical zeros removed;
- ``"mixture"``: ``(1 - z) * l * mu``, the mean of the whole zero-inflated distribution (what a
  new measurement would average);
- ``"lognorm"``: ``E[log1p(target_sum * X / l)]`` for X drawn from the fitted distribution,
  what scanpy's ``normalize_total(target_sum=target_sum)`` + ``log1p`` (natural log) of a new
  measurement would average; Bioconductor's ``logcounts`` is this with target_sum = the mean
  library size, divided by log(2). ``log1p`` of the rate overstates it at low expression
  (:func:`zipo.distributions.expected_log1p`);
- ``"posterior"``: ``E[rate | x]``, the rate updated by the cell's own count (NB/ZINB: each
  count shrunk towards ``l * mu`` as far as the fitted dispersion says; Poisson/ZIP: the rate),
  :func:`zipo.distributions.posterior_rate`.

``depth`` predicts a measurement at ``depth`` times each cell's predicted library size (rate
and mixture scale by it; lognorm's rate and normaliser both do).

Genes of the data that the model lacks because they have no counts (a model trains on the
detected genes) get 0 under every expectation, and a zero-inflation probability of 0: what a
rate of 0 implies."""


Pool = Callable[[np.ndarray, torch.Tensor], tuple]


@torch.no_grad()
def write_predictions(fits: Sequence[tuple[ZiPoNetwork, Pool | None, float]],
                      batches: CellBatches,
                      sink, columns: np.ndarray | None, expectation: Expectation,
                      denoised: bool, zero_inflation: bool, depth: float = 1.0,
                      target_sum: float = 1e4, reference: np.ndarray | None = None) -> None:
    """Run each fit's network over ``batches`` and write each batch's latents (the first
    fit's), and the fits' mean library sizes, (for the model genes ``columns``, all when
    None; -1 for an undetected gene the model lacks, which gets 0) expectations (see
    :func:`expected_values`) and zero probabilities into ``sink``. ``reference`` (cells x
    encoded covariates) predicts the cells at these covariates instead of their own
    (``denoise(covariate_values=...)``). A fit's ``pool(cells, counts)`` gives a batch's
    pooled neighbour terms of its posterior, and its scale multiplies the dispersion there
    (:mod:`zipo.neighbours`)."""
    device = next(fits[0][0].parameters()).device
    present = None if columns is None or np.all(columns >= 0) else columns >= 0
    if present is not None:
        columns = columns[present]
    columns = None if columns is None else torch.as_tensor(columns, device=device)
    for network, _, _ in fits:
        network.eval()
    for x, c, idx in batches:
        latent = library = mean = zprob = None
        for network, pool, dispersion_scale in fits:
            o = own = network(x, c)
            if reference is not None:
                o = network.heads(own.latent, x,
                                  torch.as_tensor(reference[idx], dtype=c.dtype, device=c.device))
            if latent is None:
                latent = o.latent.cpu().numpy()
            size = torch.exp(o.log_library)
            library = size if library is None else library.add_(size)
            if not (denoised or zero_inflation):
                continue
            log_m = o.log_mean if columns is None else o.log_mean[:, columns]
            z = (torch.sigmoid(o.logit_z if columns is None else o.logit_z[:, columns])
                 if o.logit_z is not None else None)
            if denoised:
                pooled = pool(idx, x) if pool is not None else None
                value = expected_values(o, log_m, z, columns, expectation, depth, target_sum,
                                        x, own, pooled, dispersion_scale)
                mean = value if mean is None else mean.add_(value)
            if zero_inflation:
                zero = z if z is not None else torch.zeros_like(log_m)
                zprob = zero if zprob is None else zprob.add_(zero)
        library = (library / len(fits)).cpu().numpy()
        if mean is not None:
            mean = _with_zeros((mean / len(fits)).cpu().numpy(), present)
        if zprob is not None:
            zprob = _with_zeros((zprob / len(fits)).cpu().numpy(), present)
        sink.write(idx, latent, library, mean, zprob)


def _with_zeros(values: np.ndarray, present: np.ndarray | None) -> np.ndarray:
    """One batch's ``values`` (cells x the model genes emitted) placed at the ``present``
    output columns, 0 at the others (None: every column is a model gene)."""
    if present is None:
        return values
    out = np.zeros((values.shape[0], len(present)), dtype=values.dtype)
    out[:, present] = values
    return out


def expected_values(o: NetworkOutput, log_m: torch.Tensor, z: torch.Tensor | None,
                    columns: torch.Tensor | None, expectation: Expectation, depth: float,
                    target_sum: float, x: torch.Tensor | None = None,
                    own: NetworkOutput | None = None,
                    pooled: tuple[torch.Tensor, torch.Tensor] | None = None,
                    dispersion_scale: float = 1.0) -> torch.Tensor:
    """One batch's ``expectation`` for a measurement at ``depth`` times each cell's predicted
    library size l: rate ``depth * m``, mixture ``(1 - z) * depth * m``, lognorm
    E[log1p(target_sum * X / (depth * l))] with X ~ the fitted distribution at rate ``depth * m``
    (z and theta unchanged: a deeper measurement samples the same cell); posterior
    ``depth * E[rate | x]`` for the batch's counts ``x``. When ``o`` predicts the cells at
    other covariates than their own (``own``, the output at theirs, measured ``x``), the
    posterior is the cell's own E[rate | x] times the ratio of the two rates: the cell keeps
    its deviation from its expected rate, and the covariates' effect on the rate is swapped.
    ``pooled`` and ``dispersion_scale`` (posterior only): the neighbours' weighted counts and
    exposure, and the factor on theta, that the model chose (:mod:`zipo.neighbours`)."""
    if expectation == "lognorm":
        logit_z, log_theta = _distribution_heads(o, columns)
        log_depth = math.log(depth)
        # normalize_total divides by the cell's total, whose expectation is depth * l
        scale = target_sum * torch.exp(-(o.log_library + log_depth))[:, None]
        return expected_log1p(log_m + log_depth if depth != 1 else log_m, logit_z, log_theta,
                              scale)
    if expectation == "posterior":
        own = o if own is None else own
        logit_z, log_theta = _distribution_heads(own, columns)
        own_log_m = own.log_mean if columns is None else own.log_mean[:, columns]
        x = as_dense(x).to(log_m.dtype)
        if pooled is not None and columns is not None:
            pooled = (pooled[0][:, columns], pooled[1])
        m = posterior_rate(x if columns is None else x[:, columns], own_log_m, logit_z,
                           log_theta, pooled, dispersion_scale)
        if own is not o:
            m = m * torch.exp(log_m - own_log_m)
        return m * depth if depth != 1 else m
    m = torch.exp(log_m)
    if depth != 1:
        m = m * depth
    return m if expectation == "rate" or z is None else (1 - z) * m


def _distribution_heads(o: NetworkOutput, columns: torch.Tensor | None):
    """The zero-inflation logits and log dispersions (each None when the likelihood has none)
    of the genes ``columns`` (all when None)."""
    return (None if t is None else t if columns is None else t[:, columns]
            for t in (o.logit_z, o.log_theta))


def _positive(value, name: str, meaning: str) -> None:
    if isinstance(value, bool) or not isinstance(value, Real) or not (0 < value < math.inf):
        raise ValueError(f"{name} must be a positive number ({meaning}), got {value!r}")


def check_output_options(expectation: str, depth: float = 1.0,
                         target_sum: float = 1e4) -> None:
    """Refuse an output that :meth:`zipo.ZiPo.denoise` cannot give, before any training is
    spent on it (``zipo.denoise`` and the R package's ``denoise()`` check first)."""
    if expectation not in EXPECTATIONS:
        raise InputError(
            f"expectation must be 'rate', 'mixture', 'lognorm' or 'posterior', got "
            f"{expectation!r}",
            {"python": "'lognorm' is log-normalised, like scanpy's normalize_total + log1p; "
                       "'posterior' the rate given each count",
             "r": "\"lognorm\" is log-normalised, like Seurat's NormalizeData(); "
                  "\"posterior\" the rate given each count"})
    _positive(depth, "depth", "1 = each cell's own predicted library size, 2 = twice as deep")
    _positive(target_sum, "target_sum", "the counts per cell that 'lognorm' normalises to, "
                                        "e.g. 1e4")


def check_denoise_request(adata, expectation: str, copy: bool, out, denoised: bool,
                          depth: float = 1.0, target_sum: float = 1e4) -> None:
    """Refuse a combination of :meth:`zipo.ZiPo.denoise` arguments that cannot be served."""
    check_output_options(expectation, depth, target_sum)
    if adata is None:
        raise ValueError("pass the AnnData to denoise")
    if adata.isbacked and not copy and out is None:
        raise ValueError("adata is backed (read-only on disk); pass out='denoised.h5ad' to "
                         "stream the results to a file, or use copy=True or adata.to_memory()")
    if out is not None and copy:
        raise ValueError("out= writes a new file and copy=True a new AnnData in memory: pass one")
    if out is not None and not denoised:
        raise ValueError("out= streams the denoised counts to a file; with denoised=False "
                         "there is nothing large to stream: drop out= (latents and library "
                         "sizes go into adata, or a copy with copy=True)")


def output_columns(model_genes: pd.Index, adata, genes: list[str] | None,
                   notify: bool = False) -> tuple[np.ndarray | None, list[str]]:
    """The model columns to emit (None: all, in the model's order; -1: a gene of ``adata``
    that the model lacks, which :meth:`zipo.ZiPo.denoise` has found to have no counts) and
    their gene names, in output order: the requested ``genes``, else all of ``adata``'s in its
    own order. With ``notify``, a notice says how many output genes get 0 so."""
    names = list(pd.Index(adata.var_names.astype(str))) if genes is None else genes
    if genes is None and pd.Index(names).equals(model_genes):
        return None, names
    columns = model_genes.get_indexer(names)
    n_zero = int(np.sum(columns < 0))
    if notify and n_zero:
        notice(f"{n_zero:,} of the {len(names):,} genes denoised are not in the model and have "
               "no counts in any cell here: their denoised values are 0", stacklevel=3)
    return columns, names


def output_genes(model_genes: pd.Index, adata, genes: Sequence[str] | None) -> list[str] | None:
    """``genes`` (one name or several) checked against the model's genes and ``adata``'s
    (whose genes the model lacks get 0, if they have no counts); None for all."""
    if genes is None:
        return None
    genes = [str(g) for g in ([genes] if isinstance(genes, str) else genes)]
    known = set(model_genes) | (set() if adata is None else set(adata.var_names.astype(str)))
    unknown = [g for g in genes if g not in known]
    if unknown:
        raise InputError(
            f"genes={examples(unknown)} are not genes of the model or of the data",
            {"python": f"choose from adata.var_names (the model has {len(model_genes)} of "
                       "them: model.var_names)",
             "r": f"choose from rownames(x) (the model has {len(model_genes)} of them: "
                  "rownames(model))"})
    if len(set(genes)) != len(genes):
        raise ValueError("genes lists a gene more than once")
    return genes


def output_sink(adata, genes: list[str], n_latent: int, out, key: str, denoised: bool,
                zero_inflation: bool, overwrite: bool):
    """Where the results for ``genes`` go: a :class:`StreamedOutput` file at ``out``, or a
    :class:`MemoryOutput`."""
    if out is None:
        return MemoryOutput(adata.n_obs, len(genes), n_latent, denoised, zero_inflation)
    return StreamedOutput(out, adata.obs, genes, n_latent, key, denoised, zero_inflation,
                          var=var_frame(adata, genes), overwrite=overwrite)


def output_target(adata, copy: bool):
    """The AnnData the in-memory results go into: ``adata`` itself, or a copy."""
    if copy and adata.isbacked:
        # Only after the batches are read: to_memory() closes the backing file, which the
        # batches read from. Reopen it so the caller's backed AnnData stays usable.
        target = adata.to_memory()
        if not adata.file.is_open:
            adata.file.open()
        return target
    return adata.copy() if copy else adata


def var_frame(adata, genes: Sequence[str]) -> pd.DataFrame:
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
        check_target(self.path, overwrite)  # at once, not after the first batch
        self.obs, self.var, self.genes, self.key = obs, var, list(genes), key
        self.n_cells, self.n_latent = len(obs), n_latent
        self.want = {"denoised": denoised, "zero_prob": zero_inflation}
        self.library = np.empty(self.n_cells, dtype=np.float32)
        self.file = None
        self._target = atomic_path(self.path, overwrite=overwrite)

    def _dataset(self, group, name: str, width: int):
        rows = max(1, min(self.n_cells, self.CHUNK_BYTES // (4 * max(width, 1))))
        ds = group.create_dataset(name, shape=(self.n_cells, width), dtype="float32",
                                  chunks=(rows, width))
        ds.attrs["encoding-type"], ds.attrs["encoding-version"] = "array", "0.2.0"
        return ds

    def __enter__(self) -> "StreamedOutput":
        import h5py

        tmp = self._target.__enter__()
        self.file = h5py.File(tmp, "w")
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
        except BaseException as e:
            exc_type, exc, tb = type(e), e, e.__traceback__
            raise
        finally:
            self.file.close()
            # renamed into place when every batch was written, else removed
            self._target.__exit__(exc_type, exc, tb)

    def result(self):
        """The written file, opened backed (read-only): nothing large is loaded."""
        import anndata as ad

        return ad.read_h5ad(self.path, backed="r")
