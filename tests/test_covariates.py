"""Known covariates: encoding, batch correction with ``denoise(covariate_values=...)``, errors,
and persistence of the encoding.

The batch-effect tests use the PBMC 4k demo sample (1,000 of its cells x its 300 most expressed
genes) with a simulated batch effect: cells split at random into A and B, and in B 30% of genes
scaled by 2^(+-U(1,2)) (binomial thinning down, Poisson top-up up, so counts stay integer).
What they establish, and what they do not, is spelled out in each test;
benchmarks/batch_correction.py has the figures.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import zipo
from zipo.data.covariates import CovariateEncoder

# One fit: the identities tested here are a network's (tests/test_fits.py: several fits).
TINY = dict(encoder_dims=[32, 8], batch_size=32, seed=0, verbose=False, n_fits=1)


# ----------------------------------------------------------------------------- encoding
def test_categorical_is_one_hot_and_continuous_is_standardised(pbmc_small):
    obs = pbmc_small.obs
    enc = CovariateEncoder.fit(obs, ["groups", "nCount_RNA"])
    assert enc.names == ["groups", "nCount_RNA"]
    kinds = {s["name"]: s["kind"] for s in enc.specs}
    assert kinds == {"groups": "categorical", "nCount_RNA": "continuous"}
    assert enc.specs[0]["categories"] == ["g1", "g2"]
    assert enc.width == 3
    m = enc.transform(obs)
    assert m.shape == (pbmc_small.n_obs, 3) and m.dtype == np.float32
    onehot = m[:, :2]
    assert set(np.unique(onehot)) == {0.0, 1.0} and (onehot.sum(axis=1) == 1).all()
    np.testing.assert_array_equal(onehot[:, 1] == 1, obs["groups"].astype(str) == "g2")
    counts = obs["nCount_RNA"].to_numpy(float)
    np.testing.assert_allclose(m[:, 2], (counts - counts.mean()) / counts.std(), rtol=1e-5)
    assert abs(m[:, 2].mean()) < 1e-5 and abs(m[:, 2].std() - 1) < 1e-4

    # New cells are encoded with the training categories and mean/sd, not their own.
    new = obs.iloc[:5].copy()
    new["groups"] = "g2"
    m2 = enc.transform(new)
    assert (m2[:, :2] == [0, 1]).all()
    np.testing.assert_allclose(m2[:, 2], m[:5, 2])


def test_category_order_bool_and_constant_columns(pbmc_small):
    obs = pbmc_small.obs.copy()
    obs["site"] = pd.Categorical(np.where(obs["groups"] == "g1", "zeta", "alpha"),
                                 categories=["zeta", "unused", "alpha"])
    obs["flag"] = obs["nCount_RNA"].to_numpy() > 150
    obs["const"] = 7.0
    enc = CovariateEncoder.fit(obs, ["site", "flag", "const"])
    # A categorical keeps its declared order, minus unused levels; bools are categories.
    assert [s.get("categories") for s in enc.specs[:2]] == [["zeta", "alpha"], ["False", "True"]]
    assert enc.specs[2]["kind"] == "continuous" and enc.specs[2]["sd"] == 1.0
    m = enc.transform(obs)
    assert m.shape == (len(obs), 5) and np.isfinite(m).all() and (m[:, 4] == 0).all()


def test_model_gets_covariates_beside_the_latents(pbmc_small):
    model = zipo.ZiPo(pbmc_small, covariates=["groups", "nCount_RNA"], **TINY)
    assert model.network.n_covariates == 3
    # the decoder reads [U (8 latents), covariates (3)]; the heads its last layer and them
    assert model.network.decoder[0][0].in_features == 8 + 3
    # with covariates the decoder keeps one hidden layer of 128 (presets.covariate_options)
    assert model.config.model.decoder_dims == [128] and len(model.network.decoder) == 1
    for head in (model.network.mu_head, model.network.z_head, model.network.theta_head):
        assert head.in_features == model.config.model.decoder_dims[-1] + 3
    linear = zipo.ZiPo(pbmc_small, covariates=["groups", "nCount_RNA"], decoder_dims=[], **TINY)
    assert linear.network.mu_head.in_features == 8 + 3  # a linear decoder: the heads read them
    predicted = zipo.ZiPo(pbmc_small, covariates=["groups", "nCount_RNA"], library="predicted",
                          **TINY)
    assert predicted.network.library_net[0][0].in_features == 8 + 3  # LibNet too
    assert "covariates=['groups', 'nCount_RNA']" in repr(model)


# ----------------------------------------------------------------------------- batch effect
def _with_batch_effect(adata, seed=0, fraction=0.3):
    """obs['batch'] A/B at random; in B a random ``fraction`` of genes x 2^(+-U(1,2))."""
    rng = np.random.default_rng(seed)
    x = sp.csr_matrix(adata.X).toarray().astype(np.int64)
    n, g = x.shape
    in_b = rng.permutation(n) < n // 2
    log2f = np.zeros(g)
    hit = rng.permutation(g) < int(fraction * g)
    log2f[hit] = rng.uniform(1, 2, hit.sum()) * rng.choice([-1, 1], hit.sum())
    f = 2.0 ** log2f
    rate = x.sum(axis=1, keepdims=True) * (x.sum(axis=0) / x.sum())[None, :]
    down, up = hit & (f < 1), hit & (f > 1)
    xb = x[in_b]
    xb[:, down] = rng.binomial(xb[:, down], f[down])
    xb[:, up] += rng.poisson((f[up] - 1) * rate[in_b][:, up])
    x[in_b] = xb
    out = adata.copy()
    out.X = sp.csr_matrix(x.astype(np.float32))
    out.obs["batch"] = pd.Categorical(np.where(in_b, "B", "A"))
    return out, log2f


@pytest.fixture(scope="module")
def batch_data(pbmc4k_demo_data):
    adata = pbmc4k_demo_data()
    cells = np.sort(np.random.default_rng(1).choice(adata.n_obs, 1000, replace=False))
    adata = adata[cells]
    totals = np.asarray(adata.X.sum(axis=0)).ravel()
    adata = adata[:, np.sort(np.argsort(-totals, kind="stable")[:300])].copy()
    return _with_batch_effect(adata, seed=0)


# learning_rate 0.01 (decaying 0.9/epoch to 0.001): at a flat 0.001 Adam moves the one-hot
# weights by at most ~0.001 per step, too slowly to learn 2-4x effects in a short test.
BATCH_OPTIONS = dict(covariates=["batch"], encoder_dims=[256, 64], max_epochs=20, batch_size=128,
                     learning_rate=0.01, seed=0, verbose=False)


@pytest.fixture(scope="module")
def batch_model(batch_data):
    adata, _ = batch_data
    return zipo.ZiPo(adata, **BATCH_OPTIONS).train()


@pytest.fixture(scope="module")
def mmd_model(batch_data):
    """The same model trained with the latent batch-mixing penalty (alpha_mmd=1)."""
    adata, _ = batch_data
    return zipo.ZiPo(adata, alpha_mmd=1.0, **BATCH_OPTIONS).train()


def _knn_mixing(latent, batch, k=30):
    """Mean fraction of each cell's k nearest neighbours from the other batch, over that
    batch's share of the other cells: 1 = perfectly mixed, 0 = batches apart."""
    from scipy.spatial import cKDTree

    nn = cKDTree(latent).query(latent, k=k + 1)[1][:, 1:]
    other = (batch[nn] != batch[:, None]).mean(axis=1)
    share = np.array([(batch != b).sum() / (len(batch) - 1) for b in batch])
    return float(other.mean() / share.mean())


