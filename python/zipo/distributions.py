"""Count likelihoods in log space: Poisson, negative binomial and their zero-inflated forms.

Every function takes ``log_m`` (log of the mean, computed as ``log l + log mu`` by the caller)
rather than ``m``, and no epsilon ever enters a log: zero inflation enters through its logit
``r`` with ``logsigmoid``/``logaddexp``, and the NB ratios through ``softplus`` of log
differences, which stay exact for theta from 1e-3 to 1e6 and means from 1e-8 to 1e6.

Plain Poisson and NB are the zero-inflated formula with ``r -> -inf``; :func:`log_prob` takes
``logit_z=None`` for that case.

:func:`expected_log1p` is the expectation of log-normalised expression under these
distributions (what ``ZiPo.denoise(expectation="lognorm")`` returns).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .option_types import LIKELIHOODS, one_of


def _softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + exp(x)) without the linear cut-off of ``F.softplus`` (exact for large x)."""
    return torch.logaddexp(x, torch.zeros((), dtype=x.dtype, device=x.device))


def _log_prob_and_grads(x, log_m, logit_z, log_theta, with_grads: bool):
    """log P(x) of :func:`log_prob` and, with ``with_grads``, its derivatives by log m, logit z
    and log theta (None where a parameter is absent), all of the broadcast shape.

    Terms that are 0 at x = 0 (lgamma, x log m, x log(m / (theta + m)) and their derivatives)
    are computed on the non-zero counts only (held-out molecules are ~95% zeros on PBMC 4k), and
    the rest in as few passes over the entries as the formulas allow.
    With theta = e^b, m = e^a, d = a - b, s = softplus(d), p = sigmoid(d):
      NB:      f = lgamma(x + theta) - lgamma(theta) - lgamma(x + 1) - theta s - x softplus(-d)
               df/da = -theta p + x (1 - p)
               df/db = theta (p - s) - x (1 - p) + theta (digamma(x + theta) - digamma(theta))
      Poisson: f = x a - m - lgamma(x + 1),  df/da = x - m
      zero inflation, r = logit z, w = sigmoid(r - f(0)) (the chance a zero is structural):
               log P = (logaddexp(r, f(0)) if x = 0 else f) - softplus(r)
               dlogP/dr = w [x = 0] - sigmoid(r);  dlogP/d(a, b) = df/d(a, b) (1 - w [x = 0])
    """
    params = [t for t in (log_m, logit_z, log_theta) if t is not None]
    shape = torch.broadcast_shapes(x.shape, *(t.shape for t in params))
    # Flat indices of the non-zeros, found once; take/put_ read the (possibly broadcast)
    # tensors in row-major order.
    nonzero = torch.nonzero(x.expand(shape).reshape(-1)).squeeze(1)
    xs = torch.take(x.expand(shape), nonzero)
    d_log_theta = None
    if log_theta is None:
        log_f0 = -torch.exp(log_m).expand(shape)  # log f(0) = -m
        f_nonzero = xs * torch.take(log_m.expand(shape), nonzero) - torch.lgamma(xs + 1)
        d_log_m = log_f0.clone().put_(nonzero, xs, accumulate=True) if with_grads else None
    else:
        theta = torch.exp(log_theta).expand(shape)
        d = (log_m - log_theta).expand(shape)
        s = _softplus(d)
        theta_s = theta * s
        log_f0 = theta_s.neg()
        ts, ds = torch.take(theta, nonzero), torch.take(d, nonzero)
        f_nonzero = (torch.lgamma(xs + ts) - torch.lgamma(ts) - torch.lgamma(xs + 1)
                     - xs * _softplus(-ds))
        if with_grads:
            theta_p = theta * torch.sigmoid(d)
            x_q = xs * torch.sigmoid(-ds)  # x (1 - p) on the non-zeros
            d_log_m = theta_p.neg().put_(nonzero, x_q, accumulate=True)
            d_log_theta = theta_p.sub_(theta_s).put_(
                nonzero, ts * (torch.digamma(xs + ts) - torch.digamma(ts)) - x_q, accumulate=True)
    if logit_z is None:
        value = log_f0.clone().put_(nonzero, f_nonzero, accumulate=True)
        return value, (d_log_m, None, d_log_theta) if with_grads else None
    r = logit_z.expand(shape)
    value = torch.logaddexp(r, log_f0)
    value.put_(nonzero, f_nonzero + torch.take(log_f0, nonzero)).sub_(_softplus(r))
    if not with_grads:
        return value, None
    w = torch.sigmoid(r - log_f0).put_(nonzero, torch.zeros_like(xs))
    d_logit_z = w - torch.sigmoid(r)
    kept = torch.sub(1, w)
    d_log_m.mul_(kept)
    if d_log_theta is not None:
        d_log_theta.mul_(kept)
    return value, (d_log_m, d_logit_z, d_log_theta)


