"""Validation on held-out molecules (train.heldout_molecules): the split, the score, and
that training watches it."""

from __future__ import annotations

import math

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import zipo
from zipo.data.counts import CountMatrix
from zipo.data.loader import CellBatches, csr_to_torch
from zipo.nn.network import NetworkOutput
from zipo.train.heldout import HeldoutMolecules, binomial, binomial_split

from conftest import small_model


def test_binomial_split_keeps_every_molecule_and_the_layout():
    x = torch.tensor(np.random.default_rng(0).poisson(1.5, (40, 30)), dtype=torch.float32)
    assert (x == 0).float().mean() > 0.1  # zeros, which neither layout draws for
    splits = []
    for batch in (x, csr_to_torch(sp.csr_matrix(x.numpy()))):
        kept, held = binomial_split(batch, 0.3, torch.Generator().manual_seed(1))
        assert kept.layout == batch.layout
        kept = kept.to_dense() if kept.layout == torch.sparse_csr else kept
        assert torch.equal(kept + held, x)
        assert (kept >= 0).all() and (held >= 0).all()
        assert 0.25 < held.sum() / x.sum() < 0.35
        splits.append(held)
    # the sparse and the dense first layer see the same split of the same cells
    assert torch.equal(splits[0], splits[1])


def test_a_csr_batch_splits_into_dense_parts_as_a_dense_batch_does():
    # The dense first layer's training batches of sparse counts arrive as CSR (the split then
    # needs no scan for the non-zeros); its parts must be the dense batch's split exactly.
    x = torch.tensor(np.random.default_rng(2).poisson(0.8, (33, 57)), dtype=torch.float32)
    from_dense = binomial_split(x, 0.1, torch.Generator().manual_seed(4))
    from_csr = binomial_split(csr_to_torch(sp.csr_matrix(x.numpy())), 0.1,
                              torch.Generator().manual_seed(4), dense=True)
    for a, b in zip(from_dense, from_csr):
        assert b.layout == torch.strided
        assert torch.equal(a, b)


def test_training_batches_of_sparse_counts_are_csr_under_noise2self_on_the_cpu(pbmc_small):
    from zipo.config import TrainConfig
    from zipo.data import loader

    def made(adata, device="cpu", **options):
        train, val = loader.training_batches(
            CountMatrix(adata), np.zeros((80, 0), np.float32), np.arange(70),
            np.arange(70, 80), TrainConfig(**options), np.random.default_rng(0),
            torch.device(device), sparse=False, shard=(0, 1))
        return train.sparse, val.sparse

    dense = pbmc_small.copy()
    dense.X = pbmc_small.X.toarray()
    assert made(pbmc_small) == (True, False)  # the validation cells feed the dense layer
    assert made(dense) == (False, False)  # nothing stored to draw from
    assert made(pbmc_small, objective_heldout=0.0) == (False, False)  # no split
    assert made(pbmc_small, device="cuda") == (False, False)  # pinned dense batches


