"""The user-facing ZiPo model: denoise outputs, persistence, inputs, likelihoods, covariates."""

from __future__ import annotations

import json
import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import zipo
from zipo.io import FORMAT_VERSION

from conftest import SMALL_ENCODER, small_model

LAYER = "zipo_denoised"


@pytest.fixture(scope="module")
def reference(trained_model, _pbmc_small):
    """The trained model's outputs on pbmc_small (CSR input), with zero-inflation probabilities."""
    return trained_model.denoise(_pbmc_small.copy(), zero_inflation=True, copy=True)


# --------------------------------------------------------------------------- outputs
def test_denoise_outputs(trained_model, pbmc_small, reference):
    n, g = pbmc_small.shape
    den = reference.layers[LAYER]
    assert den.shape == (n, g) and den.dtype == np.float32
    assert np.all(np.isfinite(den)) and np.all(den >= 0)
    assert np.any(den > 0)

    latent = reference.obsm["X_zipo"]
    assert latent.shape == (n, SMALL_ENCODER[-1]) and latent.dtype == np.float32
    assert np.all(np.isfinite(latent))
    np.testing.assert_allclose(trained_model.get_latent(pbmc_small), latent, rtol=1e-6, atol=1e-6)

    lib = reference.obs["zipo_library_size"].to_numpy()
    assert lib.shape == (n,) and np.all(np.isfinite(lib)) and np.all(lib > 0)
    # the proportions mu sum to one per cell, so each denoised row sums to the predicted library
    np.testing.assert_allclose(den.sum(axis=1, dtype=np.float64), lib, rtol=1e-4)
    # and the predicted library tracks the observed one
    observed = np.asarray(pbmc_small.X.sum(axis=1)).ravel()
    assert np.corrcoef(np.log(observed), np.log(lib))[0, 1] > 0.5

    # the other data of the AnnData is kept, and copy=True left the input alone
    np.testing.assert_array_equal(reference.X.toarray(), pbmc_small.X.toarray())
    assert LAYER not in pbmc_small.layers and "X_zipo" not in pbmc_small.obsm


def test_denoise_in_place_and_key_added(trained_model, pbmc_small, reference):
    assert trained_model.denoise(pbmc_small, key_added="dn") is None
    np.testing.assert_array_equal(pbmc_small.layers["dn_denoised"], reference.layers[LAYER])
    np.testing.assert_array_equal(pbmc_small.obsm["X_dn"], reference.obsm["X_zipo"])
    assert "dn_library_size" in pbmc_small.obs and "dn_zero_prob" not in pbmc_small.layers


def test_zero_probabilities_and_mixture_expectation(trained_model, pbmc_small, reference):
    z = reference.layers["zipo_zero_prob"]
    assert z.shape == pbmc_small.shape and z.dtype == np.float32
    assert np.all((z >= 0) & (z <= 1))
    assert 0 < z.mean() < 1
    mixture = trained_model.denoise(pbmc_small, expectation="mixture", copy=True).layers[LAYER]
    rate = reference.layers[LAYER]
    assert np.all(mixture <= rate)
    assert np.any(mixture < rate)
    np.testing.assert_allclose(mixture, (1 - z) * rate, rtol=1e-5, atol=1e-7)


def test_lognorm_expectation_and_depth(trained_model, pbmc_small, reference):
    """E[log1p(1e4 X / l)]: below log1p of the normalised mean (Jensen), near it where
    expression is high; depth scales rates exactly and takes lognorm towards the plug-in."""
    rate, z = reference.layers[LAYER].astype(np.float64), reference.layers["zipo_zero_prob"]
    lib = reference.obs["zipo_library_size"].to_numpy()[:, None]
    lognorm = trained_model.denoise(pbmc_small, expectation="lognorm", copy=True).layers[LAYER]
    assert lognorm.shape == rate.shape and lognorm.dtype == np.float32
    assert np.all(np.isfinite(lognorm)) and np.all(lognorm >= 0)
    plug_in = np.log1p(1e4 * (1 - z) * rate / lib)  # log1p(s E[X]) >= E[log1p(s X)]
    assert np.all(lognorm <= plug_in + 1e-5) and np.all(plug_in <= np.log1p(1e4 * rate / lib))
    assert np.max(plug_in - lognorm) > 0.1  # the bias it removes is real at low expression
    # Where expression is high the count component's E[log1p(s X)] is log1p(s m) - 1/(2 m)
    # + O(1/m^2) (Poisson, s m >> 1): the gap shrinks as 1/m.
    high = rate > 5
    assert high.sum() > 100
    gap = (1 - z) * np.log1p(1e4 * rate / lib) - lognorm
    assert np.all(gap[high] >= -1e-5) and np.all(gap[high] <= 0.5 / rate[high])

    deeper = trained_model.denoise(pbmc_small, depth=2, copy=True).layers[LAYER]
    np.testing.assert_array_equal(deeper, 2 * reference.layers[LAYER])
    deeper = trained_model.denoise(pbmc_small, expectation="lognorm", depth=2,
                                   copy=True).layers[LAYER]
    assert np.all(deeper >= lognorm - 1e-5) and np.all(deeper <= plug_in + 1e-5)


