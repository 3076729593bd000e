"""Pruning of the first layer and the gene programs it leaves (zipo.tools.programs)."""

from __future__ import annotations

import copy
import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import zipo
from zipo.tools.programs import read_gmt

from conftest import validation_scores

ENCODER = [32, 16]
REPORT_KEYS = {"pruned_fraction", "weights_pruned", "weights_total", "delta", "nll_before",
               "nll_after", "mse_before", "mse_after"}


@pytest.fixture(scope="module")
def base(_pbmc_small):
    """A small ZIP model of one fit trained on pbmc_small (unpruned; the report is of its
    network); tests work on deep copies."""
    m = zipo.ZiPo(_pbmc_small.copy(), encoder_dims=ENCODER, max_epochs=15, batch_size=32,
                  seed=0, alpha_w=0.5, verbose=False, n_fits=1)
    return m.train()


@pytest.fixture
def model(base):
    return copy.deepcopy(base)


def _w(m) -> np.ndarray:
    return m.network.first_layer.weight.detach().cpu().numpy().copy()


def _dense(adata) -> np.ndarray:
    return adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)


# --------------------------------------------------------------------------- pruning
def test_prune_zeroes_exactly_the_weights_below_delta_times_max(model):
    layer = model.network.first_layer
    n, g = layer.weight.shape
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((n, g)) * 10.0 ** rng.uniform(-6, 0, (n, g))).astype(np.float32)
    # hand-made rows: the threshold is relative to each row's own maximum
    w[0] = 0.0
    w[0, :5] = [2.0, -1.0, 2e-3 - 1e-6, -2e-3, 1e-9]  # delta 1e-3 -> cut below 2e-3
    w[1] = 1e-7  # a uniformly tiny neuron keeps all its weights
    w[2] = 0.0  # an all-zero neuron is pruned entirely
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(w))
    report = model.prune(delta=1e-3)

    a = np.abs(w)
    expected = (a < 1e-3 * a.max(axis=1, keepdims=True)) | (a.max(axis=1, keepdims=True) == 0)
    after = _w(model)
    assert set(report) == REPORT_KEYS
    np.testing.assert_array_equal(after == 0, expected | (w == 0))
    np.testing.assert_array_equal(after[~expected], w[~expected])  # kept weights untouched
    np.testing.assert_array_equal(after[0, :5], np.float32([2.0, -1.0, 0.0, -2e-3, 0.0]))
    np.testing.assert_array_equal(after[1], w[1])
    assert report["weights_total"] == n * g
    assert report["weights_pruned"] == expected.sum()
    assert report["pruned_fraction"] == pytest.approx(expected.sum() / (n * g))
    assert report["delta"] == 1e-3
    assert model.pruning == {k: report[k] for k in ("delta", "pruned_fraction",
                                                   "weights_pruned", "weights_total")}
    # pruning again at a larger delta prunes more, never restores
    report2 = model.prune(delta=0.1)
    assert report2["weights_pruned"] >= report["weights_pruned"]
    assert np.all(_w(model)[expected] == 0)


def test_prune_rejects_bad_delta(model):
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="delta"):
            model.prune(delta=bad)


def test_prune_reports_nll_and_mse(model, pbmc_small):
    before = model.evaluate(pbmc_small)["nll"]
    dense_x = _dense(pbmc_small).astype(np.float64)
    rate = model.denoise(pbmc_small, expectation="rate", copy=True).layers["zipo_denoised"].astype(np.float64)
    report = model.prune(delta=0.05, adata=pbmc_small)
    assert all(np.isfinite(report[k]) for k in REPORT_KEYS)
    assert report["nll_before"] == pytest.approx(before, rel=1e-6)
    assert report["nll_after"] == pytest.approx(model.evaluate(pbmc_small)["nll"], rel=1e-6)
    assert report["mse_before"] == pytest.approx(np.mean((dense_x - rate) ** 2), rel=1e-4)
    rate_after = model.denoise(pbmc_small, expectation="rate", copy=True).layers["zipo_denoised"]
    assert report["mse_after"] == pytest.approx(np.mean((dense_x - rate_after) ** 2), rel=1e-4)
    assert report["weights_pruned"] > 0 and report["nll_after"] != report["nll_before"]