def _label_purity(latent, labels, k=30):
    from scipy.spatial import cKDTree

    nn = cKDTree(latent).query(latent, k=k + 1)[1][:, 1:]
    known = labels != "?"
    return float((labels[nn] == labels[:, None])[known].mean())


def _normalised(m, control):
    return m / m[:, control].sum(axis=1, keepdims=True)


def _between_batch_lfc(m, is_b, genes, control):
    """|log2(mean over B cells / mean over A cells)| per gene of ``genes``."""
    mu = _normalised(m, control)
    return np.abs(np.log2(mu[is_b][:, genes].mean(axis=0) / mu[~is_b][:, genes].mean(axis=0)))


def test_decoder_learns_the_batch_effect(batch_data, batch_model):
    """Predicting every cell at B vs at A shifts the affected genes by the true effect."""
    adata, log2f = batch_data
    hit = log2f != 0
    at_a = batch_model.denoise(adata, copy=True, covariate_values={"batch": "A"})
    at_b = batch_model.denoise(adata, copy=True, covariate_values={"batch": "B"})
    est = np.log2(_normalised(at_b.layers["zipo_denoised"], ~hit).mean(axis=0)
                  / _normalised(at_a.layers["zipo_denoised"], ~hit).mean(axis=0))
    r = np.corrcoef(est[hit], log2f[hit])[0, 1]
    sign = (np.sign(est[hit]) == np.sign(log2f[hit])).mean()
    assert r > 0.8, r  # 0.94 here
    assert sign > 0.9, sign  # 0.99 here
    assert np.abs(est[hit]).mean() > 2 * np.abs(est[~hit]).mean()  # 0.37 vs 0.11