# --------------------------------------------------------------------------- persistence
def test_save_load_roundtrip_is_bit_identical(trained_model, pbmc_small, reference, tmp_path):
    path = tmp_path / "model"
    trained_model.save(path)
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no temporary folders left behind
    assert {"zipo.json", "weights.pt", "config.toml", "history.csv"} <= set(os.listdir(path))

    loaded = zipo.ZiPo.load(path)
    assert loaded.is_trained
    # equal but for the device: a loaded model runs (and keeps training) where it was loaded to
    assert loaded.config.train.device == "cpu"
    loaded_config, saved_config = loaded.config.to_dict(), trained_model.config.to_dict()
    loaded_config["train"].pop("device"), saved_config["train"].pop("device")
    assert loaded_config == saved_config
    assert list(loaded.var_names) == list(trained_model.var_names)
    pd.testing.assert_frame_equal(loaded.history, trained_model.history, check_exact=False,
                                  rtol=1e-12)
    out = loaded.denoise(pbmc_small, zero_inflation=True, copy=True)
    for key in (LAYER, "zipo_zero_prob"):
        np.testing.assert_array_equal(out.layers[key], reference.layers[key])
    np.testing.assert_array_equal(out.obsm["X_zipo"], reference.obsm["X_zipo"])
    np.testing.assert_array_equal(out.obs["zipo_library_size"], reference.obs["zipo_library_size"])
    # the saved config file is a valid config for `zipo train --config`
    assert zipo.load_config(path / "config.toml").to_dict() == trained_model.config.to_dict()