def test_prune_reports_on_validation_cells_by_default(model):
    assert 0 < len(model.validation_indices) < model.adata.n_obs
    expected = validation_scores(model)[1]
    report = model.prune(delta=1e-4)
    assert report["nll_before"] == pytest.approx(expected, rel=1e-6)
    assert report["nll_after"] == pytest.approx(validation_scores(model)[1], rel=1e-6)


def test_pruned_weights_stay_zero_when_training_further(model):
    model.prune(delta=0.05)
    before = _w(model)
    pruned = before == 0
    assert 0.05 < pruned.mean() < 0.95
    model.train(max_epochs=2)
    after = _w(model)
    assert np.all(after[pruned] == 0)
    assert not np.array_equal(after[~pruned], before[~pruned])  # the others did train
    assert model.evaluate()["nll"] > 0


@pytest.mark.parametrize("mode", ["sparse", "dense"])
def test_pruning_holds_with_either_first_layer_mode(model, pbmc_small, mode):
    """The sparse first layer uses the weight without calling the nn.Linear: the hooks must
    not depend on that module's forward."""
    if not hasattr(model.config.train, "first_layer"):
        pytest.skip("this version has no first_layer option")
    model.prune(delta=0.05)
    pruned = _w(model) == 0
    model.train(max_epochs=2, first_layer=mode)
    assert np.all(_w(model)[pruned] == 0)
    act = model.program_activity(pbmc_small)  # inference batches in that mode too
    direct = np.log1p(_dense(pbmc_small).astype(np.float64)) @ _w(model).T.astype(np.float64)
    np.testing.assert_allclose(act, direct + model.network.first_layer.bias.detach().numpy(),
                               rtol=1e-4, atol=1e-4)
    report = model.prune(delta=0.05, adata=pbmc_small)
    assert np.isfinite(report["mse_after"]) and np.isfinite(report["nll_after"])


def test_gradient_hook_alone_keeps_adam_stationary(model):
    """With the forward pre-hook removed, zero gradients + a fresh Adam (what train() makes)
    keep pruned weights exactly zero after every step, not only after the next forward."""
    model.prune(delta=0.05)
    pruned = _w(model) == 0
    hooks = model.network._forward_pre_hooks
    ours = [k for k, h in hooks.items() if h is model._prune_mask]
    assert len(ours) == 1
    del hooks[ours[0]]  # the forward pre-hook
    model.train(max_epochs=2)
    assert np.all(_w(model)[pruned] == 0)


@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_forward_hook_overrides_an_optimiser_with_state(model, pbmc_small, layout):
    """An optimiser that already has moments for the pruned weights moves them on its step; the
    forward pre-hook zeroes them again before they can reach any output (also when the sparse
    first layer bypasses the nn.Linear module)."""
    import zipo.nn.sparse

    if layout == "sparse" and not hasattr(zipo.nn.sparse, "sparse_linear"):
        pytest.skip("this version has no sparse first layer")
    net, layer = model.network, model.network.first_layer
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x = torch.from_numpy(_dense(pbmc_small)[:32].astype(np.float32))
    c = torch.zeros((32, 0))

    def step():
        net.train()
        opt.zero_grad()
        net(x, c).log_mean.sum().backward()
        opt.step()

    step()  # Adam now has non-zero moments everywhere
    model.prune(delta=0.05)
    pruned = _w(model) == 0
    step()
    assert np.any(_w(model)[pruned] != 0)  # the stale moments moved them
    net.eval()
    with torch.no_grad():
        net(x.to_sparse_csr() if layout == "sparse" else x, c)
    assert np.all(_w(model)[pruned] == 0)
    assert layer.weight.grad is not None and np.all(layer.weight.grad.numpy()[pruned] == 0)


