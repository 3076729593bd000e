"""The heads' options: where the library size comes from (``library``) and how the NB
dispersion is shared (``dispersion``)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import zipo

from conftest import small_model

LAYER = "zipo_denoised"


# --------------------------------------------------------------------------- observed library
def test_observed_library_is_the_input_total_dense_and_sparse():
    from zipo.config import ModelConfig
    from zipo.data.loader import csr_to_torch
    from zipo.nn.network import ZiPoNetwork

    torch.manual_seed(0)
    net = ZiPoNetwork(120, 0, ModelConfig(encoder_dims=[32, 8], library="observed")).eval()
    assert net.library_net is None
    assert not any(k.startswith("library_net") for k in net.state_dict())
    x = sp.random(30, 120, density=0.1, format="lil", dtype=np.float32,
                  random_state=np.random.default_rng(1), data_rvs=lambda n: np.arange(1, n + 1) % 7 + 1)
    x[4, :] = 0  # an empty cell: its library is floored at 1, as the input normalisation's
    x = x.tocsr()
    totals = np.maximum(np.asarray(x.sum(axis=1)).ravel(), 1)
    c = torch.zeros(30, 0)
    with torch.no_grad():
        dense = net(torch.from_numpy(x.toarray()), c)
        sparse = net(csr_to_torch(x), c)
    kept = torch.sigmoid(-dense.logit_z)  # 1 - pi, zero inflation's share let through
    np.testing.assert_allclose(
        dense.log_library.numpy(),
        np.log(totals) - torch.log((kept * torch.exp(dense.log_mu)).sum(1)).numpy(), rtol=1e-5)
    torch.testing.assert_close(sparse.log_library, dense.log_library, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sparse.log_mu, dense.log_mu, rtol=1e-5, atol=1e-5)
    # each row of the expected counts (1 - pi) l mu sums to the observed total, and the rate
    # l mu exceeds it by the molecules zero inflation removed
    np.testing.assert_allclose((kept * torch.exp(dense.log_mean)).sum(1).numpy(), totals,
                               rtol=1e-5)
    assert np.all(torch.exp(dense.log_mean).sum(1).numpy() > totals)
    with pytest.raises(ValueError, match="observed"):
        net.decode(dense.latent, c)


@pytest.mark.parametrize("first_layer", ["dense", "sparse"])
def test_observed_library_trains_denoises_and_round_trips(pbmc_small, tmp_path, first_layer):
    model = small_model(pbmc_small, library="observed", first_layer=first_layer).train()
    assert model.network.library_net is None and model.config.model.library == "observed"
    assert np.all(np.isfinite(model.history["validation_heldout_nll"]))
    out = model.denoise(pbmc_small, expectation="rate", zero_inflation=True, copy=True)
    observed = np.asarray(pbmc_small.X.sum(axis=1)).ravel()
    den = out.layers[LAYER]
    assert np.all(np.isfinite(den)) and np.all(den >= 0)
    np.testing.assert_allclose(den.sum(axis=1, dtype=np.float64), out.obs["zipo_library_size"],
                               rtol=1e-4)
    # the expected counts (1 - pi) l mu keep each cell's observed total
    expected = (1 - out.layers["zipo_zero_prob"]) * den
    np.testing.assert_allclose(expected.sum(axis=1, dtype=np.float64), observed, rtol=1e-4)
    assert np.all(out.obs["zipo_library_size"] >= observed)
    # a deeper measurement scales the observed library
    deeper = model.denoise(pbmc_small, expectation="rate", depth=2.0, copy=True).layers[LAYER]
    np.testing.assert_allclose(deeper, 2 * den, rtol=1e-5)
    lognorm = model.denoise(pbmc_small, expectation="lognorm", copy=True).layers[LAYER]
    assert np.all(np.isfinite(lognorm)) and np.all(lognorm >= 0)

    model.save(tmp_path / "m")
    assert zipo.load_config(tmp_path / "m" / "config.toml").model.library == "observed"
    loaded = zipo.ZiPo.load(tmp_path / "m")
    assert loaded.config.model.library == "observed" and loaded.network.library_net is None
    again = loaded.denoise(pbmc_small, expectation="rate", zero_inflation=True, copy=True)
    np.testing.assert_array_equal(again.layers[LAYER], den)
    np.testing.assert_array_equal(again.obsm["X_zipo"], out.obsm["X_zipo"])
    # and training continues from the loaded model
    assert len(zipo.ZiPo.load(tmp_path / "m", pbmc_small).train(max_epochs=1).history) == 3


def test_observed_library_under_the_paper_objective(pbmc_small):
    # without Noise2Self the network reads whole cells; the library is their totals
    model = small_model(pbmc_small, library="observed", preset="paper").train()
    assert model.network.library_net is None
    assert np.all(np.isfinite(model.history["validation_loss"]))


def test_bad_library_option_is_refused(pbmc_small):
    with pytest.raises(ValueError, match=r"library must be one of 'predicted' or 'observed', got"):
        small_model(pbmc_small, library="size")


def test_observed_library_is_the_kept_molecules_total_under_noise2self(pbmc_small, monkeypatch):
    # Noise2Self training feeds the network the kept ~90% x' of each cell: l is x''s total
    # (the trainer rescales the rate by q / (1 - q) for the held-out x'').
    from zipo.nn.network import ZiPoNetwork

    seen = []
    forward = ZiPoNetwork.forward

    def spy(self, x, covariates, **kwargs):
        out = forward(self, x, covariates, **kwargs)
        if self.training:
            lib = out.log_library + ZiPoNetwork.log_kept_fraction(out.log_mu, out.logit_z)
            seen.append((ZiPoNetwork.input_totals(x).detach(), lib.detach()))
        return out

    monkeypatch.setattr(ZiPoNetwork, "forward", spy)
    model = small_model(pbmc_small, library="observed", max_epochs=1, validation_fraction=0.0,
                         objective_heldout=0.1, heldout_molecules=0.0).train()
    assert seen
    kept = torch.cat([t for t, _ in seen]).numpy()
    np.testing.assert_allclose(torch.cat([l for _, l in seen]).numpy(), np.log(kept), rtol=1e-6)
    full = np.asarray(pbmc_small.X.sum(axis=1)).ravel()
    # about 90% of all molecules were fed (cells in shuffled order, so compare sums)
    assert 0.85 < kept.sum() / full.sum() < 0.95
    assert model.network.library_net is None


# --------------------------------------------------------------------------- dispersion
@pytest.mark.parametrize("likelihood", ["zinb", "nb"])
def test_gene_dispersion_is_one_theta_per_gene(pbmc_small, tmp_path, likelihood):
    # the raw weights: an average of the weights over six steps is still mostly their start
    model = small_model(pbmc_small, likelihood=likelihood, dispersion="gene", seed=0,
                        weight_average=0.0).train()
    net = model.network
    assert net.theta_head is None and net.gene_log_theta.shape == (pbmc_small.n_vars,)
    # it learned: theta moved away from its start at 1 for most genes
    assert (net.gene_log_theta.detach().abs() > 1e-3).float().mean() > 0.5
    x = torch.from_numpy(pbmc_small.X[:40].toarray())
    with torch.no_grad():
        out = net.eval()(x, torch.zeros(40, 0))
    assert out.log_theta.shape == (40, pbmc_small.n_vars)
    torch.testing.assert_close(out.log_theta, out.log_theta[:1].expand(40, -1))
    assert out.log_theta.abs().max() < net.LOG_THETA_BOUND
    posterior = model.denoise(pbmc_small, expectation="posterior", copy=True).layers[LAYER]
    assert np.all(np.isfinite(posterior)) and np.all(posterior >= 0)

    model.save(tmp_path / "m")
    assert zipo.load_config(tmp_path / "m" / "config.toml").model.dispersion == "gene"
    loaded = zipo.ZiPo.load(tmp_path / "m")
    assert loaded.network.theta_head is None
    np.testing.assert_array_equal(
        loaded.denoise(pbmc_small, expectation="posterior", copy=True).layers[LAYER], posterior)


def test_gene_cell_dispersion_is_the_paper_head(pbmc_small):
    model = small_model(pbmc_small, likelihood="zinb", dispersion="gene-cell")
    assert model.network.theta_head is not None and model.network.gene_log_theta is None
    # no dispersion at all without an NB likelihood, whatever the option says
    zip_model = small_model(pbmc_small, likelihood="zip", dispersion="gene")
    assert zip_model.network.theta_head is None and zip_model.network.gene_log_theta is None


def test_bad_dispersion_option_is_refused(pbmc_small):
    with pytest.raises(ValueError, match=r"dispersion must be one of 'gene-cell' or 'gene', got"):
        small_model(pbmc_small, likelihood="zinb", dispersion="cell")


# --------------------------------------------------------------------------- mean head start
@pytest.mark.parametrize("decoder_dims", [[16], [16, 8]])
def test_mean_head_after_hidden_decoder_layers_starts_at_the_gene_proportions(decoder_dims):
    """Sigmoid units average ~0.5, so random head weights would move every gene's first rate
    at random; from zero weights every cell starts at the gene proportions (as a linear
    decoder nearly does), and the weights still learn."""
    from zipo.config import ModelConfig
    from zipo.nn.network import ZiPoNetwork

    torch.manual_seed(0)
    n_genes = 50
    net = ZiPoNetwork(n_genes, 2, ModelConfig(encoder_dims=[32, 8], decoder_dims=decoder_dims))
    proportions = torch.distributions.Dirichlet(torch.ones(n_genes)).sample()
    net.initialise_from_data(proportions, 5.0, 100.0)
    assert torch.count_nonzero(net.mu_head.weight) == 0
    x = torch.poisson(torch.full((20, n_genes), 2.0))
    out = net.train()(x, torch.randn(20, 2))
    torch.testing.assert_close(out.log_mu, torch.log(proportions).expand(20, -1))
    out.log_mu[:, 0].sum().backward()  # the head's weights get a gradient at once
    assert net.mu_head.weight.grad.abs().sum() > 0

    linear = ZiPoNetwork(n_genes, 2, ModelConfig(encoder_dims=[32, 8], decoder_dims=[]))
    linear.initialise_from_data(proportions, 5.0, 100.0)
    assert torch.count_nonzero(linear.mu_head.weight) > 0  # the paper's decoder: as it was


# --------------------------------------------------------------------------- variational latents
def test_alpha_kl_draws_latents_in_training_and_decodes_their_means_at_inference():
    """alpha_kl > 0 adds a log-variance head: training decodes a draw from N(U, var) and the
    loss adds alpha_kl / genes x KL per cell; eval mode and the reported latents use U."""
    from zipo.config import ModelConfig
    from zipo.nn.network import ZiPoNetwork
    from zipo.train.loss import loss_terms

    torch.manual_seed(0)
    n_genes = 40
    x = torch.poisson(torch.full((16, n_genes), 2.0))
    c = torch.zeros(16, 0)
    plain = ZiPoNetwork(n_genes, 0, ModelConfig(encoder_dims=[32, 8]))
    assert plain.latent_log_var is None and plain.train()(x, c).latent_log_var is None

    config = ModelConfig(encoder_dims=[32, 8], alpha_kl=0.5)
    net = ZiPoNetwork(n_genes, 0, config).train()
    a, b = net(x, c), net(x, c)
    torch.testing.assert_close(a.latent, b.latent)  # the latents are the means
    assert not torch.allclose(a.log_mu, b.log_mu)  # decoded from different draws
    net.eval()
    e = net(x, c)
    torch.testing.assert_close(e.latent, net.encode(x))
    torch.testing.assert_close(e.log_mu, net.heads(net.encode(x), x, c).log_mu)

    # The KL term is the closed form, per cell, over the genes, times alpha_kl.
    var = e.latent_log_var.exp()
    kl = 0.5 * (e.latent.pow(2) + var - 1 - e.latent_log_var).sum(1).mean() / n_genes
    without = loss_terms(net, e, x, ModelConfig(encoder_dims=[32, 8], alpha_kl=0.0))
    with_kl = loss_terms(net, e, x, config)
    torch.testing.assert_close(with_kl.total - without.total, 0.5 * kl)
    torch.testing.assert_close(with_kl.nll, without.nll)


def test_alpha_kl_trains_saves_and_loads(pbmc_small, tmp_path):
    model = small_model(pbmc_small, alpha_kl=1.0).train()
    latent = model.get_latent()
    assert latent.shape == (pbmc_small.n_obs, 16) and np.isfinite(latent).all()
    model.save(tmp_path / "m")
    loaded = zipo.ZiPo.load(tmp_path / "m")
    assert loaded.network.latent_log_var is not None
    np.testing.assert_allclose(loaded.get_latent(pbmc_small), latent, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="pass adata"):
        loaded.get_latent()
    with pytest.raises(ValueError, match="alpha_kl"):
        small_model(pbmc_small, alpha_kl=-1.0)