def test_reference_batch_shrinks_the_between_batch_difference(batch_data, batch_model):
    adata, log2f = batch_data
    hit = log2f != 0
    is_b = adata.obs["batch"].to_numpy() == "B"
    own = batch_model.denoise(adata, copy=True)
    ref = batch_model.denoise(adata, copy=True, covariate_values={"batch": "A"})
    before = _between_batch_lfc(own.layers["zipo_denoised"], is_b, hit, ~hit).mean()
    after = _between_batch_lfc(ref.layers["zipo_denoised"], is_b, hit, ~hit).mean()
    raw = _between_batch_lfc(adata.X.toarray().astype(float), is_b, hit, ~hit).mean()
    assert before > 0.7 * raw  # at its own batch each cell keeps the effect (1.36 vs 1.51)
    assert after < 0.9 * before, (before, after)  # 1.36 -> 0.99 here


def test_alpha_mmd_mixes_the_batches_in_the_latents(batch_data, batch_model, mmd_model):
    """Covariates alone leave the latents split by batch (the encoder sees the affected
    counts); the MMD penalty mixes them and keeps the cell types apart."""
    adata, _ = batch_data
    batch = adata.obs["batch"].astype(str).to_numpy()
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    plain, mixed = batch_model.get_latent(adata), mmd_model.get_latent(adata)
    assert _knn_mixing(plain, batch) < 0.2  # 0.01 here
    assert _knn_mixing(mixed, batch) > 0.8  # 0.95 here
    # Mixing costs some purity: 0.61 against 0.72 here, 0.70 against 0.83 at PBMC 4k's full
    # size (benchmarks/batch_correction.py, 3 seeds), with either validation rule.
    assert _label_purity(mixed, labels) > _label_purity(plain, labels) - 0.15
    # The penalty is a training term only: validation losses stay comparable.
    assert "validation_loss" in mmd_model.history
    assert mmd_model.history["train_loss"].iloc[-1] > mmd_model.history["train_nll"].iloc[-1]


