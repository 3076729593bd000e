"""The loss, on one page.

The NLL is the mean over cells and genes of -log P(x_cg) ("per matrix entry"), so the
regularisers, which are means too, carry the weights the paper tuned (alpha_z = alpha_w = 0.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import ModelConfig
from ..distributions import log_prob
from ..nn.network import NetworkOutput, ZiPoNetwork
from ..nn.sparse import as_dense


@dataclass
class LossTerms:
    total: torch.Tensor
    nll: torch.Tensor


class _L1OverL2(torch.autograd.Function):
    """mean_i( mean_g |W_ig| / sqrt(mean_g W_ig^2) ) with its gradient written out.

    Autograd's version keeps |W|, W^2 and their quotients as genes x width temporaries and
    walks them again backwards: ~1.4 s per step at 18k genes x 2,048 on one thread, more than
    the first layer itself. Here forward is two fused row norms and backward three passes:
    d/dW_ig = (sign(W_ig) / l2_i - l1_i W_ig / l2_i^3) / (genes * width), with l1, l2 the
    row means above; rows that are all zero (pruned neurons) get 0."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor) -> torch.Tensor:
        n_genes = weight.shape[1]
        l1 = torch.linalg.vector_norm(weight, 1, dim=1) / n_genes
        l2 = torch.linalg.vector_norm(weight, 2, dim=1) / math.sqrt(n_genes)
        alive = l2 > 0
        safe_l2 = torch.where(alive, l2, torch.ones_like(l2))
        ctx.save_for_backward(weight, l1, safe_l2, alive)
        return torch.where(alive, l1 / safe_l2, torch.zeros_like(l2)).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, l1, l2, alive = ctx.saved_tensors
        width, n_genes = weight.shape
        scale = grad * alive / (width * n_genes)
        out = torch.sign(weight).mul_((scale / l2)[:, None])
        return out.addcmul_(weight, (scale * l1 / l2.pow(3))[:, None], value=-1)


def first_layer_l1_l2(weight: torch.Tensor) -> torch.Tensor:
    """mean_i( mean_g |W_ig| / sqrt(mean_g W_ig^2) ): scale-invariant, so batch norm after the
    activation cannot undo it by rescaling. Neurons whose weights are all zero add 0."""
    return _L1OverL2.apply(weight)


MMD_SCALES = (0.25, 1.0, 4.0)  # RBF bandwidths, times the median squared distance


def mmd2(latent: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """Sum over the columns (categories) of ``onehot`` of the squared MMD between the latents of
    that category's cells and those of the other cells, with a sum of RBF kernels at
    ``MMD_SCALES`` x the median squared distance in the batch (not differentiated, so the
    penalty cannot shrink by inflating the latents' scale). Categories with fewer than 2 cells
    (or fewer than 2 others) in the batch add 0."""
    d = torch.cdist(latent, latent).pow(2)
    scale = d.detach().median().clamp_min(1e-6)
    k = sum(torch.exp(-d / (scale * s)) for s in MMD_SCALES)
    total = latent.new_zeros(())
    for j in range(onehot.shape[1]):
        a = onehot[:, j] > 0.5
        if a.sum() >= 2 and (~a).sum() >= 2:
            total = total + k[a][:, a].mean() + k[~a][:, ~a].mean() - 2 * k[a][:, ~a].mean()
    return total


def loss_terms(
    net: ZiPoNetwork, out: NetworkOutput, x: torch.Tensor, config: ModelConfig,
    covariates: torch.Tensor | None = None, mmd_groups: list[tuple[int, int]] | None = None,
    rate_scale: float = 1.0, first_layer_penalty: torch.Tensor | None = None,
) -> LossTerms:
    """NLL + alpha_z E[z^2] + alpha_w L1/L2(W1) [+ (alpha_theta E[theta^2] + w E[(l mu - x)^2]) / genes]
    [+ alpha_mmd sum_groups MMD^2(latents by category)].

    The MMD term is added only in training mode and when ``covariates`` (the batch's encoded
    covariates) and ``mmd_groups`` (column ranges [start, stop) of the categorical covariates
    to mix over) are given. ``rate_scale`` multiplies the rate: ``x`` are then molecules held
    out from what the network saw (``train.objective_heldout``). ``first_layer_penalty`` is
    L1/L2(W1) when the caller has it for these weights (evaluation computes it once for all
    its batches). Computed in float32 whatever precision the network ran in."""
    x = as_dense(x)
    out = out.float()
    log_m = out.log_mean + math.log(rate_scale) if rate_scale != 1.0 else out.log_mean
    nll = -log_prob(x, log_m, out.logit_z, out.log_theta).mean()
    if first_layer_penalty is None:
        first_layer_penalty = first_layer_l1_l2(net.first_layer.weight)
    total = nll + config.alpha_w * first_layer_penalty
    if out.logit_z is not None:
        total = total + config.alpha_z * torch.sigmoid(out.logit_z).pow(2).mean()
    if out.log_theta is not None:
        # method.md weighs these two NB-only terms against the NLL of a whole cell (a sum over
        # genes); ours is a mean per entry, so they are divided by the number of genes. At full
        # weight they swamped it: on PBMC 4k (2,000 genes) ZINB reached a validation NLL of
        # 1.12, barely below the no-model 1.19, against 0.96 when scaled (ZIP: 0.98).
        per_cell_scale = 1.0 / x.shape[1]
        theta_penalty = config.alpha_theta * torch.exp(2 * out.log_theta).mean()
        rate_mse = config.mse_weight * (torch.exp(log_m) - x).pow(2).mean()
        total = total + per_cell_scale * (theta_penalty + rate_mse)
    if out.latent_log_var is not None:
        # KL(N(U, exp(log_var)) || N(0, I)) of a cell, weighed against a whole cell's NLL as
        # in an ELBO (alpha_kl = 1), hence the division by the number of genes.
        kl = 0.5 * (out.latent.pow(2) + out.latent_log_var.exp() - 1 - out.latent_log_var)
        total = total + config.alpha_kl * kl.sum(dim=1).mean() / x.shape[1]
    if config.alpha_mmd > 0 and mmd_groups and covariates is not None and net.training:
        penalty = sum(mmd2(out.latent, covariates[:, a:b]) for a, b in mmd_groups)
        total = total + config.alpha_mmd * penalty
    return LossTerms(total=total, nll=nll)
