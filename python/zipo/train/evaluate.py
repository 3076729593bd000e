"""Scores of a network on mini-batches of cells: loss and NLL, the no-model baseline, the
rate MSE."""

from __future__ import annotations

import numpy as np
import torch

from ..config import ModelConfig
from ..data.loader import CellBatches
from ..distributions import log_prob
from ..nn.network import ZiPoNetwork
from ..nn.sparse import as_dense
from .distributed import all_reduce_sum
from .loss import first_layer_l1_l2, loss_terms


def evaluate(net: ZiPoNetwork, batches: CellBatches, config: ModelConfig) -> tuple[float, float]:
    """Cell-weighted mean (loss, NLL) over the batches, in eval mode (running BN stats),
    pooled over all processes when training is distributed. Never under mixed precision:
    validation scores the float32 network that denoising uses, as ``ZiPo.evaluate`` does
    after training (the held-out molecules' NLL is float32 too)."""
    net.eval()
    total = nll = 0.0
    n = 0
    module = getattr(net, "module", net)
    with torch.no_grad():
        # The same weights for every batch: their penalty once, not per batch (5-8% of a
        # 256-cell batch's forward from 2,000 to 33,694 genes).
        penalty = first_layer_l1_l2(module.first_layer.weight)
        for x, c, idx, _ in batches.batches():
            if not len(idx):
                continue
            out = net(x, c)
            # No covariates passed, so no alpha_mmd penalty (and the net is in eval mode
            # anyway): validation losses stay comparable across alpha_mmd settings.
            terms = loss_terms(module, out, x, config, first_layer_penalty=penalty)
            total += terms.total.item() * len(idx)
            nll += terms.nll.item() * len(idx)
            n += len(idx)
    total, nll, n = all_reduce_sum([total, nll, float(n)])
    return total / n, nll / n


def baseline_nll(batches: CellBatches, train_gene_totals: np.ndarray) -> float:
    """Poisson NLL per entry of the no-model baseline m_cg = L_c p_g (each cell's observed
    library size times the genes' proportions in the training cells): what training has to
    beat."""
    genes = np.where(train_gene_totals > 0, train_gene_totals, 0.5)  # unseen genes get a rate
    gene_proportions = torch.tensor(genes / genes.sum())
    log_p = torch.log(gene_proportions)
    total, n = 0.0, 0
    for x, _, idx in batches:
        log_m = torch.log(x.sum(dim=1, keepdim=True)) + log_p.to(x.device)
        total += -log_prob(x, log_m).mean().item() * len(idx)
        n += len(idx)
    return total / n


@torch.no_grad()
def rate_mse(net: ZiPoNetwork, batches: CellBatches) -> float:
    """Mean over all entries of (x - l mu)^2, streamed over the mini-batches."""
    net.eval()
    total, n = 0.0, 0
    for x, c, _ in batches:
        out = net(x, c)
        x = as_dense(x)
        total += (torch.exp(out.log_mean) - x).pow(2).sum(dtype=torch.float64).item()
        n += x.numel()
    return total / n
