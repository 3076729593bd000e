"""Pruning of the first encoder layer and the gene programs it leaves behind.

After training with the scale-invariant L1/L2 penalty (``alpha_w``), most first-layer weights
are tiny. :func:`prune` sets, per first-layer neuron i, every weight with
``|W_ig| / max_g |W_ig| < delta`` to zero. Each neuron is then a small signed gene set, a
"gene program": :func:`gene_programs` lists them, :func:`write_gmt` writes them as a GMT file
and :func:`program_activity` scores cells on them.

Keeping pruned weights at zero. The pruned positions are kept as a boolean mask on the model
(:class:`PruneMask`, not a buffer, so the weights file keeps its layout) and enforced by two hooks, so fine-tuning
with ``model.train()`` never revives them:

* a gradient hook on the first-layer weight zeroes the gradient of pruned weights. ``train()``
  builds a fresh Adam each call, whose moments for those weights then stay exactly zero, so
  its update for them is exactly zero (0 / (sqrt(0) + eps)) and they stay 0 at every step;
* a forward pre-hook on the network writes zeros into the pruned positions before every
  forward pass (train and eval, dense or sparse first layer), a safety net for optimisers that
  arrive with non-zero state (a checkpoint from before pruning, a user's own optimiser):
  pruned weights never enter any output, and are zero again from the first forward on.

On disk, ``zipo.json`` records ``pruned: {delta, pruned_fraction, ...}``; loading re-derives the
mask from the weights that are exactly zero (a pruned weight is exactly zero, and a weight that
is exactly zero has normalised magnitude 0 < delta, so the two sets are the same).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from ..config import ModelConfig
from ..data.genes import gene_positions
from ..data.loader import CellBatches
from ..files import write_text_atomic
from ..nn.sparse import as_dense
from ..train.evaluate import evaluate, rate_mse

#: The keys of ``ZiPo.pruning``, the record saved with a pruned model.
PRUNING_RECORD = ("delta", "pruned_fraction", "weights_pruned", "weights_total")


# --------------------------------------------------------------------------- the mask
class PruneMask:
    """The pruned positions of the first layer (True = pruned) and the hooks enforcing them.

    The forward pre-hook sits on the whole network, not on the first ``nn.Linear``: the sparse
    first-layer path multiplies by ``first_layer.weight`` without calling that module."""

    def __init__(self, pruned: torch.Tensor):
        self.pruned = pruned.detach().to(torch.bool)
        self.network: torch.nn.Module | None = None

    def _on(self, device: torch.device) -> torch.Tensor:
        if self.pruned.device != device:
            self.pruned = self.pruned.to(device)
        return self.pruned

    # forward pre-hook of the network: (module, inputs) -> None
    def __call__(self, network: torch.nn.Module, inputs) -> None:
        weight = network.first_layer.weight
        hooks = getattr(weight, "_backward_hooks", None)
        if weight.requires_grad and (not hooks or self.grad not in hooks.values()):
            # the gradient hook is lost when the network is deep-copied (a copied parameter
            # drops its hooks, a module keeps its forward hooks): attach it again
            weight.register_hook(self.grad)
        w = weight.data  # .data: not tracked by autograd, no version bump
        w.masked_fill_(self._on(w.device), 0.0)

    def grad(self, g: torch.Tensor) -> torch.Tensor:
        return g.masked_fill(self._on(g.device), 0.0)

    def install(self, network: torch.nn.Module) -> None:
        self.remove()
        shape = tuple(network.first_layer.weight.shape)
        if tuple(self.pruned.shape) != shape:
            raise ValueError(f"the pruning mask has shape {tuple(self.pruned.shape)}, the first "
                             f"layer {shape}")
        self.network = network
        network.register_forward_pre_hook(self)
        self(network, ())  # zero the pruned weights now, and add the gradient hook

    @classmethod
    def from_zero_weights(cls, network: torch.nn.Module) -> "PruneMask":
        """After loading: the weights that are exactly zero are the pruned ones (see the module
        docstring), installed on ``network``."""
        mask = cls(network.first_layer.weight.detach() == 0)
        mask.install(network)
        return mask

    def apply(self, network: torch.nn.Module) -> None:
        """Write zeros into the pruned weights of ``network``, installing the hooks first if
        the network was replaced since."""
        if self.network is not network:
            self.install(network)
        else:
            self(network, ())

    def remove(self) -> None:
        """Take this mask's hooks off its network. Found by value rather than through handles,
        which would still point into the original module after a deep copy."""
        if self.network is not None:
            _drop(self.network._forward_pre_hooks, lambda h: h is self)
            _drop(getattr(self.network.first_layer.weight, "_backward_hooks", None) or {},
                  lambda h: h == self.grad)
        self.network = None


def _drop(hooks: dict, match) -> None:
    """Remove the hooks that ``match``."""
    for key in [k for k, h in hooks.items() if match(h)]:
        del hooks[key]


# --------------------------------------------------------------------------- pruning
def pruning_mask(weight: torch.Tensor, delta: float) -> torch.Tensor:
    """True where ``|W_ig| / max_g |W_ig| < delta`` (per row i = neuron). A neuron whose weights
    are all zero is pruned entirely."""
    a = weight.detach().abs()
    top = a.amax(dim=1, keepdim=True)
    return (a < delta * top) | (top == 0)


def _nll_mse(network, batches: CellBatches | None,
             config: ModelConfig) -> tuple[float | None, float | None]:
    if batches is None:
        return None, None
    _, nll = evaluate(network, batches, config)
    return float(nll), rate_mse(network, batches)


def prune_first_layer(network, delta: float, previous: PruneMask | None,
                      batches: CellBatches | None, config: ModelConfig,
                      verbose: bool = False) -> tuple[PruneMask, dict]:
    """Prune ``network``'s first layer at ``delta``, keeping the weights ``previous`` pruned;
    returns the new mask and the report of :meth:`zipo.ZiPo.prune` (NLL and MSE on
    ``batches`` before and after, None without batches)."""
    delta = float(delta)
    if not (math.isfinite(delta) and 0 <= delta <= 1):
        raise ValueError(f"delta must be in [0, 1] (a fraction of each neuron's largest weight), "
                         f"got {delta}")
    if previous is not None:
        previous.apply(network)
    nll_before, mse_before = _nll_mse(network, batches, config)

    pruned = pruning_mask(network.first_layer.weight, delta)
    if previous is not None:
        pruned |= previous._on(pruned.device)  # pruned weights stay pruned
        previous.remove()
    mask = PruneMask(pruned)
    mask.install(network)

    nll_after, mse_after = _nll_mse(network, batches, config)
    n_pruned, n_total = int(pruned.sum().item()), pruned.numel()
    report = {
        "pruned_fraction": n_pruned / n_total,
        "weights_pruned": n_pruned,
        "weights_total": n_total,
        "delta": delta,
        "nll_before": nll_before,
        "nll_after": nll_after,
        "mse_before": mse_before,
        "mse_after": mse_after,
    }
    if verbose:
        fmt = lambda v: "n/a" if v is None else f"{v:.5g}"  # noqa: E731
        print(f"ZiPo pruning at delta={delta:g}: {n_pruned:,} of {n_total:,} first-layer weights "
              f"({report['pruned_fraction']:.1%}) set to zero; NLL {fmt(nll_before)} -> "
              f"{fmt(nll_after)}, MSE {fmt(mse_before)} -> {fmt(mse_after)}")
    return mask, report


def prune(model, delta: float, adata=None,
          previous: PruneMask | None = None) -> tuple[PruneMask, dict]:
    """Prune the first encoder layer of a trained ``model``: per neuron i, weights with
    ``|W_ig| / max_g |W_ig| < delta`` become zero, and stay zero through later training
    (:meth:`ZiPo.train` again fine-tunes only the kept weights) and
    :meth:`ZiPo.save`/:meth:`ZiPo.load`.

    Returns (and, with ``verbose``, prints) ``pruned_fraction`` (of all first-layer weights),
    ``weights_pruned``, ``weights_total``, ``delta`` and NLL/MSE before and after pruning:
    ``nll_*`` is the mean NLL per matrix entry (as :meth:`ZiPo.evaluate`), ``mse_*`` the mean
    over entries of ``(x - l * mu)^2``, the rate expectation (``denoise(expectation="rate")``).
    Both are computed on ``adata`` (all its cells) when given, else on the validation cells
    of the training data (all its cells without a validation split); they are None for a
    model loaded without data. Pruning again at a larger delta prunes more; pruned weights
    are never restored. Returns the new mask, which the model keeps, and the report."""
    network = model.trained_network()
    if adata is not None:
        batches = model.cell_batches(adata)
    elif model.adata is not None:
        batches = model.validation_batches() or model.cell_batches(model.adata)
    else:
        batches = None
    return prune_first_layer(network, delta, previous, batches, model.config.model,
                             verbose=model.config.train.verbose)


# --------------------------------------------------------------------------- programs
def program_names(n: int) -> list[str]:
    width = max(4, len(str(n - 1)))
    return [f"program_{i:0{width}d}" for i in range(n)]


def program_weights(network, min_weight: float) -> np.ndarray:
    """First-layer weights (neurons x genes, float32), with those below ``min_weight`` times
    their neuron's largest ``|weight|`` set to zero."""
    min_weight = float(min_weight)
    if not (math.isfinite(min_weight) and 0 <= min_weight <= 1):
        raise ValueError(f"min_weight must be in [0, 1] (a fraction of each program's largest "
                         f"|weight|), got {min_weight}")
    w = network.first_layer.weight.detach().cpu().numpy().astype(np.float32, copy=True)
    if min_weight > 0:
        a = np.abs(w)
        w[a < min_weight * a.max(axis=1, keepdims=True)] = 0.0
    return w