def test_reference_batch_removes_most_of_the_batch_effect(batch_data, batch_model, mmd_model):
    """With alpha_mmd the latents carry no batch, so the decoder's batch input carries all of
    it: predicting every cell at batch A removes most of the effect (covariates alone: 1/4)."""
    adata, log2f = batch_data
    hit = log2f != 0
    is_b = adata.obs["batch"].to_numpy() == "B"
    raw = _between_batch_lfc(adata.X.toarray().astype(float), is_b, hit, ~hit).mean()
    own = mmd_model.denoise(adata, copy=True)
    ref = mmd_model.denoise(adata, copy=True, covariate_values={"batch": "A"})
    before = _between_batch_lfc(own.layers["zipo_denoised"], is_b, hit, ~hit).mean()
    after = _between_batch_lfc(ref.layers["zipo_denoised"], is_b, hit, ~hit).mean()
    assert before > 0.5 * raw  # at its own batch each cell keeps the effect (1.13 vs 1.51)
    assert after < 0.2 * before, (before, after)  # 1.13 -> 0.10 here
    plain = batch_model.denoise(adata, copy=True, covariate_values={"batch": "A"})
    assert after < 0.5 * _between_batch_lfc(plain.layers["zipo_denoised"], is_b, hit, ~hit).mean()
    # The effect the decoder learned still matches the simulated one.
    at_b = mmd_model.denoise(adata, copy=True, covariate_values={"batch": "B"})
    est = np.log2(_normalised(at_b.layers["zipo_denoised"], ~hit).mean(axis=0)
                  / _normalised(ref.layers["zipo_denoised"], ~hit).mean(axis=0))
    assert np.corrcoef(est[hit], log2f[hit])[0, 1] > 0.9


def test_posterior_at_reference_covariates_keeps_each_cells_deviation(small_batch_model):
    # The posterior needs the measured counts, which were measured at the cell's own batch:
    # at other covariates it is the cell's own posterior times the ratio of the two rates.
    adata, model = small_batch_model
    assert model.config.model.likelihood == "zinb"
    own = model.denoise(adata, expectation="posterior", copy=True).layers["zipo_denoised"]
    rate = model.denoise(adata, expectation="rate", copy=True).layers["zipo_denoised"]
    ref = {"batch": "b1"}
    at_a = model.denoise(adata, expectation="posterior", copy=True, covariate_values=ref)
    rate_a = model.denoise(adata, expectation="rate", copy=True, covariate_values=ref)
    got, want = at_a.layers["zipo_denoised"], own * rate_a.layers["zipo_denoised"] / rate
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    in_a = adata.obs["batch"].to_numpy() == "b1"
    np.testing.assert_allclose(got[in_a], own[in_a], rtol=1e-5, atol=1e-7)
    assert not np.allclose(got[~in_a], own[~in_a], rtol=1e-3)
    # a covariate adata lacks is the cells' own: the posterior at it is their posterior
    lacking = adata.copy()
    del lacking.obs["batch"]
    at_own = model.denoise(lacking, expectation="posterior", copy=True, covariate_values=ref)
    np.testing.assert_allclose(at_own.layers["zipo_denoised"][in_a], own[in_a], rtol=1e-5)
    # the default expectation is this posterior
    default = model.denoise(adata, copy=True, covariate_values=ref).layers["zipo_denoised"]
    np.testing.assert_array_equal(default, got)


def test_mmd_penalty_is_added_in_training_only(small_batch_model):
    from zipo.train.loss import loss_terms

    adata, model = small_batch_model
    net = copy.deepcopy(model.network)  # train mode updates batch-norm statistics
    config = dataclasses.replace(model.config.model, alpha_mmd=1.0)
    x = torch.tensor(adata.X.toarray())
    c = torch.tensor(model.covariate_encoder.transform(adata.obs))
    groups = [(0, 2)]
    net.train()
    out = net(x, c)
    plain = loss_terms(net, out, x, config).total
    with_mmd = loss_terms(net, out, x, config, covariates=c, mmd_groups=groups).total
    assert with_mmd > plain
    off = dataclasses.replace(config, alpha_mmd=0.0)
    assert loss_terms(net, out, x, off, covariates=c, mmd_groups=groups).total == plain
    net.eval()
    out = net(x, c)
    assert (loss_terms(net, out, x, config, covariates=c, mmd_groups=groups).total
            == loss_terms(net, out, x, config).total)