def test_save_refuses_existing_path_unless_overwrite(pbmc_small, trained_model, tmp_path):
    path = tmp_path / "model"
    trained_model.save(path)
    other = small_model(pbmc_small, seed=99).train()
    with pytest.raises(ValueError, match="already exists.*overwrite=True"):
        other.save(path)
    # unchanged
    loaded = zipo.ZiPo.load(path)
    np.testing.assert_array_equal(loaded.get_latent(pbmc_small), trained_model.get_latent(pbmc_small))

    other.save(path, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["model"]
    loaded = zipo.ZiPo.load(path)
    np.testing.assert_array_equal(loaded.get_latent(pbmc_small), other.get_latent(pbmc_small))


def test_crash_during_save_leaves_nothing(trained_model, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(torch, "save", boom)
    path = tmp_path / "model"
    with pytest.raises(RuntimeError, match="disk on fire"):
        trained_model.save(path)
    assert not path.exists()
    assert os.listdir(tmp_path) == []


def test_crash_during_overwrite_keeps_the_old_model(trained_model, pbmc_small, tmp_path,
                                                    monkeypatch):
    path = tmp_path / "model"
    trained_model.save(path)
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        trained_model.save(path, overwrite=True)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["model"]
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    zipo.ZiPo.load(path)


class _Payload:
    """Unpickling this calls open(marker, 'w'), i.e. runs code that creates a file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_load_refuses_malicious_pickle_without_running_it(trained_model, tmp_path):
    path = tmp_path / "model"
    trained_model.save(path)
    marker = tmp_path / "pwned"
    state = torch.load(path / "weights.pt", weights_only=True)
    state["mu_head.weight"] = _Payload(marker)
    torch.save(state, path / "weights.pt")

    # The payload is live: an unsafe load of a copy does run it.
    control = tmp_path / "control.pt"
    control_marker = tmp_path / "control-ran"
    state["mu_head.weight"] = _Payload(control_marker)
    torch.save(state, control)
    torch.load(control, weights_only=False)
    assert control_marker.exists()

    with pytest.raises(ValueError, match="could not be read safely"):
        zipo.ZiPo.load(path)
    assert not marker.exists()


def test_load_refuses_newer_format_version(trained_model, tmp_path):
    path = tmp_path / "model"
    trained_model.save(path)
    meta = json.loads((path / "zipo.json").read_text())
    assert meta["format_version"] == 1  # one fit (tests/test_fits.py: several, version 2)
    meta["format_version"] = FORMAT_VERSION + 1
    (path / "zipo.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=f"format version {FORMAT_VERSION + 1}.*upgrade"):
        zipo.ZiPo.load(path)


def test_older_saves_keep_the_options_they_were_trained_with(trained_model, pbmc_small,
                                                             reference, tmp_path):
    # A model saved before an option existed was built and trained as that option's old
    # value says, whatever today's default is.
    from zipo.io import OLDER_SAVES

    path = tmp_path / "model"
    trained_model.save(path)
    meta = json.loads((path / "zipo.json").read_text())
    for section, options in OLDER_SAVES.items():
        for name in options:
            del meta["config"][section][name]
    (path / "zipo.json").write_text(json.dumps(meta))
    loaded = zipo.ZiPo.load(path)
    assert loaded.config.model.library == "predicted" and loaded.network.library_net is not None
    assert loaded.config.model.dispersion == "gene-cell"
    assert loaded.config.train.heldout_molecules == 0 == loaded.config.train.objective_heldout
    np.testing.assert_array_equal(loaded.denoise(pbmc_small, copy=True).layers[LAYER],
                                  reference.layers[LAYER])


def test_load_with_data_continues_training(trained_model, pbmc_small, tmp_path):
    trained_model.save(tmp_path / "model")
    loaded = zipo.ZiPo.load(tmp_path / "model", adata=pbmc_small)
    loaded.train(max_epochs=1)
    assert list(loaded.history["epoch"]) == [1, 2, 3, 4]
    assert not np.array_equal(loaded.get_latent(pbmc_small), trained_model.get_latent(pbmc_small))


# --------------------------------------------------------------------------- genes and inputs
def test_reordered_genes_are_mapped_back(trained_model, pbmc_small, reference):
    perm = np.random.default_rng(0).permutation(pbmc_small.n_vars)
    shuffled = pbmc_small[:, perm].copy()
    out = trained_model.denoise(shuffled, zero_inflation=True, copy=True)
    assert list(out.var_names) == list(pbmc_small.var_names[perm])
    for key in (LAYER, "zipo_zero_prob"):
        np.testing.assert_allclose(out.layers[key], reference.layers[key][:, perm], rtol=1e-6,
                                   atol=1e-7)
    np.testing.assert_allclose(out.obsm["X_zipo"], reference.obsm["X_zipo"], rtol=1e-6, atol=1e-6)


def _as(adata, kind):
    a = adata.copy()
    x = a.X
    a.X = {"csr": sp.csr_matrix(x), "csc": sp.csc_matrix(x), "dense": x.toarray(),
           "int-dense": x.toarray().astype(np.int64)}[kind]
    return a


@pytest.mark.parametrize("kind", ["csc", "dense", "int-dense"])
def test_input_formats_give_the_same_outputs(trained_model, pbmc_small, reference, kind):
    out = trained_model.denoise(_as(pbmc_small, kind), zero_inflation=True, copy=True)
    for key in (LAYER, "zipo_zero_prob"):
        np.testing.assert_allclose(out.layers[key], reference.layers[key], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.obsm["X_zipo"], reference.obsm["X_zipo"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stored", ["csr", "dense"])
def test_backed_input_gives_the_same_outputs(trained_model, pbmc_small, reference, tmp_path,
                                             stored):
    path = tmp_path / "cells.h5ad"
    _as(pbmc_small, stored).write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        with pytest.raises(ValueError, match="backed"):
            trained_model.denoise(backed)  # cannot write into a read-only file
        out = trained_model.denoise(backed, zero_inflation=True, copy=True)
        assert not out.isbacked
        for key in (LAYER, "zipo_zero_prob"):
            np.testing.assert_allclose(out.layers[key], reference.layers[key], rtol=1e-5,
                                       atol=1e-6)
        np.testing.assert_allclose(out.obsm["X_zipo"], reference.obsm["X_zipo"], rtol=1e-5,
                                   atol=1e-5)
        np.testing.assert_allclose(_dense(out.X), pbmc_small.X.toarray())
        # the caller's backed AnnData is still usable afterwards
        np.testing.assert_allclose(
            trained_model.get_latent(backed), reference.obsm["X_zipo"], rtol=1e-5, atol=1e-5)
    finally:
        backed.file.close()


def _dense(x):
    return x.toarray() if sp.issparse(x) else np.asarray(x)


@pytest.mark.parametrize("kind", ["csc", "dense"])
def test_training_on_other_formats_matches_csr(pbmc_small, kind):
    """Training sees the same batches whatever the storage format: identical histories."""
    csr = small_model(_as(pbmc_small, "csr"), seed=4).train()
    other = small_model(_as(pbmc_small, kind), seed=4).train()
    cols = [c for c in csr.history.columns if c not in ("seconds", "data_wait_seconds")]
    pd.testing.assert_frame_equal(csr.history[cols], other.history[cols], check_exact=False,
                                  rtol=1e-6)


def test_counts_from_a_layer(pbmc_small, trained_model, reference):
    """Raw counts in a layer while X holds log-normalised values (the usual scanpy layout)."""
    a = pbmc_small.copy()
    a.layers["counts"] = a.X.copy()
    lib = np.asarray(a.X.sum(axis=1))
    a.X = sp.csr_matrix(np.log1p(a.X.toarray() / lib * 1e4))
    model = small_model(a, layer="counts", seed=0, max_epochs=3, likelihood="zip",
                        library="predicted").train()  # as trained_model
    np.testing.assert_array_equal(model.history["train_loss"], trained_model.history["train_loss"])
    out = model.denoise(a, copy=True)
    np.testing.assert_array_equal(out.layers[LAYER], reference.layers[LAYER])


# --------------------------------------------------------------------------- likelihoods
@pytest.mark.parametrize("likelihood", ["zip", "zinb", "poisson", "nb"])
def test_all_likelihoods_train_and_denoise(pbmc_small, likelihood):
    """Outputs of every likelihood: ranges, zero probabilities, expectations, heads (whether
    each one learns is checked against the no-model baseline below)."""
    # the plain posterior (borrowing from neighbours: tests/test_neighbours.py)
    model = small_model(pbmc_small, likelihood=likelihood, neighbour_pooling="off").train()
    assert len(model.history) == 2
    assert np.all(np.isfinite(model.history.drop(columns=["seconds", "data_wait_seconds"]).to_numpy()))
    out = model.denoise(pbmc_small, expectation="rate", zero_inflation=True, copy=True)
    den, z = out.layers[LAYER], out.layers["zipo_zero_prob"]
    assert np.all(np.isfinite(den)) and np.all(den >= 0)
    mixture = model.denoise(pbmc_small, expectation="mixture", copy=True).layers[LAYER]
    if likelihood in ("zip", "zinb"):
        assert np.all((z >= 0) & (z <= 1)) and np.any(z > 0)
        assert np.all(mixture <= den)
    else:  # no zero inflation: z is 0 and both expectations agree
        assert np.all(z == 0)
        np.testing.assert_array_equal(mixture, den)
    lognorm = model.denoise(pbmc_small, expectation="lognorm", copy=True).layers[LAYER]
    lib = out.obs["zipo_library_size"].to_numpy()[:, None]
    assert np.all(lognorm >= 0) and np.all(lognorm <= np.log1p(1e4 * mixture / lib) + 1e-5)
    assert (model.network.theta_head is not None) == (likelihood in ("zinb", "nb"))
    assert f"likelihood={likelihood!r}" in repr(model)
    posterior = model.denoise(pbmc_small, expectation="posterior", copy=True).layers[LAYER]
    if likelihood in ("zip", "poisson"):  # no per-cell noise: the rate whatever the count
        np.testing.assert_array_equal(posterior, den)
    else:  # each count moves its rate towards it: up where x > rate, down where x < rate
        x = pbmc_small.X.toarray()
        assert np.all(np.isfinite(posterior)) and np.all(posterior >= 0)
        assert np.all((posterior >= den * (1 - 1e-5)) | (x < den))
        assert np.all((posterior <= den * (1 + 1e-5)) | (x > den) | (x == 0))
        assert np.abs(posterior - den).max() > 0.1
        # the same values for a subset of genes, in the genes' order
        genes = list(pbmc_small.var_names[[7, 3, 100]])
        some = model.denoise(pbmc_small, expectation="posterior", genes=genes, copy=True)
        np.testing.assert_allclose(some.obsm["zipo_denoised"].to_numpy(),
                                   posterior[:, [7, 3, 100]], rtol=1e-6)


# Every likelihood learns real counts: trained briefly on the PBMC 4k demo sample (all 2,170
# cells, the 500 genes detected in the most cells), each one's validation NLL per entry beats the
# no-model baseline (each cell's library size x the genes' mean proportions, Poisson;
# ZiPo.baseline_nll, what `zipo demo` prints) by at least 5%, and the overdispersed likelihoods
# beat their Poisson counterparts. Seen over seeds 0-3: 8-13% below the baseline (ZIP), 15-17%
# (Poisson), 18-23% (NB, ZINB); NB 0.06-0.18 below Poisson, ZINB 0.2-0.4 below ZIP. With the NB
# terms (theta penalty, rate MSE) weighed per cell instead of per entry (the old ZINB bug, 500x
# too strong here), seeds 0 and 1 gave ZINB 2-4% below the baseline and above ZIP, NB above
# Poisson.
LEARNING_GENES = 500


@pytest.fixture(scope="module")
def learning_data(pbmc4k_demo_data):
    adata = pbmc4k_demo_data()
    detected = np.asarray((adata.X > 0).sum(axis=0)).ravel()
    return adata[:, np.sort(np.argsort(-detected, kind="stable")[:LEARNING_GENES])].copy()


@pytest.mark.slow
def test_every_likelihood_beats_the_no_model_baseline(learning_data):
    nll, baselines = {}, set()
    for likelihood in ("zip", "zinb", "poisson", "nb"):
        # learning_rate 0.003 (decaying to the 0.001 floor): with the default flat 0.001 ZIP
        # was still above the baseline after 5 epochs; with 0.01 Poisson's validation NLL jumped.
        # The paper's training (reconstruct all counts, keep the best validation loss): the
        # figures above were measured with it, and it is what the whole-cell NLL scores.
        model = zipo.ZiPo(learning_data, preset="paper", likelihood=likelihood,
                          encoder_dims=SMALL_ENCODER, learning_rate=0.003, max_epochs=8,
                          batch_size=128, seed=0, verbose=False).train()
        val = learning_data[model.validation_indices].copy()
        nll[likelihood] = model.evaluate(val)["nll"]  # the best epoch's weights, restored
        assert nll[likelihood] == pytest.approx(model.history["validation_nll"].min(), rel=1e-5)
        baselines.add(round(model.baseline_nll(), 10))
    assert len(baselines) == 1  # one seed, one validation split for all four
    baseline = baselines.pop()
    for likelihood, value in nll.items():
        assert value < 0.95 * baseline, (likelihood, value, baseline, nll)
    assert nll["zinb"] < nll["zip"], nll
    assert nll["nb"] < nll["poisson"], nll


# --------------------------------------------------------------------------- covariates
def test_categorical_and_continuous_covariates(pbmc_small, tmp_path):
    a = pbmc_small.copy()
    a.obs["batch"] = pd.Categorical(np.where(np.arange(a.n_obs) % 2 == 0, "b1", "b2"))
    a.obs["depth"] = np.log(a.obs["nCount_RNA"].to_numpy(dtype=np.float64))
    model = small_model(a, covariates=["batch", "groups", "depth"]).train()
    # one-hot of 2 + 2 categories, plus one standardised number
    assert model.covariate_encoder.width == 5
    assert model.network.n_covariates == 5
    assert "covariates=['batch', 'groups', 'depth']" in repr(model)
    base = model.denoise(a, copy=True).layers[LAYER]
    assert np.all(np.isfinite(base))

    # the decoder uses them: changing a covariate changes the output, not the latents
    flipped = a.copy()
    flipped.obs["batch"] = pd.Categorical(np.where(a.obs["batch"] == "b1", "b2", "b1"))
    out = model.denoise(flipped, copy=True)
    assert not np.allclose(out.layers[LAYER], base)
    np.testing.assert_allclose(out.obsm["X_zipo"], model.get_latent(a), rtol=1e-6, atol=1e-6)
    shifted = a.copy()
    shifted.obs["depth"] = shifted.obs["depth"] + 1.0
    assert not np.allclose(model.denoise(shifted, copy=True).layers[LAYER], base)

    # categories are matched by name, not by order of appearance; a subset of categories works
    subset = a[a.obs["batch"] == "b2"].copy()
    subset.obs["batch"] = subset.obs["batch"].astype(str)
    np.testing.assert_allclose(model.denoise(subset, copy=True).layers[LAYER],
                               base[a.obs["batch"].to_numpy() == "b2"], rtol=1e-5, atol=1e-6)

    # the encoding survives save/load
    model.save(tmp_path / "m")
    loaded = zipo.ZiPo.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.denoise(a, copy=True).layers[LAYER], base)


# --------------------------------------------------------------------------- convenience
def test_one_call_denoise(pbmc_small):
    result = zipo.denoise(pbmc_small, max_epochs=2, encoder_dims=SMALL_ENCODER, batch_size=32,
                          verbose=False)
    assert result is None
    den = pbmc_small.layers[LAYER]
    assert den.shape == pbmc_small.shape and np.all(np.isfinite(den)) and np.all(den >= 0)
    assert pbmc_small.obsm["X_zipo"].shape == (pbmc_small.n_obs, SMALL_ENCODER[-1])

    fresh = pbmc_small.copy()
    del fresh.layers[LAYER]
    out, model = zipo.denoise(fresh, max_epochs=2, encoder_dims=SMALL_ENCODER, batch_size=32,
                              verbose=False, copy=True, return_model=True)
    assert LAYER not in fresh.layers and LAYER in out.layers
    assert isinstance(model, zipo.ZiPo) and len(model.history) == 2
    # same default seed, same result
    np.testing.assert_array_equal(out.layers[LAYER], den)
    # a preset's likelihood is not overridden by the one-call function's defaults
    _, dca = zipo.denoise(fresh, preset="dca", max_epochs=1, batch_size=32, verbose=False,
                          copy=True, return_model=True)
    assert dca.config.model.likelihood == "nb"


def test_defaults_are_zinb_observed_library_and_the_posterior(pbmc_small):
    model = small_model(pbmc_small, seed=0).train()
    m = model.config.model
    assert (m.likelihood, m.library, m.dispersion) == ("zinb", "observed", "gene-cell")
    default = model.denoise(pbmc_small, copy=True).layers[LAYER]
    posterior = model.denoise(pbmc_small, expectation="posterior", copy=True).layers[LAYER]
    rate = model.denoise(pbmc_small, expectation="rate", copy=True).layers[LAYER]
    np.testing.assert_array_equal(default, posterior)
    assert np.abs(default - rate).max() > 0.1
    # the paper's preset is the paper's model: ZIP, LibNet, and its posterior is its rate
    paper = small_model(pbmc_small, seed=0, preset="paper").train()
    assert paper.network.theta_head is None and paper.network.library_net is not None
    np.testing.assert_array_equal(
        paper.denoise(pbmc_small, copy=True).layers[LAYER],
        paper.denoise(pbmc_small, expectation="rate", copy=True).layers[LAYER])


def test_repr(pbmc_small, trained_model):
    untrained = small_model(pbmc_small)
    text = repr(untrained)
    assert text.startswith("ZiPo(likelihood='zinb', genes=230, encoder=[64, 16]")
    assert "not trained" in text
    assert "trained 3 epochs" in repr(trained_model)
    n_params = sum(p.numel() for p in trained_model.network.parameters())
    assert f"parameters={n_params:,}" in repr(trained_model)