def _long_table(w: np.ndarray, genes: pd.Index) -> pd.DataFrame:
    names = np.asarray(program_names(w.shape[0]), dtype=object)
    rows, cols = np.nonzero(w)
    vals = w[rows, cols]
    absv = np.abs(vals)
    order = np.lexsort((cols, -absv, rows))  # program, then |weight| desc, then gene order
    rows, cols, vals, absv = rows[order], cols[order], vals[order], absv[order]
    counts = np.bincount(rows, minlength=w.shape[0])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(rows)) - starts[rows] + 1
    return pd.DataFrame({
        "program": names[rows],
        "gene": np.asarray(genes, dtype=object)[cols],
        "weight": vals.astype(np.float32),
        "abs_weight": absv.astype(np.float32),
        "rank": rank.astype(np.int64),
    })


def gene_programs(model, adata=None, min_weight: float = 0.0, key_added: str = "zipo") -> pd.DataFrame:
    """Each first-layer neuron as a signed gene set ("program_0007" = neuron 7).

    Returns a long DataFrame with columns ``program``, ``gene``, ``weight`` (signed),
    ``abs_weight`` and ``rank`` (1 = largest ``|weight|`` in its program), non-zero weights only,
    sorted by program then ``|weight|`` descending. ``min_weight`` in [0, 1] keeps only weights
    with ``|W_ig| >= min_weight * max_g |W_ig|`` (relative, like the pruning delta).

    Also writes into ``adata`` (default: the training data, if the model has it; genes in
    any order) ``varm[f"{key_added}_programs"]`` (genes x programs weights, float32; scipy
    CSR when more than half are zero) and ``uns[f"{key_added}_programs"]`` (``programs``
    names, ``n_genes`` per program, ``min_weight``, and ``delta``/``pruned_fraction`` when
    pruned)."""
    w = program_weights(model.trained_network(), min_weight)
    table = _long_table(w, model.var_names)
    adata = model.adata if adata is None else adata
    if adata is not None:
        positions = gene_positions(model.var_names, adata)  # model column of each adata gene
        loadings = (w if positions is None else w[:, positions]).T  # genes of adata x programs
        if positions is not None:
            loadings[positions < 0] = 0  # genes the model lacks (no counts) weigh nothing
        n_zero = loadings.size - np.count_nonzero(loadings)
        adata.varm[f"{key_added}_programs"] = (
            sp.csr_matrix(loadings, dtype=np.float32) if n_zero > loadings.size / 2
            else np.ascontiguousarray(loadings, dtype=np.float32)
        )
        info = {
            "programs": program_names(w.shape[0]),
            "n_genes": np.count_nonzero(w, axis=1).astype(np.int64),
            "min_weight": float(min_weight),
            "description": "first-layer neurons of the ZiPo encoder; varm holds their weights "
                           "(genes x programs, on log1p counts)",
        }
        if model.pruning:
            info["delta"] = float(model.pruning["delta"])
            info["pruned_fraction"] = float(model.pruning["pruned_fraction"])
        adata.uns[f"{key_added}_programs"] = info
    return table


