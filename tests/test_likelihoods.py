"""The count likelihoods against independent references, in float64.

Moderate parameters are checked against scipy.stats (poisson, nbinom with n=theta and
p=theta/(theta+m)). At the extremes (m=1e-8 or 1e6, x=1e4, theta=1e-3 or 1e6, |logit z| up to
1e3) scipy's nbinom loses digits (it forms p and 1-p in linear space, e.g. 1-p = 1e-14 at
theta=1e6, m=1e-8), so there the reference is evaluated with mpmath at 50 significant digits
from exactly the same float64 inputs (m = exp(log_m), theta = exp(log_theta)).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import stats

from zipo.distributions import (
    expected_log1p, likelihood_flags, log_prob, nb_log_pmf, poisson_log_pmf,
    posterior_rate,
)

mpmath = pytest.importorskip("mpmath")
mpmath.mp.dps = 50

RTOL = 1e-6
# A log-probability near 0 (P close to 1) has no meaningful relative accuracy: an absolute
# error e in log P is a relative error e in P itself. Only there does this floor matter.
ATOL = 1e-14

EXTREME_M = [1e-8, 1e-3, 1.0, 37.5, 1e4, 1e6]
EXTREME_X = [0.0, 1.0, 3.0, 100.0, 1e4]
EXTREME_THETA = [1e-3, 0.5, 10.0, 1e6]
EXTREME_LOGIT = [-1e3, -50.0, -5.0, 0.0, 5.0, 50.0, 1e3]


def t64(values) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float64))


# --------------------------------------------------------------------------- references
def mp_poisson(x: float, log_m: float):
    m = mpmath.exp(mpmath.mpf(log_m))
    x = mpmath.mpf(x)
    return x * mpmath.log(m) - m - mpmath.loggamma(x + 1)


def mp_nb(x: float, log_m: float, log_theta: float):
    m = mpmath.exp(mpmath.mpf(log_m))
    th = mpmath.exp(mpmath.mpf(log_theta))
    x = mpmath.mpf(x)
    return (
        mpmath.loggamma(x + th) - mpmath.loggamma(th) - mpmath.loggamma(x + 1)
        + th * mpmath.log(th / (th + m)) + x * mpmath.log(m / (th + m))
    )


def mp_zero_inflated(x: float, log_f, logit: float):
    """log(z [x==0] + (1-z) exp f) computed by hand from the mixture definition."""
    z = 1 / (1 + mpmath.exp(-mpmath.mpf(logit)))
    one_minus_z = 1 / (1 + mpmath.exp(mpmath.mpf(logit)))
    return mpmath.log((z if x == 0 else 0) + one_minus_z * mpmath.exp(log_f))


def assert_close(actual: torch.Tensor, expected, rtol=RTOL, atol=ATOL):
    actual = actual.detach().numpy()
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.dtype == np.float64
    assert np.all(np.isfinite(actual)), actual
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------- moderate vs scipy
@pytest.fixture(scope="module")
def moderate_grid():
    rng = np.random.default_rng(0)
    x = rng.poisson(rng.gamma(0.5, 6.0, size=400)).astype(np.float64)
    x[:40] = 0.0
    m = rng.gamma(1.0, 5.0, size=400) + 0.05
    theta = np.exp(rng.uniform(np.log(0.1), np.log(100.0), size=400))
    logit = rng.normal(0.0, 2.0, size=400)
    return x, m, theta, logit


def test_poisson_matches_scipy(moderate_grid):
    x, m, _, _ = moderate_grid
    got = poisson_log_pmf(t64(x), t64(np.log(m)))
    assert_close(got, stats.poisson.logpmf(x, m))


def test_nb_matches_scipy(moderate_grid):
    x, m, theta, _ = moderate_grid
    got = nb_log_pmf(t64(x), t64(np.log(m)), t64(np.log(theta)))
    assert_close(got, stats.nbinom.logpmf(x, theta, theta / (theta + m)))


@pytest.mark.parametrize("nb", [False, True], ids=["zip", "zinb"])
def test_zero_inflated_matches_hand_mixture(moderate_grid, nb):
    x, m, theta, logit = moderate_grid
    pmf = (stats.nbinom.pmf(x, theta, theta / (theta + m)) if nb else stats.poisson.pmf(x, m))
    z = 1.0 / (1.0 + np.exp(-logit))
    expected = np.log(z * (x == 0) + (1.0 - z) * pmf)
    got = log_prob(t64(x), t64(np.log(m)), t64(logit), t64(np.log(theta)) if nb else None)
    assert_close(got, expected)


def test_zero_inflation_raises_probability_of_zeros_only(moderate_grid):
    """Zero inflation moves mass to zero: log P(0) goes up and log P(x>0) goes down by exactly
    log(1 - z)."""
    x, m, _, logit = moderate_grid
    plain = log_prob(t64(x), t64(np.log(m))).numpy()
    zi = log_prob(t64(x), t64(np.log(m)), t64(logit)).numpy()
    zero = x == 0
    assert np.all(zi[zero] > plain[zero])
    np.testing.assert_allclose(zi[~zero] - plain[~zero], -np.logaddexp(0, logit[~zero]), rtol=1e-12)


# --------------------------------------------------------------------------- extremes vs mpmath
def test_poisson_extremes_match_mpmath():
    cases = list(itertools.product(EXTREME_X, EXTREME_M))
    x = np.array([c[0] for c in cases])
    log_m = np.log([c[1] for c in cases])
    got = poisson_log_pmf(t64(x), t64(log_m))
    expected = [float(mp_poisson(xi, lm)) for xi, lm in zip(x, log_m)]
    assert_close(got, expected)


def test_nb_extremes_match_mpmath():
    cases = list(itertools.product(EXTREME_X, EXTREME_M, EXTREME_THETA))
    x = np.array([c[0] for c in cases])
    log_m = np.log([c[1] for c in cases])
    log_theta = np.log([c[2] for c in cases])
    got = nb_log_pmf(t64(x), t64(log_m), t64(log_theta))
    expected = [float(mp_nb(*args)) for args in zip(x, log_m, log_theta)]
    assert_close(got, expected)


def test_scipy_is_the_inaccurate_one_at_the_extremes():
    """Justifies the mpmath references: at theta=1e6, m=1e-8, x=3 scipy's nbinom is off, while
    zipo agrees with mpmath."""
    x, m, theta = 3.0, 1e-8, 1e6
    log_m, log_theta = np.log(m), np.log(theta)
    exact = float(mp_nb(x, log_m, log_theta))
    ours = nb_log_pmf(t64([x]), t64([log_m]), t64([log_theta])).item()
    theirs = stats.nbinom.logpmf(x, np.exp(log_theta), np.exp(log_theta) / (np.exp(log_theta) + np.exp(log_m)))
    assert abs(ours - exact) <= RTOL * abs(exact)
    assert not abs(theirs - exact) <= RTOL * abs(exact)


@pytest.mark.parametrize("nb", [False, True], ids=["zip", "zinb"])
def test_zero_inflated_extremes_match_mpmath(nb):
    thetas = EXTREME_THETA if nb else [None]
    cases = list(itertools.product(EXTREME_X, EXTREME_M, thetas, EXTREME_LOGIT))
    x = np.array([c[0] for c in cases])
    log_m = np.log([c[1] for c in cases])
    log_theta = np.log([c[2] for c in cases]) if nb else None
    logit = np.array([c[3] for c in cases])
    got = log_prob(t64(x), t64(log_m), t64(logit), None if log_theta is None else t64(log_theta))
    expected = []
    for i, (xi, lm, r) in enumerate(zip(x, log_m, logit)):
        f = mp_nb(xi, lm, log_theta[i]) if nb else mp_poisson(xi, lm)
        expected.append(float(mp_zero_inflated(xi, f, r)))
    assert_close(got, expected)


@pytest.mark.parametrize("nb", [False, True], ids=["poisson", "nb"])
def test_plain_is_zero_inflated_with_logit_minus_inf(moderate_grid, nb):
    x, m, theta, _ = moderate_grid
    # include the extremes as well
    x = np.concatenate([x, [0.0, 0.0, 1e4, 1e4, 5.0]])
    m = np.concatenate([m, [1e-8, 1e6, 1e4, 1e-8, 1e6]])
    theta = np.concatenate([theta, [1e-3, 1e6, 1e6, 1e-3, 1.0]])
    log_theta = t64(np.log(theta)) if nb else None
    plain = log_prob(t64(x), t64(np.log(m)), None, log_theta)
    limit = log_prob(t64(x), t64(np.log(m)), torch.full((len(x),), -torch.inf, dtype=torch.float64),
                     log_theta)
    assert torch.all(torch.isfinite(limit))
    torch.testing.assert_close(limit, plain, rtol=0, atol=0)


def test_log_prob_is_a_normalised_distribution():
    """sum_x P(x) = 1 for ZIP and ZINB (over a range that holds all the mass)."""
    x = t64(np.arange(0, 400))
    for log_theta in (None, t64(np.log(0.7))):
        total = torch.logsumexp(log_prob(x, t64(np.log(12.0)), t64(1.3), log_theta), dim=0)
        assert abs(total.item()) < 1e-9


# --------------------------------------------------------------------------- gradients
def _extreme_inputs(nb: bool):
    cases = list(itertools.product(EXTREME_X, EXTREME_M, EXTREME_THETA if nb else [1.0], EXTREME_LOGIT))
    x = t64([c[0] for c in cases])
    log_m = t64(np.log([c[1] for c in cases])).requires_grad_()
    log_theta = t64(np.log([c[2] for c in cases])).requires_grad_()
    logit = t64([c[3] for c in cases]).requires_grad_()
    return x, log_m, log_theta, logit


@pytest.mark.parametrize("nb", [False, True], ids=["zip", "zinb"])
def test_gradients_finite_at_extremes(nb):
    x, log_m, log_theta, logit = _extreme_inputs(nb)
    lp = log_prob(x, log_m, logit, log_theta if nb else None)
    assert torch.all(torch.isfinite(lp))
    lp.sum().backward()
    grads = {"log_m": log_m.grad, "logit_z": logit.grad}
    if nb:
        grads["log_theta"] = log_theta.grad
    for name, g in grads.items():
        assert g is not None, name
        bad = ~torch.isfinite(g)
        assert not bad.any(), f"non-finite d/d{name} at x={x[bad][:5]}, log_m={log_m[bad][:5]}"


@pytest.mark.parametrize("nb", [False, True], ids=["poisson", "nb"])
def test_plain_gradients_finite_at_extremes(nb):
    x, log_m, log_theta, _ = _extreme_inputs(nb)
    lp = log_prob(x, log_m, None, log_theta if nb else None)
    lp.sum().backward()
    assert torch.all(torch.isfinite(log_m.grad))
    if nb:
        assert torch.all(torch.isfinite(log_theta.grad))


def test_gradients_are_correct():
    """Analytic gradients where they are simple, and torch.autograd.gradcheck elsewhere."""
    x = t64([0.0, 0.0, 1.0, 7.0, 1e4, 3.0])
    log_m = t64(np.log([1e-8, 2.0, 1e6, 7.5, 1e4, 0.3])).requires_grad_()
    # Poisson: d/dlog m [x log m - m] = x - m
    poisson_log_pmf(x, log_m).sum().backward()
    torch.testing.assert_close(log_m.grad, x - torch.exp(log_m.detach()), rtol=1e-12, atol=1e-12)
    # ZIP at x = 0: d/dr log(z + (1-z) e^f) = z(1-z)(1 - e^f) / (z + (1-z) e^f)
    r = t64([-3.0, 0.0, 2.0]).requires_grad_()
    lm = t64(np.log([0.5, 1.0, 4.0]))
    log_prob(torch.zeros(3, dtype=torch.float64), lm, r).sum().backward()
    z = torch.sigmoid(r.detach())
    ef = torch.exp(-torch.exp(lm))
    torch.testing.assert_close(r.grad, z * (1 - z) * (1 - ef) / (z + (1 - z) * ef))

    def zinb(lm_, r_, lt_):
        return log_prob(xs, lm_, r_, lt_)

    xs = t64([0.0, 1.0, 4.0, 30.0])
    args = (
        t64(np.log([0.5, 3.0, 4.0, 25.0])).requires_grad_(),
        t64([-1.0, 0.5, 2.0, -4.0]).requires_grad_(),
        t64(np.log([0.2, 1.0, 10.0, 1e3])).requires_grad_(),
    )
    assert torch.autograd.gradcheck(zinb, args)


def _textbook_log_prob(x, log_m, logit_z, log_theta):
    """The mixture's log-pmf on every entry, as written in method.md, for autograd."""
    m = torch.exp(log_m)
    if log_theta is None:
        f = x * log_m - m - torch.lgamma(x + 1)
    else:
        theta = torch.exp(log_theta)
        f = (torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1)
             - theta * torch.log1p(m / theta) + x * (log_m - torch.log(theta + m)))
    if logit_z is None:
        return f
    z = torch.sigmoid(logit_z)
    return torch.where(x == 0, torch.log(z + (1 - z) * torch.exp(f)), torch.log(1 - z) + f)