def test_pruning_twice_and_copies_keep_one_set_of_hooks(model):
    model.prune(delta=0.01)
    model.prune(delta=0.05)
    net = model.network
    assert len(net._forward_pre_hooks) == 1 and len(net.first_layer.weight._backward_hooks) == 1
    twin = copy.deepcopy(model)
    twin.prune(delta=0.1)  # must not take the original's hooks off
    assert len(net._forward_pre_hooks) == 1 and len(net.first_layer.weight._backward_hooks) == 1
    pruned = _w(twin) == 0
    twin.train(max_epochs=1)
    assert np.all(_w(twin)[pruned] == 0)
    assert len(twin.network.first_layer.weight._backward_hooks) == 1


def test_pruning_survives_save_and_load(model, pbmc_small, tmp_path):
    report = model.prune(delta=0.05)
    pruned = _w(model) == 0
    model.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "zipo.json").read_text())
    assert meta["pruned"]["delta"] == 0.05
    assert meta["pruned"]["pruned_fraction"] == pytest.approx(report["pruned_fraction"])

    loaded = zipo.ZiPo.load(tmp_path / "m", adata=pbmc_small)
    assert loaded.pruning == model.pruning
    np.testing.assert_array_equal(_w(loaded), _w(model))
    np.testing.assert_array_equal(loaded._prune_mask.pruned.numpy(), pruned)
    loaded.train(max_epochs=2, verbose=False)  # fine-tuning the loaded model
    assert np.all(_w(loaded)[pruned] == 0)


def test_unpruned_models_save_and_load_as_before(base, tmp_path):
    base.save(tmp_path / "m")
    assert "pruned" not in json.loads((tmp_path / "m" / "zipo.json").read_text())
    loaded = zipo.ZiPo.load(tmp_path / "m")
    assert loaded.pruning is None and getattr(loaded, "_prune_mask", None) is None
    np.testing.assert_array_equal(_w(loaded), _w(base))
    assert not loaded.network._forward_pre_hooks


def test_untrained_model_refuses(pbmc_small, tmp_path):
    m = zipo.ZiPo(pbmc_small, encoder_dims=ENCODER, verbose=False)
    for call in (m.prune, m.gene_programs, lambda: m.write_gmt(tmp_path / "p.gmt"),
                 m.program_activity):
        with pytest.raises(ValueError, match="not trained"):
            call()


# --------------------------------------------------------------------------- programs
def test_gene_programs_table_matches_the_weights(model):
    model.prune(delta=0.05)
    w = _w(model)
    table = model.gene_programs(adata=None)
    assert list(table.columns) == ["program", "gene", "weight", "abs_weight", "rank"]
    assert len(table) == np.count_nonzero(w)
    genes = list(model.var_names)
    names = [f"program_{i:04d}" for i in range(w.shape[0])]
    assert table["program"].is_monotonic_increasing
    for i, (name, group) in enumerate(table.groupby("program", sort=True)):
        row = w[names.index(name)]
        cols = [genes.index(gname) for gname in group["gene"]]
        np.testing.assert_array_equal(group["weight"].to_numpy(), row[cols])
        assert set(cols) == set(np.flatnonzero(row))
        assert np.all(np.diff(group["abs_weight"].to_numpy()) <= 0)
        np.testing.assert_array_equal(group["rank"].to_numpy(), np.arange(1, len(group) + 1))
    np.testing.assert_array_equal(table["abs_weight"], np.abs(table["weight"]))

    # min_weight is relative to each program's largest |weight|
    half = model.gene_programs(adata=None, min_weight=0.5)
    a = np.abs(w)
    assert len(half) == np.sum((a >= 0.5 * a.max(axis=1, keepdims=True)) & (a > 0))
    assert half.groupby("program")["rank"].min().eq(1).all()