def _clean(text: str) -> str:
    return str(text).replace("\t", " ").replace("\n", " ").replace("\r", " ")


def write_gmt(model, path: str | Path, top_n: int | None = None, min_weight: float = 0.0) -> Path:
    """Write the non-empty programs as a GMT file (name, description, genes by ``|weight|``
    descending; at most ``top_n`` genes each), atomically. Returns the path."""
    if top_n is not None and (int(top_n) != top_n or top_n < 1):
        raise ValueError(f"top_n must be a positive whole number or None, got {top_n!r}")
    w = program_weights(model.trained_network(), min_weight)
    genes = np.asarray(model.var_names, dtype=object)
    names = program_names(w.shape[0])
    lines = []
    for i, row in enumerate(w):
        nz = np.flatnonzero(row)
        if not len(nz):
            continue
        nz = nz[np.lexsort((nz, -np.abs(row[nz])))]
        n_all = len(nz)
        if top_n is not None:
            nz = nz[: int(top_n)]
        desc = (f"ZiPo first-layer neuron {i}; {n_all} genes"
                + (f" (top {len(nz)} listed)" if len(nz) < n_all else "")
                + f"; top weight {_clean(genes[nz[0]])} {row[nz[0]]:+.4g}")
        lines.append("\t".join([names[i], desc, *(_clean(g) for g in genes[nz])]))
    return write_text_atomic(path, "".join(line + "\n" for line in lines))