def test_covariate_values_change_only_the_decoder_input(batch_data, batch_model):
    adata, _ = batch_data
    is_b = adata.obs["batch"].to_numpy() == "B"
    own = batch_model.denoise(adata, copy=True, zero_inflation=True)
    ref = batch_model.denoise(adata, copy=True, zero_inflation=True,
                              covariate_values={"batch": "A"})
    np.testing.assert_array_equal(own.obsm["X_zipo"], ref.obsm["X_zipo"])
    np.testing.assert_array_equal(batch_model.get_latent(adata), ref.obsm["X_zipo"])
    # Cells already in A are predicted exactly as before; cells of B change.
    for key in ("zipo_denoised", "zipo_zero_prob"):
        np.testing.assert_array_equal(own.layers[key][~is_b], ref.layers[key][~is_b])
        assert not np.allclose(own.layers[key][is_b], ref.layers[key][is_b])
    # The caller's obs is not modified.
    assert (adata.obs["batch"].to_numpy() == np.where(is_b, "B", "A")).all()


def test_continuous_covariate_reference_value(pbmc_small):
    pbmc_small.obs["depth"] = np.log(pbmc_small.obs["nCount_RNA"].to_numpy(float))
    model = zipo.ZiPo(pbmc_small, covariates=["depth"], max_epochs=2, **TINY).train()
    a = model.denoise(pbmc_small, copy=True)
    b = model.denoise(pbmc_small, copy=True, covariate_values={"depth": 5.0})
    c = model.denoise(pbmc_small, copy=True, covariate_values={"depth": 5})
    np.testing.assert_array_equal(a.obsm["X_zipo"], b.obsm["X_zipo"])
    assert not np.allclose(a.layers["zipo_denoised"], b.layers["zipo_denoised"])
    np.testing.assert_array_equal(b.layers["zipo_denoised"], c.layers["zipo_denoised"])
    with pytest.raises(ValueError, match="covariate 'depth' was numeric when the model was trained"):
        model.denoise(pbmc_small, copy=True, covariate_values={"depth": "deep"})


def test_one_call_denoise_passes_covariate_values(small_batch_model):
    adata, _ = small_batch_model
    out, model = zipo.denoise(adata, covariates=["batch"], covariate_values={"batch": "b1"},
                              copy=True, return_model=True, max_epochs=2, alpha_mmd=1.0, **TINY)
    assert model.config.model.alpha_mmd == 1.0
    ref = model.denoise(adata, copy=True, covariate_values={"batch": "b1"})
    own = model.denoise(adata, copy=True)
    np.testing.assert_array_equal(out.layers["zipo_denoised"], ref.layers["zipo_denoised"])
    assert not np.allclose(out.layers["zipo_denoised"], own.layers["zipo_denoised"])


# ----------------------------------------------------------------------------- errors
@pytest.fixture(scope="module")
def small_batch_model(_pbmc_small):
    adata = _pbmc_small.copy()
    adata.obs["batch"] = pd.Categorical(np.where(adata.obs["groups"] == "g1", "b1", "b2"))
    return adata, zipo.ZiPo(adata, covariates=["batch"], max_epochs=2, **TINY).train()


def test_unknown_covariate_name_is_refused(small_batch_model):
    adata, model = small_batch_model
    with pytest.raises(ValueError, match="covariate_values names '?donor'?.*its covariates are '?batch'?"):
        model.denoise(adata, copy=True, covariate_values={"donor": "b1"})


def test_unseen_category_is_refused(small_batch_model):
    adata, model = small_batch_model
    with pytest.raises(ValueError, match="covariate 'batch' has categories the model never saw "
                                         "in training: '?b3'?.*knows '?b1'?, '?b2'?"):
        model.denoise(adata, copy=True, covariate_values={"batch": "b3"})
    bad = adata.copy()
    bad.obs["batch"] = "b9"
    with pytest.raises(ValueError, match="never saw in training: '?b9'?"):
        model.denoise(bad, copy=True)