@pytest.mark.parametrize("likelihood", ["poisson", "nb", "zip", "zinb"])
@pytest.mark.parametrize("per_gene_theta", [False, True], ids=["theta_per_entry", "theta_per_gene"])
def test_written_out_gradients_equal_autograd_of_the_formula(likelihood, per_gene_theta):
    """log_prob computes the terms that are 0 at x = 0 on the non-zeros only and writes its
    derivatives out: values and gradients must equal autograd's on the textbook formula on every
    entry, also for a per-gene theta broadcast over cells and for a cell without counts; and a
    retained graph must give the same gradients twice (backward must not spend what it saved)."""
    zero_inflated, nb = likelihood_flags(likelihood)
    rng = np.random.default_rng(0)
    x = t64(rng.poisson(0.6, (6, 5)))
    x[0] = 0.0
    log_m = t64(rng.normal(0, 1, (6, 5))).requires_grad_()
    logit_z = t64(rng.normal(-1, 1.5, (6, 5))).requires_grad_() if zero_inflated else None
    log_theta = (t64(rng.normal(0, 1, 5 if per_gene_theta else (6, 5))).requires_grad_()
                 if nb else None)
    params = [t for t in (log_m, logit_z, log_theta) if t is not None]
    got = log_prob(x, log_m, logit_z, log_theta)
    expected = _textbook_log_prob(x, log_m, logit_z, log_theta)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    weights = t64(rng.normal(0, 1, (6, 5)))  # a non-uniform upstream gradient
    first = torch.autograd.grad((got * weights).sum(), params, retain_graph=True)
    again = torch.autograd.grad((got * weights).sum(), params)
    for g, g2, e in zip(first, again, torch.autograd.grad((expected * weights).sum(), params)):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g2, g, rtol=0, atol=0)

    def from_present(*present):
        it = iter(present)
        return log_prob(x, next(it), next(it) if zero_inflated else None, next(it) if nb else None)

    assert torch.autograd.gradcheck(from_present, tuple(params))