def test_sparse_counts_train_the_dense_first_layer_as_dense_counts_do(pbmc_small):
    # The same cells as scipy CSR (CSR batches, split from their non-zeros) and as a dense
    # array (dense batches): the same training, to the last bit.
    dense = pbmc_small.copy()
    dense.X = pbmc_small.X.toarray()
    models = [small_model(a, first_layer="dense", max_epochs=3, seed=1).train()
              for a in (pbmc_small, dense)]
    assert models[0].first_layer_mode == models[1].first_layer_mode == "dense"
    for column in ("train_loss", "validation_heldout_nll"):
        np.testing.assert_array_equal(models[0].history[column], models[1].history[column])
    for a, b in zip(models[0].network.parameters(), models[1].network.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_binomial_matches_the_binomial_distribution(p):
    # counts of 0 to 3 (closed in the skipping rounds) and of 400 (left to torch.binomial)
    n = torch.tensor([0.0, 1.0, 2.0, 3.0, 400.0]).repeat_interleave(20_000)
    draws = binomial(n, p, torch.Generator().manual_seed(0)).view(5, -1)
    # any layout of counts: a transposed (non-contiguous) batch keeps its shape
    assert binomial(n.view(5, -1).t(), p, torch.Generator()).shape == (20_000, 5)
    assert draws[0].eq(0).all() and (draws >= 0).all()
    assert (draws <= n.view(5, -1)).all() and torch.equal(draws, draws.round())
    for row, count in zip(draws[1:], (1, 2, 3, 400)):
        # each value's frequency against its probability, within 5 binomial sds
        for k in range(count + 1) if count < 400 else ():
            expected = math.comb(count, k) * p**k * (1 - p) ** (count - k)
            sd = math.sqrt(expected * (1 - expected) / len(row))
            assert abs(row.eq(k).float().mean().item() - expected) < 5 * sd + 1e-4
        mean, var = count * p, count * p * (1 - p)
        assert abs(row.mean().item() - mean) < 5 * math.sqrt(var / len(row))
        assert abs(row.var().item() / var - 1) < 0.05


class _RateNet(torch.nn.Module):
    """A stand-in network whose rate is either the true one (a perfect denoiser of the kept
    counts) or the kept counts themselves (a network that copies its input)."""

    def __init__(self, rate: np.ndarray | None, keep: float, theta: float | None = None):
        super().__init__()
        self.rate = None if rate is None else torch.tensor(rate * keep, dtype=torch.float32)
        self.log_theta = None if theta is None else math.log(theta)
        self.rows = 0

    def forward(self, x, c):
        x = x.to_dense() if x.layout == torch.sparse_csr else x
        if self.rate is None:
            rate = x + 1e-3
        else:
            rate = self.rate[self.rows:self.rows + len(x)]
            self.rows += len(x)
        log_library = torch.log(rate.sum(dim=1))
        log_theta = (None if self.log_theta is None
                     else torch.full_like(rate, self.log_theta))
        return NetworkOutput(latent=torch.zeros(len(x), 2), log_library=log_library,
                             log_mu=torch.log(rate) - log_library[:, None], logit_z=None,
                             log_theta=log_theta)


def test_score_prefers_denoising_to_copying():
    # The whole-cell reconstruction NLL rewards copying; held-out molecules must not.
    rng = np.random.default_rng(0)
    rate = rng.gamma(2.0, 1.0, (200, 50))
    counts = sp.csr_matrix(rng.poisson(rate).astype(np.float32))
    batches = CellBatches(CountMatrix(ad.AnnData(counts)), np.zeros((200, 0), np.float32),
                          np.arange(200), 64)
    score = "validation_heldout_nll"
    oracle = HeldoutMolecules(batches, 0.2, seed=0).nll(_RateNet(rate, 0.8))
    copier = HeldoutMolecules(batches, 0.2, seed=0).nll(_RateNet(None, 0.8))
    assert set(oracle) == {score}  # Poisson: no posterior to score
    assert oracle[score] < copier[score]
    # Same split each call: the score is a deterministic function of the network, and the
    # same whether the validation batches and their split are kept or drawn again.
    assert HeldoutMolecules(batches, 0.2, seed=0).nll(_RateNet(rate, 0.8)) == oracle
    kept = CellBatches(CountMatrix(ad.AnnData(counts)), np.zeros((200, 0), np.float32),
                       np.arange(200), 64, keep_loaded=True)
    scores = HeldoutMolecules(kept, 0.2, seed=0)
    assert scores.kept_splits is not None and len(scores.kept_splits) == 4
    assert scores.nll(_RateNet(rate, 0.8)) == oracle
    assert scores.nll(_RateNet(None, 0.8)) == copier


def test_posterior_is_scored_under_nb():
    # Counts whose per-cell rates scatter Gamma(theta, theta / m) around each gene's mean m:
    # the kept molecules tell where a cell's rate lies, so the rate updated by them (the
    # posterior) predicts the held-out molecules better than m alone; with a huge theta the
    # posterior is m and both scores agree.
    rng = np.random.default_rng(0)
    m = np.broadcast_to(rng.gamma(2.0, 2.0, 50), (300, 50))
    counts = sp.csr_matrix(rng.poisson(rng.gamma(1.0, m)).astype(np.float32))  # theta = 1
    batches = CellBatches(CountMatrix(ad.AnnData(counts)), np.zeros((300, 0), np.float32),
                          np.arange(300), 64)
    fitted = HeldoutMolecules(batches, 0.2, seed=0).nll(_RateNet(m, 0.8, theta=1.0))
    assert fitted["validation_heldout_nll_posterior"] < 0.9 * fitted["validation_heldout_nll"]
    poisson_like = HeldoutMolecules(batches, 0.2, seed=0).nll(_RateNet(m, 0.8, theta=1e6))
    assert poisson_like["validation_heldout_nll_posterior"] == pytest.approx(
        poisson_like["validation_heldout_nll"], rel=1e-4)
    assert poisson_like["validation_heldout_nll"] == pytest.approx(
        fitted["validation_heldout_nll"], rel=1e-6)  # the same rate, the same split


def test_training_watches_heldout_molecules(pbmc_small):
    model = zipo.ZiPo(pbmc_small, encoder_dims=[32, 8], max_epochs=8, batch_size=32, seed=0,
                      verbose=False, heldout_molecules=0.1, likelihood="zip").train()
    h = model.history
    assert np.isfinite(h["validation_heldout_nll"]).all()
    # The weights kept are those of the best held-out-molecule epoch.
    best = h["validation_heldout_nll"].min()
    restored = HeldoutMolecules(model.validation_batches(), 0.1, seed=0,
                                fixed=model.validation_split).nll(model.network)
    assert restored["validation_heldout_nll"] == pytest.approx(best, rel=1e-5)
    assert "validation_heldout_nll_posterior" not in h  # ZIP: the posterior is the rate
    zinb = zipo.ZiPo(pbmc_small, encoder_dims=[32, 8], max_epochs=2, batch_size=32, seed=0,
                     verbose=False, likelihood="zinb").train()
    assert np.isfinite(zinb.history["validation_heldout_nll_posterior"]).all()
    fig = zinb.plot_history()  # and the plot shows it
    posterior_line = [line for line in fig.axes[0].get_lines()
                      if line.get_label() == "... of the rate given the kept counts"]
    np.testing.assert_allclose(posterior_line[0].get_ydata(),
                               zinb.history["validation_heldout_nll_posterior"])
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_heldout_fraction_is_checked(pbmc_small):
    with pytest.raises(ValueError, match="heldout_molecules"):
        zipo.ZiPo(pbmc_small, heldout_molecules=1.0)


def test_objective_on_heldout_molecules_learns_and_is_seeded(pbmc_small):
    opts = dict(encoder_dims=[32, 8], max_epochs=6, batch_size=32, verbose=False,
                heldout_molecules=0.1, objective_heldout=0.5, early_stopping_patience=1000)
    a = zipo.ZiPo(pbmc_small.copy(), seed=0, **opts).train()
    h = a.history["validation_heldout_nll"]
    assert np.isfinite(a.history["train_nll"]).all()
    assert h.min() < h.iloc[0]  # predicting unseen molecules improves with training
    b = zipo.ZiPo(pbmc_small.copy(), seed=0, **opts).train()
    c = zipo.ZiPo(pbmc_small.copy(), seed=1, **opts).train()
    wa, wb, wc = (m.network.first_layer.weight for m in (a, b, c))
    assert torch.equal(wa, wb)  # the per-step molecule splits come from the seed
    assert not torch.equal(wa, wc)