def read_gmt(path: str | Path) -> dict[str, list[str]]:
    """Gene sets of a GMT file: {name: genes} (the description column is dropped)."""
    sets = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            parts = line.split("\t")
            sets[parts[0]] = parts[2:]
    return sets


@torch.no_grad()
def program_activity(model, adata=None, key_added: str = "zipo",
                     batch_size: int | None = None) -> np.ndarray:
    """Per-cell activity of each program: the first layer's pre-activation
    ``W1 T(x) + b1`` (T the input transform, log1p by default), cells x neurons float32,
    computed in mini-batches and written to ``adata.obsm[f"X_{key_added}_programs"]``
    (default adata: the training data). Pre-activation, because it is linear in the
    program's genes (a signed weighted sum of their log counts) before the sigmoid
    saturates and batch norm rescales it."""
    network = model.trained_network()
    adata = model.adata if adata is None else adata
    if adata is None:
        raise ValueError("pass the AnnData whose cells to score")
    network.eval()
    layer = network.first_layer
    out = np.empty((adata.n_obs, layer.out_features), dtype=np.float32)
    for x, _, idx in model.cell_batches(adata, batch_size):
        out[idx] = layer(as_dense(network.transform_input(x))).float().cpu().numpy()
    adata.obsm[f"X_{key_added}_programs"] = out
    return out


class ProgramsMixin:
    """Pruning and gene programs as methods of :class:`~zipo.ZiPo` (its ``_prune_mask`` and
    ``pruning`` are set here and saved by :mod:`zipo.io`)."""

    def prune(self, delta: float = 1e-4, adata=None) -> dict:
        """Prune the first encoder layer at ``delta``; pruned weights stay zero through later
        training and save/load. Returns the report of :func:`zipo.tools.programs.prune` (of
        the first fit; a model's further fits are pruned at the same ``delta``)."""
        self._prune_mask, report = prune(self, delta, adata, self._prune_mask)
        self.pruning = {k: report[k] for k in PRUNING_RECORD}
        for fit in self.further_fits:  # denoise averages them: all pruned alike
            fit.prune(delta, adata)
        return report

    def gene_programs(self, adata=None, min_weight: float = 0.0,
                      key_added: str = "zipo") -> pd.DataFrame:
        """Each first-layer neuron as a signed gene set, as a table, also written into
        ``adata``; see :func:`zipo.tools.programs.gene_programs`."""
        return gene_programs(self, adata, min_weight, key_added)

    def write_gmt(self, path: str | Path, top_n: int | None = None,
                  min_weight: float = 0.0) -> Path:
        """The programs as a GMT file; see :func:`zipo.tools.programs.write_gmt`."""
        return write_gmt(self, path, top_n, min_weight)

    def program_activity(self, adata=None, key_added: str = "zipo",
                         batch_size: int | None = None) -> np.ndarray:
        """Per-cell activity of each program, written into ``adata.obsm``; see
        :func:`zipo.tools.programs.program_activity`."""
        return program_activity(self, adata, key_added, batch_size)

    def trained_network(self):
        """The network, after checking the model is trained, with pruned weights at zero (what
        the tools read)."""
        self._require_trained()
        self._enforce_pruning()
        return self.network

    def _enforce_pruning(self) -> None:
        """Zero the pruned first-layer weights (no-op for an unpruned model)."""
        if self._prune_mask is not None:
            self._prune_mask.apply(self.network)