def test_log_prob_without_gradients_gives_the_same_values():
    """Under no_grad (validation, scoring) log_prob skips the derivatives, not the values."""
    rng = np.random.default_rng(1)
    x = t64(rng.poisson(1.0, (4, 7)))
    args = [t64(rng.normal(0, 1, (4, 7))).requires_grad_() for _ in range(3)]
    with_grad = log_prob(x, *args)
    with torch.no_grad():
        without = log_prob(x, *args)
    assert not without.requires_grad
    torch.testing.assert_close(without, with_grad.detach(), rtol=0, atol=0)


def test_float64_in_float64_out():
    x = t64([0.0, 5.0])
    out = log_prob(x, t64([0.0, 1.0]), t64([0.0, 0.0]), t64([0.0, 0.0]))
    assert out.dtype == torch.float64


def test_likelihood_flags():
    assert likelihood_flags("zip") == (True, False)
    assert likelihood_flags("zinb") == (True, True)
    assert likelihood_flags("poisson") == (False, False)
    assert likelihood_flags("nb") == (False, True)
    with pytest.raises(ValueError, match="likelihood must be one of"):
        likelihood_flags("gaussian")


# --------------------------------------------------------------------------- E[log1p(s X)]
LOG1P_M = [1e-4, 1e-2, 0.1, 0.5, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3]
LOG1P_SCALE = [0.01, 0.1, 1.0, 10.0, 100.0]
LOG1P_THETA = [None, 0.1, 1.0, 10.0, 100.0, 1e4]  # None: Poisson