def test_covariate_values_without_covariates_is_refused(trained_model, pbmc_small):
    with pytest.raises(ValueError, match="its covariates are none"):
        trained_model.denoise(pbmc_small, copy=True, covariate_values={"batch": "A"})


def test_missing_covariate_column_is_refused(small_batch_model):
    adata, model = small_batch_model
    bad = adata.copy()
    del bad.obs["batch"]
    with pytest.raises(ValueError, match="covariate 'batch' is not a column of adata.obs"):
        model.denoise(bad, copy=True)
    # ... unless covariate_values supplies it for every cell
    out = model.denoise(bad, copy=True, covariate_values={"batch": "b1"})
    assert np.isfinite(out.layers["zipo_denoised"]).all()


def test_alpha_mmd_needs_a_categorical_covariate(pbmc_small):
    with pytest.raises(ValueError, match="alpha_mmd=1 mixes .* but the model has none "
                                         r"\(covariates: none\)"):
        zipo.ZiPo(pbmc_small, alpha_mmd=1.0, **TINY)
    with pytest.raises(ValueError, match=r"has none \(covariates: '?nCount_RNA'?\).*astype\(str\)"):
        zipo.ZiPo(pbmc_small, covariates=["nCount_RNA"], alpha_mmd=1.0, **TINY)
    with pytest.raises(ValueError, match="alpha_mmd must be >= 0"):
        zipo.ZiPo(pbmc_small, covariates=["groups"], alpha_mmd=-1.0, **TINY)
    with pytest.raises(ValueError, match="mmd_covariates names '?nCount_RNA'?, not a categorical"):
        zipo.ZiPo(pbmc_small, covariates=["groups", "nCount_RNA"], alpha_mmd=1.0,
                  mmd_covariates=["nCount_RNA"], **TINY)
    # Also when set at train() time.
    model = zipo.ZiPo(pbmc_small, **TINY)
    with pytest.raises(ValueError, match="but the model has none"):
        model.train(max_epochs=1, alpha_mmd=0.5)


def test_mmd_groups_are_the_one_hot_columns(pbmc_small):
    obs = pbmc_small.obs
    obs["site"] = np.where(obs["nCount_RNA"].to_numpy() > 150, "s1", "s2")
    options = dict(covariates=["nCount_RNA", "groups", "site"], alpha_mmd=1.0, **TINY)
    # columns: nCount_RNA 0, groups 1-2, site 3-4
    assert zipo.ZiPo(pbmc_small, **options)._mmd_groups() == [(1, 3), (3, 5)]
    assert zipo.ZiPo(pbmc_small, mmd_covariates=["site"], **options)._mmd_groups() == [(3, 5)]
    assert zipo.ZiPo(pbmc_small, **{**options, "alpha_mmd": 0.0})._mmd_groups() == []
    model = zipo.ZiPo(pbmc_small, max_epochs=2, **options).train()
    assert np.isfinite(model.history["train_loss"]).all()


def test_integer_covariate_with_few_values_warns(pbmc_small):
    obs = pbmc_small.obs
    obs["plate"] = (np.arange(len(obs)) % 3).astype(np.int64)
    with pytest.warns(UserWarning, match=r"covariate 'plate' holds integers with only 3 distinct "
                                         r"values.*astype\(str\)"):
        enc = CovariateEncoder.fit(obs, ["plate"])
    assert enc.specs[0]["kind"] == "continuous"
    # No warning for counts (many values), floats, strings or categories.
    obs["plate_str"] = obs["plate"].astype(str)
    obs["depth"] = obs["nCount_RNA"].astype(float)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enc = CovariateEncoder.fit(obs, ["nCount_RNA", "depth", "plate_str", "groups"])
    assert enc.specs[2] == {"name": "plate_str", "kind": "categorical",
                            "categories": ["0", "1", "2"]}