class _LogProb(torch.autograd.Function):
    """:func:`log_prob` with its first derivatives written out. Autograd's graph of the same
    formula walked ~100 passes over cells x genes (softplus, logaddexp, where and lgamma each
    saved and differentiated). At PBMC 4k's 18,368 genes this takes the ZINB likelihood's forward
    and backward from 136 ms (the earlier formula) to 77-82 ms and a training step from 0.51 to
    0.40 s, 2 threads (``python -m benchmarks.speed --likelihood``).
    Not twice differentiable; ``x`` gets no gradient."""

    @staticmethod
    def forward(ctx, x, log_m, logit_z, log_theta):
        value, grads = _log_prob_and_grads(x, log_m, logit_z, log_theta, with_grads=True)
        ctx.shapes = [None if t is None else t.shape for t in (log_m, logit_z, log_theta)]
        ctx.save_for_backward(*(g for g in grads if g is not None))
        ctx.present = [g is not None for g in grads]
        return value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        saved = iter(ctx.saved_tensors)
        out = [(next(saved) * grad).sum_to_size(shape) if present else None
               for present, shape in zip(ctx.present, ctx.shapes)]
        return (None, *out)


def log_prob(
    x: torch.Tensor,
    log_m: torch.Tensor,
    logit_z: torch.Tensor | None = None,
    log_theta: torch.Tensor | None = None,
) -> torch.Tensor:
    """Element-wise log P(x) of the (zero-inflated) Poisson/NB mixture.

    P(x) = z delta_0(x) + (1 - z) exp f(x), with r = logit z and f the Poisson (``log_theta``
    None) or NB log-pmf::

      x = 0: log P = logsigmoid(-r) + logaddexp(r, f(0))
      x > 0: log P = logsigmoid(-r) + f(x)

    ``logit_z=None`` is the limit r -> -inf (no zero inflation). The arguments broadcast.
    """
    params = [t for t in (log_m, logit_z, log_theta) if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in params):
        return _LogProb.apply(x, log_m, logit_z, log_theta)
    return _log_prob_and_grads(x, log_m, logit_z, log_theta, with_grads=False)[0]


def poisson_log_pmf(x: torch.Tensor, log_m: torch.Tensor) -> torch.Tensor:
    """log Poisson(x; m) = x log m - m - lgamma(x + 1)."""
    return log_prob(x, log_m)


def nb_log_pmf(x: torch.Tensor, log_m: torch.Tensor, log_theta: torch.Tensor) -> torch.Tensor:
    """log NB(x; mean m, inverse dispersion theta).

    theta log(theta/(theta+m)) = -theta softplus(log m - log theta) and
    x log(m/(theta+m)) = -x softplus(log theta - log m), so no ratio is formed in linear space.
    """
    return log_prob(x, log_m, None, log_theta)


def likelihood_flags(likelihood: str) -> tuple[bool, bool]:
    """(zero_inflated, negative_binomial) for a likelihood name."""
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {one_of(LIKELIHOODS)}, got {likelihood!r}")
    return LIKELIHOODS[likelihood]


# Trapezoid rule in u = log t for expected_log1p's integral: step 0.5 from e^-30 to e^3.5.
# The integrand is analytic in the strip |Im u| < pi/2 and decays at both ends, so the error
# falls like exp(-2 pi (pi/2) / step): step 0.5 already reaches the float64 brute force to 1e-8,
# 0.6 to 2e-7 and 1.0 only to 1e-4. Below e^-30 the integrand is ~scale * m * t (left out: an
# absolute error of scale * m * 1e-13); above e^3.5 it is below exp(-e^3.5) = 1e-14.
_LOG_T_STEP = 0.5
_LOG_T = -30.0 + _LOG_T_STEP * np.arange(68)
_LOG_T_WEIGHTS = _LOG_T_STEP * np.exp(-np.exp(_LOG_T))