def test_gene_programs_write_varm_and_uns_in_adata_gene_order(model, pbmc_small, tmp_path):
    model.prune(delta=0.05)
    w = _w(model)
    model.gene_programs(pbmc_small, key_added="zp")
    loadings = pbmc_small.varm["zp_programs"]
    assert loadings.shape == (pbmc_small.n_vars, w.shape[0])
    dense = loadings.toarray() if sp.issparse(loadings) else loadings
    assert dense.dtype == np.float32
    np.testing.assert_array_equal(dense, w.T)
    assert sp.issparse(loadings) == (np.mean(w == 0) > 0.5)
    info = pbmc_small.uns["zp_programs"]
    assert list(info["programs"]) == [f"program_{i:04d}" for i in range(w.shape[0])]
    np.testing.assert_array_equal(info["n_genes"], np.count_nonzero(w, axis=1))
    assert info["delta"] == 0.05 and info["pruned_fraction"] == model.pruning["pruned_fraction"]

    # genes permuted: the rows follow adata's genes
    perm = np.random.default_rng(0).permutation(pbmc_small.n_vars)
    shuffled = pbmc_small[:, perm].copy()
    model.gene_programs(shuffled, key_added="zp")
    got = shuffled.varm["zp_programs"]
    got = got.toarray() if sp.issparse(got) else got
    np.testing.assert_array_equal(got, w.T[perm])
    shuffled.write_h5ad(tmp_path / "a.h5ad")  # what we wrote is storable
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    assert list(back.uns["zp_programs"]["programs"]) == list(info["programs"])

    with pytest.raises(ValueError, match="genes of adata"):
        model.gene_programs(pbmc_small[:, :100].copy())


def test_gene_programs_dense_when_not_sparse(base, pbmc_small):
    base.gene_programs(pbmc_small)  # unpruned: (almost) all weights are non-zero
    assert isinstance(pbmc_small.varm["zipo_programs"], np.ndarray)
    assert "delta" not in pbmc_small.uns["zipo_programs"]


def test_gmt_parses_back_to_the_same_sets(model, tmp_path):
    model.prune(delta=0.05)
    table = model.gene_programs(adata=None)
    path = model.write_gmt(tmp_path / "programs.gmt")
    sets = read_gmt(path)
    expected = {p: list(g["gene"]) for p, g in table.groupby("program", sort=True)}
    assert sets == expected
    first = path.read_text().splitlines()[0].split("\t")
    assert first[1].startswith("ZiPo first-layer neuron")
    assert [p.name for p in tmp_path.iterdir()] == ["programs.gmt"]  # no temp file left

    top = read_gmt(model.write_gmt(tmp_path / "programs.gmt", top_n=3))
    assert top == {p: genes[:3] for p, genes in expected.items()}


def test_program_activity_is_the_first_layer_pre_activation(model, pbmc_small):
    model.prune(delta=0.05)
    act = model.program_activity(pbmc_small, batch_size=16)
    w, b = _w(model), model.network.first_layer.bias.detach().numpy()
    assert act.shape == (pbmc_small.n_obs, w.shape[0]) and act.dtype == np.float32
    np.testing.assert_array_equal(pbmc_small.obsm["X_zipo_programs"], act)
    cells = [0, 17, 42, 79]
    direct = np.log1p(_dense(pbmc_small)[cells].astype(np.float64)) @ w.T.astype(np.float64) + b
    np.testing.assert_allclose(act[cells], direct, rtol=1e-4, atol=1e-4)

    perm = np.random.default_rng(1).permutation(pbmc_small.n_vars)
    shuffled = pbmc_small[:, perm].copy()
    np.testing.assert_allclose(model.program_activity(shuffled, key_added="s"), act, atol=1e-5)
    assert "X_s_programs" in shuffled.obsm