def test_covariate_messages_speak_r_inside_the_r_package(pbmc_small, monkeypatch):
    """Inside the R package (zipo.errors.speak_r) the covariate errors and the integer-label
    notice name colData, NA and factor() instead of adata.obs, NaN and .astype(str)."""
    import zipo.errors

    monkeypatch.setattr(zipo.errors, "_language", "r")
    monkeypatch.setattr(zipo.errors, "_notices", [])
    obs = pbmc_small.obs.copy()
    obs["plate"] = (np.arange(len(obs)) % 3).astype(np.int64)
    obs["with_na"] = pd.Series(np.where(np.arange(len(obs)) < 2, None, "a"), index=obs.index)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # in R a notice is kept for R to show, not warned
        CovariateEncoder.fit(obs, ["plate"])
    (said,) = zipo.errors.take_notices()
    assert "covariate 'plate' holds integers" in said
    assert said.endswith("make the column a factor first: sce$plate <- factor(sce$plate)")
    cases = [  # (call, its message in R, a word its Python message has instead)
        (lambda: CovariateEncoder.fit(obs, ["batch"]),
         r"^covariate 'batch' is not a column of colData \(or the Seurat meta\.data\)",
         "adata.obs"),
        (lambda: CovariateEncoder.fit(obs, ["with_na"]),
         r"^covariate 'with_na' has 2 NA values; fill them \(e\.g\. with an 'unknown' level\)",
         "NaN"),
        (lambda: CovariateEncoder.fit(obs, ["nCount_RNA"]).mmd_groups(1.0, []),
         r"pass e\.g\. covariates = \"batch\" with a factor or character colData column",
         "astype(str)"),
        (lambda: CovariateEncoder.fit(obs, ["nCount_RNA"]).transform(
            obs.assign(nCount_RNA="deep")), r"was numeric when the model was trained but is not",
         f"is {pd.Series(['deep']).dtype} now"),
    ]
    for call, message, python_word in cases:
        with pytest.raises(zipo.errors.InputError, match=message) as error:
            call()
        assert not any(word in str(error.value) for word in ("adata", "NaN", "astype", "dtype"))
        assert python_word in error.value.message("python")


# ----------------------------------------------------------------------------- persistence
def test_save_load_keeps_the_covariate_encoding(small_batch_model, tmp_path):
    adata, model = small_batch_model
    adata = adata.copy()
    adata.obs["depth"] = adata.obs["nCount_RNA"].astype(float)
    model = zipo.ZiPo(adata, covariates=["batch", "depth"], max_epochs=2, **TINY).train()
    model.save(tmp_path / "m")
    loaded = zipo.ZiPo.load(tmp_path / "m")
    assert loaded.covariate_encoder.specs == model.covariate_encoder.specs
    assert loaded.config.data.covariates == ["batch", "depth"]
    for values in (None, {"batch": "b2"}, {"batch": "b1", "depth": 100.0}):
        a = model.denoise(adata, copy=True, covariate_values=values)
        b = loaded.denoise(adata, copy=True, covariate_values=values)
        np.testing.assert_array_equal(a.layers["zipo_denoised"], b.layers["zipo_denoised"])
        np.testing.assert_array_equal(a.obsm["X_zipo"], b.obsm["X_zipo"])
    # The loaded model still encodes with the training cells' mean/sd and categories, even for
    # cells whose own values would give other statistics.
    few = adata[:3].copy()
    np.testing.assert_array_equal(
        loaded.covariate_encoder.transform(few.obs), model.covariate_encoder.transform(few.obs)
    )
    with pytest.raises(ValueError, match="never saw in training: '?b3'?"):
        loaded.denoise(adata, copy=True, covariate_values={"batch": "b3"})