@torch.no_grad()
def expected_log1p(log_m: torch.Tensor, logit_z: torch.Tensor | None = None,
                   log_theta: torch.Tensor | None = None,
                   scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """E[log1p(scale * X)] for X ~ the (zero-inflated) Poisson/NB of :func:`log_prob`.

    ``scale`` broadcasts against ``log_m`` (a float, or cells x 1 for one factor per cell, such
    as ``target_sum / library``). No gradient (it is an output, not a loss).

    Frullani's integral ``log(1 + a) = int_0^inf e^-t (1 - e^(-a t)) / t dt`` turns the
    expectation into one over the probability generating function G(w) = E[w^X], known in
    closed form, so no pmf is summed and no tail is cut off::

        E[log1p(s X)] = (1 - z) int_0^inf e^-t (1 - G(e^(-s t))) / t dt,
        1 - G(e^-y) = -expm1(-m (1 - e^-y))                       Poisson
                    = -expm1(-theta log1p(m / theta (1 - e^-y)))  NB

    (zeros contribute nothing, hence the factor 1 - z). With t = e^u the integrand is smooth and
    decays at both ends, and the trapezoid rule on a fixed grid of 68 nodes in u (step 0.5) is
    exponentially accurate for every m, theta and scale at once: heavy NB tails (small theta)
    need no special case. The cost is 68 passes over the entries (3 element-wise operations
    each for Poisson, 5 for NB), accumulated in place: no cells x genes x nodes tensor.

    Accuracy, against a brute-force float64 sum of the pmf over k up to where the tail is below
    1e-15, on m = 1e-4..1e3, theta = 1e-3..1e4 (and Poisson), scale = 1e-3..1e2: float64 inputs
    agree to 1e-8 absolute and 5e-8 relative; float32 inputs (what the network gives) to 1.1e-6
    absolute and 1e-6 relative on values up to 11.5, i.e. float32 rounding
    (tests/test_likelihoods.py checks both).
    The truncation of the integral adds at most scale * m * 1e-13 (1e-9 for scale * m = 1e4,
    the largest that ``target_sum=1e4`` produces).

    By Jensen's inequality the result is below ``log1p(scale * (1 - z) * m)``; for small m it is
    far below (Poisson m = 0.5, scale = 10: 1.01 against log1p(5) = 1.79), which is why it is computed.
    """
    m = torch.exp(log_m)
    scale = torch.as_tensor(scale, dtype=torch.float64, device=log_m.device)
    shape = torch.broadcast_shapes(m.shape, scale.shape)
    if log_theta is not None:
        ratio = torch.exp(log_m - log_theta)  # m / theta, formed in log space
        neg_theta = -torch.exp(log_theta)
    acc = torch.zeros(shape, dtype=m.dtype, device=m.device)
    buf = torch.empty_like(acc)
    for u, weight in zip(_LOG_T, _LOG_T_WEIGHTS):
        # 1 - e^(-s t) per cell, in float64: the chance that one molecule is seen at "rate" s t
        c = (-torch.expm1(-scale * math.exp(u))).to(m.dtype)
        if log_theta is None:
            torch.mul(m, -c, out=buf)  # log G = -m (1 - e^(-s t))
        else:
            torch.mul(ratio, c, out=buf).log1p_().mul_(neg_theta)
        acc.sub_(buf.expm1_(), alpha=float(weight))  # += weight * (1 - G)
    if logit_z is not None:
        acc.mul_(torch.sigmoid(-logit_z))
    return acc


@torch.no_grad()
def posterior_rate(x: torch.Tensor, log_m: torch.Tensor, logit_z: torch.Tensor | None = None,
                   log_theta: torch.Tensor | None = None,
                   pooled: tuple[torch.Tensor, torch.Tensor] | None = None,
                   dispersion_scale: float = 1.0) -> torch.Tensor:
    """E[rate | x]: the fitted rate m updated by the cell's own count x (empirical Bayes, as
    SAVER denoises).

    Under NB the cell's rate for a gene is Gamma(theta, theta / m) around the network's m, and
    a Poisson count x of it moves the mean to m (x + theta) / (m + theta): a count the model
    did not expect is kept in part, the more the larger theta's noise (small theta). Under zero
    inflation a zero is a dropout (rate still m) with probability
    pi / (pi + (1 - pi) NB(0; m, theta)) = sigmoid(r - log NB(0)), else a true zero. Poisson
    and ZIP have no such per-cell noise: their rate given the cell's state is m whatever x is.

    ``pooled`` = (w S_x, w S_l): weighted counts of neighbouring cells and their exposure in
    units of this cell's library (:mod:`zipo.neighbours`), further Poisson draws of the same
    rate, which move the mean to (theta + x + w S_x) / (theta / m + 1 + w S_l).

    ``dispersion_scale`` c multiplies theta (:mod:`zipo.neighbours` may choose one on
    validation): c > 1 shrinks the count further towards m.
    """
    m = torch.exp(log_m)
    if log_theta is None:
        return m
    if dispersion_scale != 1:
        log_theta = log_theta + math.log(dispersion_scale)
    theta = torch.exp(log_theta)
    pooled_x, exposure = (0.0, 0.0) if pooled is None else pooled
    shrunk = (x + theta + pooled_x) * m / (m + theta + exposure * m)
    if logit_z is None:
        return shrunk
    log_nb_zero = -theta * _softplus(log_m - log_theta)
    dropout = torch.sigmoid(logit_z - log_nb_zero)
    # a dropout zero says nothing of the rate: only the neighbours update it
    prior = m if pooled is None else (theta + pooled_x) * m / (theta + exposure * m)
    return torch.where(x > 0, shrunk, dropout * prior + (1 - dropout) * shrunk)
