"""Validation on molecules the model has not seen (molecular cross-validation).

A validation cell's counts are split by binomial thinning, ``x' ~ Binomial(x, 1 - q)`` and
``x'' = x - x'``; the network sees ``x'`` and its rate, rescaled by ``q / (1 - q)``, is scored
against ``x''`` (Batson, Royer & Webber 2019). A network that copies each cell's noise through
to its output reconstructs ``x`` well but predicts ``x''`` badly, so this figure, unlike the
NLL of whole held-out cells, tells denoising from copying.
"""

from __future__ import annotations

import math

import torch

from ..data.loader import CellBatches
from ..nn.sparse import as_dense
from .distributed import all_reduce_sum, world


def split_seed(seed: int) -> int:
    """The seed of this process's molecule splits: ``seed`` in a single process, and a stream of
    its own in each process of a distributed run (rank 0's is the single-process one)."""
    return seed + 1_000_003 * world()[0]


def binomial_split(x: torch.Tensor, heldout: float, generator: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held out) counts of a dense or sparse CSR batch; the kept part keeps ``x``'s
    layout (the sparse first layer reads it), the held-out part is dense."""
    values = x.values() if x.layout == torch.sparse_csr else x
    counts = values.float()
    kept_values = torch.binomial(counts, torch.full_like(counts, 1 - heldout),
                                 generator=generator).to(values.dtype)
    if x.layout == torch.sparse_csr:
        kept = torch.sparse_csr_tensor(x.crow_indices(), x.col_indices(), kept_values, x.shape)
    else:
        kept = kept_values
    return kept, as_dense(x) - as_dense(kept)


@torch.no_grad()
def heldout_molecule_nll(net: torch.nn.Module, batches: CellBatches, heldout: float,
                         seed: int) -> float:
    """Poisson NLL per entry of the held-out molecules ``x''`` given the network's rate for the
    kept ones, rescaled; the same split every call (``seed``), pooled over processes."""
    net.eval()
    # One stream per process (each splits its own share of the validation cells).
    generator = torch.Generator(device=batches.device).manual_seed(split_seed(seed))
    total, n = 0.0, 0.0
    for x, c, idx, _ in batches.batches():
        if not len(idx):
            continue
        kept, target = binomial_split(x, heldout, generator)
        out = net(kept, c)
        log_rate = out.log_mean.float() + math.log(heldout / (1 - heldout))
        nll = torch.exp(log_rate) - target * log_rate + torch.lgamma(target + 1)
        total += nll.sum(dtype=torch.float64).item()
        n += target.numel()
    total, n = all_reduce_sum([total, n])
    return total / n
