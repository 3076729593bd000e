"""Borrowing from a cell's neighbours in the latent space: pooled counts in the posterior.

The default output, E[rate | x] (:func:`zipo.distributions.posterior_rate`), updates the
network's rate m by the cell's own counts x. A cell's nearest neighbours in ZiPo's latents are
measurements of nearly the same state, so their counts, taken at the cell's library size, are
further Poisson draws around its rate. Under the NB model's Gamma(theta, theta / m) rate they
enter as pooled counts with a weight w:

    E[rate | x, neighbours] = (theta + x + w S_x) / (theta / m + 1 + w S_l),

S_x the sum of the k neighbours' counts of the gene and S_l the sum of their library sizes
over the cell's own. w = 0 is the plain posterior. How much to borrow depends on the data: on
100 cells the network's rate is rough and the neighbours hold much that it misses; on
thousands of cells it already holds what they know. So k and w are chosen after training by
the validation cells' held-out molecules (:func:`choose_pooling`), each cell's neighbours drawn
from all other cells, and a model keeps w = 0 unless borrowing predicts them better.

With ``train.dispersion_choice = "auto"`` (the default from 500 cells) the same choice also
scales the dispersion theta that the posterior uses by a c of
:data:`CANDIDATE_DISPERSION_SCALES`: c > 1 trusts the network's rate more against the cell's
own count. The network's theta describes the spread of the counts it trained on around its
rate, which need not be the shrinkage that predicts new molecules best (docs, history: "A
dispersion scale chosen on the fixed split").

The neighbour search is exact (Euclidean, in chunks), so it is offered up to
:data:`MAX_CELLS` cells; larger data keep the plain posterior, where the network's rate has
the most cells behind it anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.sparse as sp
import torch

from .data.counts import CountMatrix
from .data.loader import CellBatches
from .distributions import poisson_log_pmf, posterior_rate
from .errors import notice
from .nn.sparse import as_dense
from .option_types import LIKELIHOODS
from .train.heldout import FixedSplit, binomial_split

CANDIDATE_NEIGHBOURS = (5, 15, 30, 50)
CANDIDATE_WEIGHTS = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0)
# The network's own theta (c = 1) first: kept on a tie. Only c > 1: held-out molecules share
# the cells' dropout zeros, and c < 1, which follows them, won there while it imputed masked
# counts and the simulation's true rates worse (docs, history: "A dispersion scale chosen on
# the fixed split").
CANDIDATE_DISPERSION_SCALES = (1.0, 2.0)
# Molecule splits the choice averages over: on small data (100 cells hold out 10) one split
# leaves few held-out molecules, and the choice would follow their noise.
SPLITS = 3
MAX_CELLS = 100_000


@dataclass
class NeighbourPooling:
    """What a trained model's ``denoise(expectation="posterior")`` applies, as chosen on the
    validation cells' held-out molecules: ``weight`` w of the pooled counts of each cell's
    ``neighbours`` nearest cells (w = 0: the plain posterior), the ``dispersion_scale`` c
    that multiplies theta (1: the network's own), the validation score of every candidate,
    and why it is off where so."""

    neighbours: int = 0
    weight: float = 0.0
    dispersion_scale: float = 1.0
    scores: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def active(self) -> bool:
        return self.weight > 0 and self.neighbours > 0

    def to_dict(self) -> dict:
        return {"neighbours": self.neighbours, "weight": self.weight,
                "dispersion_scale": self.dispersion_scale, "scores": self.scores,
                "note": self.note}

    @classmethod
    def from_dict(cls, d: dict | None) -> "NeighbourPooling":
        return cls(**d) if d else cls(note="not chosen: the model was trained without it")


# Distances held at once in the neighbour search (float32 entries): queries are taken in
# chunks of at most this many entries / reference cells, so memory stays bounded whatever
# the number of cells (a fixed 2,048 queries against 100,000 cells grew RSS by 2.3 GiB).
DISTANCE_ENTRIES = 2**24


def nearest(query: torch.Tensor, reference: torch.Tensor, k: int,
            query_rows: np.ndarray | None = None,
            chunk: int | None = None) -> np.ndarray:
    """Rows of ``reference`` nearest each row of ``query`` (Euclidean), nearest first, as a
    (queries x k) array; ``query_rows[i]``, query i's own row in ``reference``, is never its
    neighbour. ``chunk`` queries are searched at a time (default: as many as
    :data:`DISTANCE_ENTRIES` allows)."""
    query, reference = query.float(), reference.float()
    ref_sq = (reference ** 2).sum(1)
    chunk = chunk or min(2048, max(1, DISTANCE_ENTRIES // max(len(reference), 1)))
    found = []
    for start in range(0, len(query), chunk):
        q = query[start:start + chunk]
        # |r|^2 - 2 q.r (+ |q|^2, the same along a row), in place: one chunk-sized matrix
        dist = (q @ reference.T).mul_(-2.0).add_(ref_sq)
        if query_rows is not None:
            own = torch.as_tensor(query_rows[start:start + chunk], device=dist.device)
            dist[torch.arange(len(q), device=dist.device), own] = math.inf
        found.append(torch.topk(dist, k, dim=1, largest=False).indices.cpu())
    return torch.cat(found).numpy() if found else np.zeros((0, k), dtype=np.int64)


class PooledCounts:
    """Each cell's neighbours' summed counts and library sizes (``counts``' cells, in its gene
    order); ``neighbours[i]`` are the neighbours of cell ``cells[i]``, nearest first."""

    def __init__(self, counts: CountMatrix, library: np.ndarray, cells: np.ndarray,
                 neighbours: np.ndarray):
        self.counts, self.library, self.neighbours = counts, library, neighbours
        self.position = np.full(len(library), -1, dtype=np.int64)
        self.position[cells] = np.arange(len(cells))

    def sums(self, cells: np.ndarray, k: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(S_x, cells x genes; S_l, cells) over the ``k`` nearest neighbours of ``cells``.
        Only the neighbours' rows are read, once each, and summed sparse."""
        nb = self.neighbours[self.position[cells], :k]
        rows, which = np.unique(nb, return_inverse=True)
        members = sp.csr_matrix((np.ones(nb.size, dtype=np.float32),
                                 (np.repeat(np.arange(len(nb)), nb.shape[1]), which.ravel())),
                                shape=(len(nb), len(rows)))
        summed = np.asarray((members @ self.counts.rows_csr(rows)).todense(), dtype=np.float32)
        library = self.library[nb].sum(1).astype(np.float32)
        return torch.from_numpy(summed).to(device), torch.from_numpy(library).to(device)

    def pooled(self, cells: np.ndarray, x: torch.Tensor, pooling: NeighbourPooling
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior's pooled terms of ``cells`` with counts ``x``: (w S_x, w S_l / l)."""
        summed, library = self.sums(cells, pooling.neighbours, x.device)
        return weighted(summed, library, _own_library(x), pooling.weight)


def weighted(summed: torch.Tensor, library: torch.Tensor, own_library: torch.Tensor,
             weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    # A cell without counts (possible among held-out splits) takes its neighbours at face value.
    return weight * summed, (weight * library / own_library.clamp(min=1.0))[:, None]


def _own_library(x: torch.Tensor) -> torch.Tensor:
    return as_dense(x).sum(1, dtype=torch.float32)


def self_pool(latents: torch.Tensor, counts: CountMatrix, library: np.ndarray,
              k: int) -> PooledCounts:
    """Neighbours of every cell among all the others (the cells denoised together)."""
    cells = np.arange(len(latents))
    k = min(k, len(latents) - 1)
    return PooledCounts(counts, library, cells, nearest(latents, latents, k, cells))


@torch.no_grad()
def choose_pooling(network: torch.nn.Module, counts: CountMatrix, library: np.ndarray,
                   latents: torch.Tensor, validation: CellBatches, heldout: float,
                   seed: int, fixed: FixedSplit | None = None,
                   scales: tuple[float, ...] = (1.0,)) -> NeighbourPooling:
    """The candidate (k, w, c) whose posterior best predicts the validation cells' held-out
    molecules (Poisson NLL per entry), the cells' other molecules as their counts and all
    other cells' counts as neighbours, over :data:`SPLITS` splits of the molecules drawn from
    ``seed`` alone, so every process of a distributed run chooses alike; w = 0 and the first
    of ``scales`` on a tie. With ``fixed``, the split the cells trained with instead
    (``validation`` reads their kept molecules), and their neighbours are found from the
    latents of those. Scores are keyed ``k=..,w=..``, with ``,c=..`` where c is not 1."""
    n = len(latents)
    val = validation.indices
    k_max = min(max(CANDIDATE_NEIGHBOURS), n - 1)
    if k_max < 1:
        return NeighbourPooling(note="too few cells to have neighbours")
    network.eval()
    if fixed is None:
        generator = torch.Generator(device=validation.device).manual_seed(seed + 7_919)
        splits = ((*binomial_split(x, heldout, generator), c, idx)
                  for _ in range(SPLITS) for x, c, idx in validation)
        query = latents[val]
    else:
        splits = ((x, fixed.held_rows(idx, x.device), c, idx) for x, c, idx in validation)
        query = torch.cat([network.encode(x).float().cpu() for x, _, _ in validation])
    pool = PooledCounts(counts, library, val, nearest(query, latents, k_max, val))
    ks = sorted({min(k, k_max) for k in CANDIDATE_NEIGHBOURS})
    # the plain posterior does not depend on k: scored once, at the first
    totals = {(k, w, c): 0.0 for c in scales for k in ks for w in CANDIDATE_WEIGHTS
              if w > 0 or k == ks[0]}
    entries = 0
    scale = math.log(heldout / (1 - heldout))
    for kept, target, c, idx in splits:
        out = network(kept, c)
        kept = as_dense(kept).float()
        log_mean = out.log_mean.float()
        logit_z = out.logit_z.float() if out.logit_z is not None else None
        log_theta = out.log_theta.float()
        own = _own_library(kept)
        for k in ks:
            summed, lib = pool.sums(idx, k, kept.device)
            for w in CANDIDATE_WEIGHTS:
                if (k, w, scales[0]) not in totals:
                    continue
                pooled = weighted(summed, lib, own, w) if w > 0 else None
                for factor in scales:  # (c is the batch's covariates here)
                    rate = posterior_rate(kept, log_mean, logit_z, log_theta, pooled, factor)
                    totals[(k, w, factor)] -= poisson_log_pmf(
                        target, torch.log(rate) + scale).sum(dtype=torch.float64).item()
        entries += target.numel()
    scores = {f"k={k},w={w}" + ("" if c == 1 else f",c={c:g}"): v / entries
              for (k, w, c), v in totals.items()}
    plain_key = (ks[0], 0.0, scales[0])
    # the first of equal scores: the candidates run in the order of the scales, then k and w
    k, w, c = min((kwc for kwc in totals if kwc != plain_key), key=totals.get,
                  default=plain_key)
    if totals[(k, w, c)] < totals[plain_key]:
        return NeighbourPooling(neighbours=k if w > 0 else 0, weight=w, dispersion_scale=c,
                                scores=scores)
    return NeighbourPooling(dispersion_scale=scales[0], scores=scores,
                            note="the plain posterior predicted the validation cells' held-out "
                                 "molecules best")


def choose_for(model) -> NeighbourPooling:
    """The pooling a just-trained :class:`~zipo.ZiPo` applies (``train.neighbour_pooling``),
    or why none."""
    cfg = model.config
    if cfg.train.neighbour_pooling == "off":
        return NeighbourPooling(note="off (train.neighbour_pooling)")
    if not LIKELIHOODS[cfg.model.likelihood][1]:
        return NeighbourPooling(note="Poisson and ZIP rates have no per-cell noise to pool over")
    if model.covariate_encoder.width:
        return NeighbourPooling(note="not with covariates: a cell's neighbours may be measured "
                                     "at other covariates")
    validation = model.validation_batches()
    if validation is None or cfg.train.heldout_molecules <= 0:
        return NeighbourPooling(note="needs validation cells with held-out molecules")
    if model.adata.n_obs > MAX_CELLS:
        return NeighbourPooling(note=f"offered up to {MAX_CELLS:,} cells (exact search)")
    counts, _ = model._model_counts(model.adata, check=False)  # checked when given
    latents = torch.from_numpy(model.get_latent())
    scales = CANDIDATE_DISPERSION_SCALES if cfg.train.dispersion_choice == "auto" else (1.0,)
    chosen = choose_pooling(model.network, counts, model._summary.library_size, latents,
                            validation, cfg.train.heldout_molecules, cfg.train.seed,
                            fixed=model.validation_split, scales=scales)
    if cfg.train.verbose:
        print("zipo: the posterior borrows from "
              + (f"{chosen.neighbours} neighbouring cells at weight {chosen.weight:g}"
                 if chosen.active else "no neighbouring cells")
              + (f", with the dispersion x {chosen.dispersion_scale:g}"
                 if chosen.dispersion_scale != 1 else "")
              + " (chosen on the validation cells' held-out molecules)", flush=True)
    return chosen


def pool_for(model, adata) -> Callable[[np.ndarray, torch.Tensor], tuple] | None:
    """``write_predictions``' pool for denoising ``adata`` with the posterior: each cell's
    neighbours among ``adata``'s cells; None when the model does not pool."""
    pooling = model.pooling
    if not pooling.active:
        return None
    if adata.n_obs > MAX_CELLS:
        notice(f"zipo: neighbour pooling is offered up to {MAX_CELLS:,} cells; these "
               f"{adata.n_obs:,} get the plain posterior")
        return None
    if adata.n_obs < 2:
        return None
    counts, summary = model._model_counts(adata)
    pool = self_pool(torch.from_numpy(model.get_latent(adata)), counts, summary.library_size,
                     pooling.neighbours)
    k = min(pooling.neighbours, adata.n_obs - 1)
    used = NeighbourPooling(neighbours=k, weight=pooling.weight)
    return lambda cells, x: pool.pooled(cells, x, used)