def brute_expected_log1p(m: float, theta: float | None, scale: np.ndarray) -> np.ndarray:
    """sum_k P(k) log1p(scale k) in float64 over k up to where the tail is below 1e-15 (for
    NB theta=0.1, m=1e3 that is k ~ 4e5: far past the k <= 2000 that suffices for Poisson)."""
    dist = stats.poisson(m) if theta is None else stats.nbinom(theta, theta / (theta + m))
    k = np.arange(int(max(dist.isf(1e-15), 50)) + 10, dtype=np.float64)
    return np.exp(dist.logpmf(k)) @ np.log1p(np.outer(k, scale))


@pytest.fixture(scope="module")
def log1p_reference():
    """{theta: m x scale brute-force expectations}."""
    scale = np.asarray(LOG1P_SCALE)
    return {th: np.stack([brute_expected_log1p(m, th, scale) for m in LOG1P_M])
            for th in LOG1P_THETA}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("theta", LOG1P_THETA, ids=lambda t: "poisson" if t is None else f"nb{t:g}")
def test_expected_log1p_matches_brute_force(log1p_reference, theta, dtype):
    """Every m x scale at once (scale broadcast as a column, as denoise passes one per cell),
    with and without zero inflation; the tolerance is what the docstring states."""
    ref = log1p_reference[theta]
    log_m = torch.log(torch.tensor(LOG1P_M, dtype=dtype))[:, None].expand(-1, len(LOG1P_SCALE))
    scale = torch.tensor(LOG1P_SCALE, dtype=torch.float64)[None, :]
    log_theta = None if theta is None else torch.full_like(log_m, np.log(theta))
    tol = 1e-8 + 1e-7 * ref if dtype == torch.float64 else 1e-6 * (1 + ref)
    got = expected_log1p(log_m, None, log_theta, scale)
    assert got.dtype == dtype and got.shape == ref.shape
    assert np.all(np.abs(got.double().numpy() - ref) <= tol)
    logit_z = torch.full_like(log_m, 1.5)
    zi = expected_log1p(log_m, logit_z, log_theta, scale).double().numpy()
    assert np.all(np.abs(zi - ref / (1 + np.exp(1.5))) <= tol)
    # A formula that missed the spread of X would fail the check above: log1p of the mean is
    # far off at low expression (Jensen), by much more than the tolerance.
    plug_in = np.log1p(np.outer(LOG1P_M, LOG1P_SCALE))
    assert np.all(plug_in >= ref - tol)
    assert np.max(plug_in - ref) > 0.05


