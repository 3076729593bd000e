"""Validation on molecules the model has not seen (molecular cross-validation).

A validation cell's counts are split by binomial thinning, ``x' ~ Binomial(x, 1 - q)`` and
``x'' = x - x'``; the network sees ``x'`` and its rate, rescaled by ``q / (1 - q)``, is scored
against ``x''`` (Batson, Royer & Webber 2019). A network that copies each cell's noise through
to its output reconstructs ``x`` well but predicts ``x''`` badly, so this figure, unlike the
NLL of whole held-out cells, tells denoising from copying.

Under NB/ZINB the rate given the kept counts (``denoise(expectation="posterior")``) is scored
as well, so a choice between likelihoods and outputs can be made on validation cells.
"""

from __future__ import annotations

import math

import torch

from ..data.loader import CellBatches
from ..distributions import poisson_log_pmf, posterior_rate
from ..nn.sparse import as_dense
from .distributed import all_reduce_sum, world


def split_seed(seed: int) -> int:
    """The seed of this process's molecule splits: ``seed`` in a single process, and a stream of
    its own in each process of a distributed run (rank 0's is the single-process one)."""
    return seed + 1_000_003 * world()[0]


def binomial_split(x: torch.Tensor, heldout: float, generator: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held out) counts of a dense or sparse CSR batch; the kept part keeps ``x``'s
    layout (the sparse first layer reads it), the held-out part is dense. Only the non-zero
    counts are drawn (in row-major order in both layouts, so both split alike)."""
    sparse = x.layout == torch.sparse_csr
    nonzero = None if sparse else torch.nonzero(x, as_tuple=True)
    values = x.values() if sparse else x[nonzero]
    counts = values.float()
    kept_values = torch.binomial(counts, torch.full_like(counts, 1 - heldout),
                                 generator=generator).to(values.dtype)
    held_values = values - kept_values
    if sparse:
        def like_x(v):
            return torch.sparse_csr_tensor(x.crow_indices(), x.col_indices(), v, x.shape)
        return like_x(kept_values), like_x(held_values).to_dense()
    return (torch.zeros_like(x).index_put_(nonzero, kept_values),
            torch.zeros_like(x).index_put_(nonzero, held_values))


def _poisson_nll_sum(log_rate: torch.Tensor, target: torch.Tensor) -> float:
    return -poisson_log_pmf(target, log_rate).sum(dtype=torch.float64).item()


@torch.no_grad()
def heldout_molecule_nll(net: torch.nn.Module, batches: CellBatches, heldout: float,
                         seed: int) -> dict[str, float]:
    """Poisson NLL per entry of the held-out molecules ``x''`` given the network's rate for the
    kept ones, rescaled (``validation_heldout_nll``), and under NB/ZINB also given the rate
    updated by the kept counts (``validation_heldout_nll_posterior``); the same split every
    call (``seed``), pooled over processes."""
    net.eval()
    # One stream per process (each splits its own share of the validation cells).
    generator = torch.Generator(device=batches.device).manual_seed(split_seed(seed))
    scale = math.log(heldout / (1 - heldout))
    rate_total, posterior_total, n, negative_binomial = 0.0, 0.0, 0.0, False
    for x, c, idx, _ in batches.batches():
        if not len(idx):
            continue
        kept, target = binomial_split(x, heldout, generator)
        out = net(kept, c)
        log_mean = out.log_mean.float()
        rate_total += _poisson_nll_sum(log_mean + scale, target)
        if out.log_theta is not None:
            negative_binomial = True
            logit_z = out.logit_z.float() if out.logit_z is not None else None
            posterior = posterior_rate(as_dense(kept).float(), log_mean, logit_z,
                                       out.log_theta.float())
            posterior_total += _poisson_nll_sum(torch.log(posterior) + scale, target)
        n += target.numel()
    # pooled, so every process reports the same columns even if one had no validation cells
    rate_total, posterior_total, n, negative_binomial = all_reduce_sum(
        [rate_total, posterior_total, n, float(negative_binomial)])
    scores = {"validation_heldout_nll": rate_total / n}
    if negative_binomial:
        scores["validation_heldout_nll_posterior"] = posterior_total / n
    return scores
