"""Count likelihoods in log space: Poisson, negative binomial and their zero-inflated forms.

Every function takes ``log_m`` (log of the mean, computed as ``log l + log mu`` by the caller)
rather than ``m``, and no epsilon ever enters a log: zero inflation enters through its logit
``r`` with ``logsigmoid``/``logaddexp``, and the NB ratios through ``softplus`` of log
differences, which stay exact for theta from 1e-3 to 1e6 and means from 1e-8 to 1e6.

Plain Poisson and NB are the zero-inflated formula with ``r -> -inf``; :func:`log_prob` takes
``logit_z=None`` for that case.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Every likelihood by name: (zero_inflated, negative_binomial).
LIKELIHOODS = {"zip": (True, False), "zinb": (True, True), "poisson": (False, False),
               "nb": (False, True)}


def _softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + exp(x)) without the linear cut-off of ``F.softplus`` (exact for large x)."""
    return torch.logaddexp(x, torch.zeros((), dtype=x.dtype, device=x.device))


def poisson_log_pmf(x: torch.Tensor, log_m: torch.Tensor) -> torch.Tensor:
    """log Poisson(x; m) = x log m - m - lgamma(x + 1)."""
    return x * log_m - torch.exp(log_m) - torch.lgamma(x + 1)


def nb_log_pmf(x: torch.Tensor, log_m: torch.Tensor, log_theta: torch.Tensor) -> torch.Tensor:
    """log NB(x; mean m, inverse dispersion theta).

    theta log(theta/(theta+m)) = -theta softplus(log m - log theta) and
    x log(m/(theta+m)) = -x softplus(log theta - log m), so no ratio is formed in linear space.
    """
    theta = torch.exp(log_theta)
    return (
        torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1)
        - theta * _softplus(log_m - log_theta)
        - x * _softplus(log_theta - log_m)
    )


def base_log_pmf(
    x: torch.Tensor, log_m: torch.Tensor, log_theta: torch.Tensor | None = None
) -> torch.Tensor:
    """f(x; m[, theta]): Poisson when ``log_theta`` is None, else NB."""
    return poisson_log_pmf(x, log_m) if log_theta is None else nb_log_pmf(x, log_m, log_theta)


def log_prob(
    x: torch.Tensor,
    log_m: torch.Tensor,
    logit_z: torch.Tensor | None = None,
    log_theta: torch.Tensor | None = None,
) -> torch.Tensor:
    """Element-wise log P(x) of the (zero-inflated) Poisson/NB mixture.

    P(x) = z delta_0(x) + (1 - z) exp f(x), with r = logit z:
      x = 0: log P = logsigmoid(-r) + logaddexp(r, f(0))
      x > 0: log P = logsigmoid(-r) + f(x)
    ``logit_z=None`` is the limit r -> -inf (no zero inflation).
    """
    f = base_log_pmf(x, log_m, log_theta)
    if logit_z is None:
        return f
    return F.logsigmoid(-logit_z) + torch.where(x == 0, torch.logaddexp(logit_z, f), f)


def likelihood_flags(likelihood: str) -> tuple[bool, bool]:
    """(zero_inflated, negative_binomial) for a likelihood name."""
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {tuple(LIKELIHOODS)}, got {likelihood!r}")
    return LIKELIHOODS[likelihood]
