"""Borrowing from neighbouring cells in the posterior (zipo/neighbours.py): the search, the
posterior with pooled counts, the choice on validation molecules, and the denoised output."""

from __future__ import annotations

import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import zipo
from zipo.distributions import posterior_rate
from zipo.neighbours import NeighbourPooling, nearest

from conftest import small_model


def clustered(n_cells=90, n_genes=60, groups=3, depth=0.25, seed=0):
    """Few shallow cells in a few distinct states: a cell's neighbours hold what its own
    counts and a network fitted on 90 cells miss."""
    rng = np.random.default_rng(seed)
    profiles = rng.gamma(0.6, 1.0, (groups, n_genes)) * rng.uniform(0.5, 2, n_genes)
    state = np.repeat(np.arange(groups), n_cells // groups)
    rate = profiles[state] * rng.lognormal(0, 0.2, (len(state), 1)) * depth * 10
    x = rng.poisson(rate).astype(np.float32)
    x[x.sum(1) == 0, 0] = 1
    return ad.AnnData(sp.csr_matrix(x), obs=pd.DataFrame({"group": state.astype(str)},
                                                          index=[f"c{i}" for i in range(len(x))]),
                      var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))


def test_nearest_is_the_exact_search_without_the_cell_itself():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(70, 4)).astype(np.float32)
    rows = np.array([3, 10, 69])
    found = nearest(torch.from_numpy(ref[rows]), torch.from_numpy(ref), 5, rows, chunk=2)
    d = ((ref[rows][:, None, :] - ref[None, :, :]) ** 2).sum(-1)
    d[np.arange(3), rows] = np.inf
    np.testing.assert_array_equal(found, np.argsort(d, axis=1)[:, :5])