def test_expected_log1p_broadcasts_a_scale_per_cell():
    log_m = torch.log(torch.tensor([[0.5, 2.0, 40.0], [0.1, 7.0, 1.0]], dtype=torch.float64))
    scale = torch.tensor([[10.0], [0.3]], dtype=torch.float64)
    got = expected_log1p(log_m, scale=scale)
    for i, j in itertools.product(range(2), range(3)):
        want = brute_expected_log1p(float(log_m[i, j].exp()), None, scale[i].numpy())[0]
        assert got[i, j].item() == pytest.approx(want, rel=1e-7, abs=1e-8)
    assert torch.all(expected_log1p(torch.tensor([-torch.inf]), scale=3.0) == 0)  # m = 0


# --------------------------------------------------------------------------- posterior rate
def _posterior_by_quadrature(x: int, m: float, theta: float, pi: float) -> float:
    """E[rate | x] by integrating over the Gamma(theta, theta / m) rate on a fine grid, with
    a dropout (probability pi) that zeroes the count whatever the rate."""
    from scipy import integrate

    prior = stats.gamma(theta, scale=m / theta)
    dropout = pi if x == 0 else 0.0

    def weight(lam):  # prior density x P(x | rate)
        return prior.pdf(lam) * (dropout + (1 - pi) * stats.poisson.pmf(x, lam))

    hi = prior.ppf(1 - 1e-12) + 10 * (x + 1)
    num = integrate.quad(lambda lam: lam * weight(lam), 0, hi, limit=500, points=[m, x])[0]
    den = integrate.quad(weight, 0, hi, limit=500, points=[m, x])[0]
    return num / den


@pytest.mark.parametrize("x,m,theta,pi", [
    (0, 2.0, 5.0, 0.2), (0, 0.3, 1.5, 0.6), (3, 0.5, 2.0, 0.1), (12, 4.0, 0.8, 0.3),
    (1, 20.0, 50.0, 0.05), (0, 20.0, 3.0, 0.0),
])
def test_posterior_rate_is_bayes_under_zinb(x, m, theta, pi):
    t = lambda v: torch.tensor([[float(v)]], dtype=torch.float64)  # noqa: E731
    logit = t(np.log(pi / (1 - pi))) if pi > 0 else t(-np.inf)
    got = posterior_rate(t(x), torch.log(t(m)), logit, torch.log(t(theta))).item()
    assert got == pytest.approx(_posterior_by_quadrature(x, m, theta, pi), rel=1e-5)


def test_posterior_rate_limits():
    x = torch.tensor([[0.0, 1.0, 7.0]], dtype=torch.float64)
    log_m = torch.log(torch.tensor([[2.0, 2.0, 2.0]], dtype=torch.float64))
    # Poisson and ZIP: the rate does not depend on the cell's count
    torch.testing.assert_close(posterior_rate(x, log_m), torch.exp(log_m))
    torch.testing.assert_close(posterior_rate(x, log_m, torch.zeros_like(x)), torch.exp(log_m))
    # NB: no noise (huge theta) keeps the rate; huge noise (tiny theta) keeps the count
    big, small = torch.full_like(x, 1e6).log(), torch.full_like(x, 1e-6).log()
    torch.testing.assert_close(posterior_rate(x, log_m, None, big), torch.exp(log_m), rtol=1e-5,
                               atol=0)
    torch.testing.assert_close(posterior_rate(x, log_m, None, small), x, rtol=1e-5, atol=1e-5)
