"""benchmarks.floor: the best prediction of held-out molecules a world's true parameters
allow, and the worlds it is scored in."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import protocols as P  # noqa: E402


def test_bayes_prediction_is_the_mean_of_held_out_molecules_given_the_kept_ones():
    """Draw one entry of a zero-inflated Gamma-Poisson world many times, split each count at p
    as MCV does, and average X'' over the draws with each value of X': the formula's
    prediction (times (1 - p) / p, as the harness rescales it) is that average."""
    rng = np.random.default_rng(0)
    n, p = 400_000, 0.9
    for mean, theta, pi in ((2.0, 0.7, 0.2), (0.3, 5.0, 0.0), (8.0, 2.0, 0.4)):
        rate = rng.gamma(theta, mean / theta, n)
        counts = rng.poisson(rate) * (rng.random(n) >= pi)
        x1 = rng.binomial(counts, p)
        x2 = counts - x1
        for value in (0, 1, 3):
            seen = x1 == value
            assert seen.sum() > 1000
            predicted = P.bayes_mcv_prediction(np.array([[value]]), mean, theta, pi, p)[0, 0]
            average = x2[seen].mean()
            error = x2[seen].std() / np.sqrt(seen.sum())
            assert predicted * (1 - p) / p == pytest.approx(average, abs=4 * error)


def test_bayes_prediction_without_gamma_noise_is_the_oracle():
    """As theta grows the rate stops scattering, and the Bayes prediction becomes the
    harness's oracle for a zero-inflated Poisson world with rate m."""
    x1 = np.array([[0.0, 1.0, 4.0], [0.0, 0.0, 2.0]])
    mean = np.array([[0.5, 2.0, 6.0], [3.0, 0.1, 1.0]])
    pi = np.array([[0.1, 0.3, 0.0]])
    assert P.bayes_mcv_prediction(x1, mean, 1e9, pi, 0.5) == pytest.approx(
        P.oracle_mcv_prediction(x1, mean, pi, 0.5), rel=1e-6)


def test_the_simulated_world_is_the_harness_split_with_its_oracle(tmp_path):
    """The simulation's world is the split ``benchmarks.run`` makes, and its oracle row is the
    harness's; its true parameters make a floor between the oracle and no denoising."""
    from benchmarks import datasets as D
    from benchmarks.floor import world_split
    from benchmarks.splits import make_split, oracle_records

    ds = D.load("simulated")
    x1, x2, rate, m, theta, pi = world_split("simulated", 0.9, 1, None)
    split = make_split(ds, 1, "mcv0.9", tmp_path)
    assert (x1 != split.train).nnz == 0 and (x2 != split.target).nnz == 0
    oracle = P.score_mcv(P.oracle_mcv_prediction(x1, rate, pi, 0.9), x2, 0.9)
    assert oracle["poisson_deviance"] == oracle_records(split, ds)["poisson_deviance"]
    floor = P.score_mcv(P.bayes_mcv_prediction(x1, m, theta, pi, 0.9), x2, 0.9)
    base = P.mean_baseline(np.asarray(x1.sum(axis=1)).ravel(), P.gene_proportions(x1))
    none = P.score_mcv(base, x2, 0.9)
    assert oracle["poisson_deviance"] < floor["poisson_deviance"] < none["poisson_deviance"]
    # the state-level mean is the rate's: the Gamma noise averages out over cells
    assert m.sum() == pytest.approx(rate.sum(), rel=0.01)


def test_a_fitted_world_and_its_rows(shipped_data, monkeypatch):
    """A world fitted to pbmc_small draws no structural zeros by default; every row is scored,
    the floor below every prediction made from the data, and no CellMapper row without its
    venv."""
    import torch

    from benchmarks import floor, venvs

    monkeypatch.setattr(venvs, "ready", lambda name: False)
    options = ["encoder_dims=[32,8]", "n_fits=1", "max_epochs=3"]
    m, theta, pi = floor.fitted_world("pbmc_small", 0, floor.parse_variant(["w", *options])[1], 0)
    assert m.shape == theta.shape == (80, 230) and not pi.any() and (m > 0).all()
    (rec,) = floor.main(["--world", "pbmc_small", "--seeds", "0", "--threads",
                         str(torch.get_num_threads()), "--world-options", *options,
                         "--options", *options])
    assert set(rec) == {"epochs", *floor.ROWS} - {"CellMapper"}
    others = [v for k, v in rec.items() if k not in ("epochs", "oracle", "Bayes floor")]
    assert rec["oracle"] < rec["Bayes floor"] < min(others)


def test_dropout_zeros_kept_is_the_bayes_prediction_at_the_fits_own_depth():
    """headroom's posterior without the dropouts' imputation is the Bayes prediction with the
    model's parameters taken as true, at the depth the model saw (p = 1)."""
    import torch

    from benchmarks.headroom import dropouts_kept
    from zipo.distributions import posterior_rate
    from zipo.nn.network import NetworkOutput

    g = torch.Generator().manual_seed(0)
    x = torch.poisson(torch.full((30, 20), 0.7), generator=g).double()
    log_mean, logit_z, log_theta = (torch.randn(30, 20, generator=g).double() for _ in range(3))
    # log l + log mu = log mean, with log mu's logsumexp over genes 0 as the network's
    log_library = torch.logsumexp(log_mean, dim=1)
    o = NetworkOutput(latent=torch.zeros(30, 2), log_library=log_library,
                      log_mu=log_mean - log_library[:, None], logit_z=logit_z,
                      log_theta=log_theta)
    kept = dropouts_kept(x, o, None, posterior_rate(x, log_mean, logit_z, log_theta))
    expected = P.bayes_mcv_prediction(x.numpy(), log_mean.exp().numpy(),
                                      log_theta.exp().numpy(), torch.sigmoid(logit_z).numpy(), 1.0)
    assert kept.numpy() == pytest.approx(expected, rel=1e-9)
    assert (kept[x == 0] < posterior_rate(x, log_mean, logit_z, log_theta)[x == 0]).all()