def test_nearest_bounds_its_distance_chunk_by_the_reference_size(monkeypatch):
    """The default chunk holds at most DISTANCE_ENTRIES distances, so a large reference
    searches fewer queries at a time; the neighbours found do not depend on it."""
    import zipo.neighbours as N

    rng = np.random.default_rng(2)
    ref = torch.from_numpy(rng.normal(size=(300, 6)).astype(np.float32))
    rows = np.arange(0, 300, 7)
    whole = nearest(ref[rows], ref, 4, rows, chunk=len(rows))
    shapes, topk = [], torch.topk
    monkeypatch.setattr(torch, "topk", lambda d, *a, **kw: (shapes.append(d.shape),
                                                           topk(d, *a, **kw))[1])
    monkeypatch.setattr(N, "DISTANCE_ENTRIES", 300 * 5)
    np.testing.assert_array_equal(nearest(ref[rows], ref, 4, rows), whole)
    assert max(s[0] for s in shapes) == 5 and len(shapes) == -(-len(rows) // 5)


def test_pooled_posterior_is_the_gamma_poisson_update():
    x = torch.tensor([[0.0, 2.0, 5.0]])
    log_m = torch.log(torch.tensor([[1.0, 1.5, 0.5]]))
    log_theta = torch.log(torch.tensor([[2.0, 0.5, 4.0]]))
    plain = posterior_rate(x, log_m, None, log_theta)
    same = posterior_rate(x, log_m, None, log_theta,
                          (torch.zeros(1, 3), torch.zeros(1, 1)))
    torch.testing.assert_close(same, plain)
    pooled_x, exposure = torch.tensor([[1.0, 8.0, 0.0]]), torch.tensor([[3.0]])
    got = posterior_rate(x, log_m, None, log_theta, (pooled_x, exposure))
    m, theta = torch.exp(log_m), torch.exp(log_theta)
    torch.testing.assert_close(got, (theta + x + pooled_x) / (theta / m + 1 + exposure))
    # With much weight on many neighbours the rate becomes theirs per unit of library.
    heavy = posterior_rate(x, log_m, None, log_theta, (1e6 * pooled_x, 1e6 * exposure))
    torch.testing.assert_close(heavy, pooled_x / exposure, rtol=1e-4, atol=1e-4)
    # A dropout zero (zero inflation) is updated by the neighbours alone.
    certain_dropout = torch.full((1, 3), 30.0)
    z = posterior_rate(torch.zeros(1, 3), log_m, certain_dropout, log_theta,
                       (pooled_x, exposure))
    torch.testing.assert_close(z, (theta + pooled_x) / (theta / m + exposure))


def test_small_clustered_data_borrow_and_denoise_with_the_chosen_pooling(tmp_path):
    adata = clustered()
    model = small_model(adata, max_epochs=15, batch_size=16, validation_fraction=0.3).train()
    pooling = model.pooling
    assert pooling.active, pooling
    assert pooling.scores[f"k={pooling.neighbours},w={pooling.weight}"] < pooling.scores["k=5,w=0.0"]
    pooled = model.denoise(copy=True).layers["zipo_denoised"]
    model.pooling = NeighbourPooling()  # the plain posterior, for comparison
    plain = model.denoise(copy=True).layers["zipo_denoised"]
    assert np.all(np.isfinite(pooled)) and np.all(pooled >= 0)
    assert np.abs(pooled - plain).max() > 0.01
    # Pooling pulls cells of a group together: the spread within groups shrinks.
    groups = adata.obs["group"].to_numpy()

    def spread(values):
        return np.mean([values[groups == g].std(0).mean() for g in np.unique(groups)])

    assert spread(pooled) < spread(plain)
    # Saved and loaded, the model keeps its choice and gives the same output.
    model.pooling = pooling
    model.save(tmp_path / "m")
    loaded = zipo.ZiPo.load(tmp_path / "m")
    assert loaded.pooling == pooling
    np.testing.assert_allclose(loaded.denoise(adata, copy=True).layers["zipo_denoised"], pooled,
                               rtol=1e-5)
    # Other outputs do not borrow.
    rate = model.denoise(expectation="rate", copy=True).layers["zipo_denoised"]
    model.pooling = NeighbourPooling()
    np.testing.assert_array_equal(model.denoise(expectation="rate", copy=True)
                                  .layers["zipo_denoised"], rate)


@pytest.mark.parametrize("options, note", [
    ({"neighbour_pooling": "off"}, "off"),
    ({"likelihood": "zip"}, "Poisson and ZIP"),
    ({"covariates": ["group"]}, "covariates"),
    ({"preset": "dca", "encoder_dims": [16, 8]}, "off"),
])
def test_no_pooling_where_it_does_not_apply(options, note):
    model = small_model(clustered(n_cells=60), **options).train()
    assert not model.pooling.active and note in model.pooling.note


def test_a_single_cell_gets_the_plain_posterior():
    adata = clustered()
    model = small_model(adata, max_epochs=15, batch_size=16, validation_fraction=0.3).train()
    one = adata[:1].copy()
    got = model.denoise(one, copy=True).layers["zipo_denoised"]
    model.pooling = NeighbourPooling()
    np.testing.assert_array_equal(got, model.denoise(one, copy=True).layers["zipo_denoised"])


def _score_key(pooling: NeighbourPooling, first_k: int = 5) -> str:
    k = pooling.neighbours if pooling.weight > 0 else first_k
    c = pooling.dispersion_scale
    return f"k={k},w={pooling.weight}" + ("" if c == 1 else f",c={c:g}")


def test_a_dispersion_scale_is_chosen_with_the_borrowing_and_scales_theta(tmp_path):
    """``dispersion_choice = "auto"`` scores every (k, w) at each scale and keeps the lowest;
    the scale multiplies theta in the posterior alone (a huge theta leaves the network's rate)
    and is saved with the model. Off (the default under 500 cells, as these), only c = 1 is
    scored."""
    from zipo.neighbours import CANDIDATE_DISPERSION_SCALES

    x, log_m = torch.tensor([[0.0, 3.0]]), torch.log(torch.tensor([[1.0, 0.5]]))
    log_theta, logit_z = torch.log(torch.tensor([[2.0, 0.5]])), torch.tensor([[0.0, -1.0]])
    torch.testing.assert_close(posterior_rate(x, log_m, logit_z, log_theta, dispersion_scale=4.0),
                               posterior_rate(x, log_m, logit_z, log_theta + math.log(4.0)))

    adata = clustered()
    options = dict(max_epochs=15, batch_size=16, validation_fraction=0.3)
    plain = small_model(adata, **options).train().pooling
    assert plain.dispersion_scale == 1 and not any(",c=" in key for key in plain.scores)
    model = small_model(adata, small_data=False, **options).train()  # "auto", the default
    assert model.config.train.dispersion_choice == "auto"
    chosen = model.pooling
    scores = chosen.scores
    assert len(scores) == len(plain.scores) * len(CANDIDATE_DISPERSION_SCALES)
    for key, value in plain.scores.items():  # the same network and split: c = 1 alike
        assert scores[key] == pytest.approx(value, rel=1e-12)
    assert scores[_score_key(chosen)] == min(scores.values())

    rate = model.denoise(expectation="rate", copy=True).layers["zipo_denoised"]
    for scale, close in ((1.0, False), (1e7, True)):
        model.pooling = NeighbourPooling(dispersion_scale=scale)
        posterior = model.denoise(copy=True).layers["zipo_denoised"]
        assert np.allclose(posterior, rate, rtol=1e-3, atol=1e-4) == close
    model.pooling = NeighbourPooling(dispersion_scale=1e7)
    np.testing.assert_array_equal(model.denoise(expectation="rate", copy=True)
                                  .layers["zipo_denoised"], rate)
    model.pooling = chosen
    model.save(tmp_path / "m")
    assert zipo.ZiPo.load(tmp_path / "m").pooling == chosen
