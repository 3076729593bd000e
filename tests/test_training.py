"""Training on real PBMC counts: it learns, it is reproducible, and it reports what it did."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

import zipo
from zipo.data.loader import split_cells
from zipo.train.schedule import monitored_column

from conftest import SMALL_ENCODER, validation_scores

HISTORY_COLUMNS = [
    "epoch", "step", "train_loss", "train_nll", "validation_loss", "validation_nll",
    "validation_heldout_nll", "learning_rate", "seconds", "data_wait_seconds",
]


def _small_model(adata, **options):
    kw = dict(encoder_dims=SMALL_ENCODER, max_epochs=3, batch_size=32, verbose=False)
    kw.update(options)
    return zipo.ZiPo(adata, **kw)


# --------------------------------------------------------------------------- it learns
@pytest.fixture(scope="module")
def pbmc_run(pbmc4k_demo_data):
    adata = pbmc4k_demo_data()
    seed, fraction = 7, 0.1
    # learning_rate=0.001 on purpose: the paper's schedule starts at 0.0212, which on these
    # data first falls into a minimum where zero inflation explains most zeros and needs many
    # epochs to leave it; a flat 0.001 beats the baseline within 15 epochs (~4 s; the first
    # epochs undo the zero-inflation head's random start).
    model = zipo.ZiPo(
        adata, encoder_dims=[256, 64], learning_rate=0.001, max_epochs=18, batch_size=256,
        validation_fraction=fraction, seed=seed, verbose=False, likelihood="zip",
        validation_holdout="cells",  # whole cells held out, scored by hand below
    ).train()  # ZIP: the tests below score its mixture by hand
    return adata, model, seed, fraction


def test_split_is_reproducible_from_the_seed(pbmc_run):
    adata, model, seed, fraction = pbmc_run
    train_idx, val_idx = split_cells(adata.n_obs, fraction, np.random.default_rng(seed))
    np.testing.assert_array_equal(model.train_indices, train_idx)
    np.testing.assert_array_equal(model.validation_indices, val_idx)
    assert len(val_idx) == round(adata.n_obs * fraction)
    assert not set(train_idx) & set(val_idx)
    assert len(train_idx) + len(val_idx) == adata.n_obs


def test_validation_nll_beats_mean_proportion_baseline(pbmc_run):
    adata, model, seed, fraction = pbmc_run
    train_idx, val_idx = split_cells(adata.n_obs, fraction, np.random.default_rng(seed))
    X = adata.X.tocsr().astype(np.float64)
    x_val = X[val_idx].toarray()

    # Baseline: each gene's mean proportion in the training cells times each validation cell's
    # library size, scored with the Poisson likelihood.
    gene_totals = np.asarray(X[train_idx].sum(axis=0)).ravel()
    assert np.all(gene_totals > 0)  # top-expressed genes: no rate is zero
    proportions = gene_totals / gene_totals.sum()
    library = x_val.sum(axis=1, keepdims=True)
    baseline = -stats.poisson.logpmf(x_val, library * proportions).mean()
    assert model.baseline_nll() == pytest.approx(baseline, rel=1e-5)

    # The model's validation NLL, by hand from what denoise reports (rate l*mu and z), with the
    # zero-inflated Poisson mixture log(z [x==0] + (1-z) Pois(x; m)).
    out = model.denoise(adata[val_idx].copy(), zero_inflation=True, copy=True)
    rate = out.layers["zipo_denoised"].astype(np.float64)
    z = out.layers["zipo_zero_prob"].astype(np.float64)
    log_pois = stats.poisson.logpmf(x_val, rate)
    log_p = np.where(x_val == 0, np.log(z + (1 - z) * np.exp(log_pois)), np.log1p(-z) + log_pois)
    nll = -log_p.mean()
    assert np.isfinite(nll)

    # The same number three ways: by hand, model.evaluate, and the best epoch of the history.
    assert model.evaluate(adata[val_idx].copy())["nll"] == pytest.approx(nll, rel=1e-4)
    best = model.history[monitored_column(model.history)].idxmin()
    assert model.history.loc[best, "validation_nll"] == pytest.approx(nll, rel=1e-4)

    assert nll < baseline - 0.03, f"validation NLL {nll:.4f} vs baseline {baseline:.4f}"
    hist = model.history["validation_nll"]
    assert hist.iloc[-1] < hist.iloc[0]


# --------------------------------------------------------------------------- reproducibility
def _run(adata, seed):
    model = _small_model(adata, seed=seed).train()
    out = model.denoise(adata.copy(), copy=True)
    return model, out


def test_same_seed_gives_identical_results(pbmc_small):
    m1, o1 = _run(pbmc_small.copy(), seed=11)
    m2, o2 = _run(pbmc_small.copy(), seed=11)
    cols = [c for c in m1.history.columns if c not in ("seconds", "data_wait_seconds")]
    pd.testing.assert_frame_equal(m1.history[cols], m2.history[cols], check_exact=True)
    np.testing.assert_array_equal(o1.layers["zipo_denoised"], o2.layers["zipo_denoised"])
    np.testing.assert_array_equal(o1.obsm["X_zipo"], o2.obsm["X_zipo"])
    np.testing.assert_array_equal(m1.validation_indices, m2.validation_indices)


def test_different_seeds_differ(pbmc_small):
    m1, o1 = _run(pbmc_small.copy(), seed=11)
    m2, o2 = _run(pbmc_small.copy(), seed=12)
    assert not np.array_equal(m1.history["train_loss"], m2.history["train_loss"])
    assert not np.array_equal(o1.layers["zipo_denoised"], o2.layers["zipo_denoised"])
    assert not np.array_equal(m1.validation_indices, m2.validation_indices)


def test_training_leaves_the_global_random_state_alone(pbmc_small):
    """The initial weights, the validation split, the shuffling, the molecule splits and the
    latents' noise (alpha_kl) all draw from streams seeded by train.seed: the caller's torch
    and NumPy global random states are neither used nor changed, so whatever they hold, the
    same seed trains the same model."""
    def fit(global_seed):
        torch.manual_seed(global_seed)
        np.random.seed(global_seed)
        torch_state, numpy_state = torch.random.get_rng_state(), np.random.get_state()
        model = _small_model(pbmc_small.copy(), seed=4, alpha_kl=0.5).train()
        assert torch.equal(torch.random.get_rng_state(), torch_state)
        kind, keys, position, *rest = np.random.get_state()
        assert (kind, position, rest) == (numpy_state[0], numpy_state[2], list(numpy_state[3:]))
        np.testing.assert_array_equal(keys, numpy_state[1])
        return model

    m1, m2 = fit(1), fit(2)
    assert m1.history["train_loss"].tolist() == m2.history["train_loss"].tolist()
    for (name, w1), w2 in zip(m1.network.state_dict().items(), m2.network.state_dict().values()):
        assert torch.equal(w1, w2), name
    np.testing.assert_array_equal(m1.validation_indices, m2.validation_indices)


@pytest.mark.parametrize("options", [
    {}, {"likelihood": "nb", "dispersion": "gene", "decoder_dims": []},
    {"library": "predicted", "alpha_kl": 0.5, "residuals": False, "batch_norm": False},
])
def test_seeded_network_sets_every_tensor_as_torch_would(options):
    """ZiPoNetwork.seeded draws from a generator of its own, as torch's layers draw from the
    global one: every parameter and buffer equals those of a network built right after
    torch.manual_seed(seed), and the global state is left as it was."""
    from zipo.config import ModelConfig
    from zipo.nn.network import ZiPoNetwork

    config = ModelConfig(encoder_dims=[24, 12, 6], **options)
    with torch.random.fork_rng():
        torch.manual_seed(9)
        expected = ZiPoNetwork(50, 3, config).state_dict()
    before = torch.random.get_rng_state()
    got = ZiPoNetwork.seeded(50, 3, config, seed=9).state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)
    assert list(got) == list(expected)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name


# --------------------------------------------------------------------------- history
def test_history_columns_and_values(trained_model):
    h = trained_model.history
    assert list(h.columns) == HISTORY_COLUMNS
    assert list(h["epoch"]) == [1, 2, 3]
    for col in HISTORY_COLUMNS[1:]:
        assert np.all(np.isfinite(h[col])), col
    assert np.all(h["seconds"] >= 0)
    assert np.all(h["learning_rate"] > 0)
    # the loss is the NLL plus non-negative penalties
    assert np.all(h["train_loss"] >= h["train_nll"])
    assert np.all(h["validation_loss"] >= h["validation_nll"])


def test_history_without_validation(pbmc_small):
    model = _small_model(pbmc_small, max_epochs=2, validation_fraction=0.0).train()
    assert list(model.history.columns) == [
        "epoch", "step", "train_loss", "train_nll", "learning_rate", "seconds",
        "data_wait_seconds"]
    with pytest.raises(ValueError, match="no validation split"):
        model.baseline_nll()


def test_continued_training_appends_history(pbmc_small):
    model = _small_model(pbmc_small, max_epochs=2).train()
    first = model.history.copy()
    model.train(max_epochs=2)
    assert list(model.history["epoch"]) == [1, 2, 3, 4]
    assert list(model.history["step"]) == [3, 6, 9, 12]  # 72 training cells, batches of 32
    pd.testing.assert_frame_equal(model.history.iloc[:2], first)


def test_rounds_cut_long_epochs_and_leave_short_ones_alone(pbmc_small):
    from zipo.train.schedule import round_ends

    assert round_ends(8, 100) == [8]
    assert round_ends(352, 100) == [88, 176, 264, 352]
    assert round_ends(3, 1) == [1, 2, 3] and round_ends(3, 2) == [2, 3]
    # 72 training cells in batches of 32: 3 steps an epoch. A round of at most one step
    # validates after every step; the history counts epochs in thirds.
    model = _small_model(pbmc_small, validation_interval=1, max_epochs=2).train()
    h = model.history
    np.testing.assert_allclose(h["epoch"], [1 / 3, 2 / 3, 1, 4 / 3, 5 / 3, 2])
    assert list(h["step"]) == [1, 2, 3, 4, 5, 6]
    assert np.all(np.isfinite(h["validation_heldout_nll"]))
    # where an epoch fits in a round nothing changes, to the bit
    a = _small_model(pbmc_small, validation_interval=3).train().history
    b = _small_model(pbmc_small, validation_interval=10**6).train().history
    pd.testing.assert_frame_equal(a.drop(columns=["seconds", "data_wait_seconds"]),
                                  b.drop(columns=["seconds", "data_wait_seconds"]))


def test_plateau_and_early_stopping_count_rounds(pbmc_small):
    # Patience 1 round with a 50% threshold at one step a round: the plateau cuts after rounds
    # 3 and 5, mid-epoch, and the second cut ends training there (not at an epoch's end).
    model = _small_model(pbmc_small, validation_interval=1, max_epochs=8, plateau_patience=1,
                         plateau_threshold=0.5, early_stopping_patience=100,
                         patience_min_steps=0, learning_rate=0.01).train()
    h = model.history
    # the warm-down from 0.01 also counts rounds (x0.9 each), the cut multiplies it by 0.1
    np.testing.assert_allclose(h["learning_rate"],
                               [0.01 * 0.9**r * (1 if r < 3 else 0.1) for r in range(5)])
    assert list(h["step"]) == [1, 2, 3, 4, 5]
    assert h["epoch"].iloc[-1] == pytest.approx(5 / 3)


def test_the_decoder_trains_at_its_own_learning_rate(pbmc_small):
    # At a factor of 1e-9 the decoder's Adam steps are ~1e-12: its weights stay where they
    # started while the encoder's and the dispersion's move, so one epoch and two give the
    # same decoder.
    def weights(factor, epochs):
        # the raw weights (no average), which move every step
        net = _small_model(pbmc_small, decoder_lr_factor=factor, max_epochs=epochs, n_fits=1,
                           early_stopping_patience=100, weight_average=0.0).train().network
        return [t.detach() for t in (net.encoder[0][0].weight, net.theta_head.bias,
                                     net.mu_head.bias, net.z_head.bias)]

    def moved(a, b):
        return [bool((x - y).abs().max() > 1e-5) for x, y in zip(a, b)]

    assert moved(weights(1e-9, 1), weights(1e-9, 2)) == [True, True, False, False]
    # at a factor of 1 the decoder moves like the encoder
    assert moved(weights(1.0, 1), weights(1.0, 2)) == [True, True, True, True]
    with pytest.raises(ValueError, match="decoder_lr_factor"):
        _small_model(pbmc_small, decoder_lr_factor=0)


def test_validation_cells_are_capped(pbmc_small):
    rng = np.random.default_rng(0)
    train, val = split_cells(1000, 0.1, rng, max_validation=40)
    assert len(val) == 40 and len(train) == 960
    assert len(split_cells(1000, 0.1, np.random.default_rng(0))[1]) == 100
    # uncapped splits draw as before: the same cells for the same seed
    np.testing.assert_array_equal(split_cells(80, 0.1, np.random.default_rng(3), 1000)[1],
                                  split_cells(80, 0.1, np.random.default_rng(3))[1])
    model = _small_model(pbmc_small, validation_max_cells=5, max_epochs=1).train()
    assert len(model.validation_indices) == 5
    with pytest.raises(ValueError, match="validation_max_cells"):
        _small_model(pbmc_small, validation_max_cells=-1)


def test_learning_rate_schedule_follows_the_paper(pbmc_small):
    """lr_t = max(0.0212 * 0.9^t, lr_min), before any plateau reduction."""
    model = _small_model(pbmc_small, max_epochs=6, learning_rate=0.0212, lr_min=0.015).train()
    expected = [max(0.0212 * 0.9**t, 0.015) for t in range(6)]
    np.testing.assert_allclose(model.history["learning_rate"], expected, rtol=1e-12)
    assert model.history["learning_rate"].iloc[-1] == pytest.approx(0.015)
    # a start under the floor stays flat: the floor never raises the rate
    flat = _small_model(pbmc_small, max_epochs=2, learning_rate=0.001, lr_min=0.003).train()
    np.testing.assert_allclose(flat.history["learning_rate"], [0.001, 0.001], rtol=1e-12)


def test_early_stopping_restores_best_weights(pbmc_small):
    model = _small_model(
        pbmc_small, max_epochs=80, learning_rate=0.02, lr_decay=1.0, lr_min=0.02,
        early_stopping_patience=3, patience_min_steps=0, seed=1,
    ).train()
    h = model.history
    best = int(h[monitored_column(h)].idxmin())
    # stopped exactly `patience` epochs after the best one (or ran out of epochs)
    assert len(h) == min(best + 1 + 3, 80)
    assert len(h) < 80, "validation loss never stopped improving; cannot test early stopping"
    # the weights kept are those of the best epoch, not the last
    assert validation_scores(model)[0] == pytest.approx(h["validation_loss"].iloc[best], rel=1e-5)
    assert not math.isclose(h["validation_loss"].iloc[-1], h["validation_loss"].iloc[best],
                            rel_tol=1e-5)


def test_training_ends_at_the_plateaus_last_cut(pbmc_small):
    # Every epoch after the first misses a 50% improvement, so with patience 1 the plateau cuts
    # the rate after epochs 3 and 5 (1-based); early stopping alone would run all 8 epochs.
    options = dict(max_epochs=8, plateau_patience=1, plateau_threshold=0.5,
                   early_stopping_patience=100, patience_min_steps=0, learning_rate=1e-3)
    model = _small_model(pbmc_small, plateau_stop=2, **options).train()
    np.testing.assert_allclose(model.history["learning_rate"], [1e-3] * 3 + [1e-4] * 2)
    h = model.history
    best = int(h[monitored_column(h)].idxmin())
    assert validation_scores(model)[0] == pytest.approx(h["validation_loss"].iloc[best], rel=1e-5)
    assert len(_small_model(pbmc_small, plateau_stop=0, **options).train().history) == 8
    # the default ends at the first cut, under 500 cells at the second, unless set explicitly
    assert _small_model(pbmc_small, **options).config.train.plateau_stop == 2
    assert len(_small_model(pbmc_small, plateau_stop=1, **options).train().history) == 3
    assert len(_small_model(pbmc_small, small_data=False, **options).train().history) == 3
    with pytest.raises(ValueError, match="plateau_stop"):
        _small_model(pbmc_small, plateau_stop=-1)


def test_training_ends_at_the_second_cut_where_an_epoch_spans_several_rounds(pbmc_small):
    from zipo.config import TrainConfig
    from zipo.train.schedule import plateau_stop

    assert [plateau_stop(TrainConfig(), rounds) for rounds in (1, 2, 39)] == [1, 2, 2]
    assert plateau_stop(TrainConfig(plateau_stop=1), 39) == 1
    assert plateau_stop(TrainConfig(plateau_stop=0), 39) == 0
    # 72 training cells in batches of 32, validated every step: three rounds an epoch. Every
    # round after the first misses a 50% improvement, so the plateau cuts after rounds 3 and 5.
    options = dict(max_epochs=8, plateau_patience=1, plateau_threshold=0.5, small_data=False,
                   early_stopping_patience=100, patience_min_steps=0, learning_rate=1e-3,
                   validation_interval=1)
    history = _small_model(pbmc_small, **options).train().history
    np.testing.assert_allclose(history["learning_rate"], [1e-3] * 3 + [1e-4] * 2)
    assert len(_small_model(pbmc_small, plateau_stop=1, **options).train().history) == 3
    # one round an epoch: the first cut, as before
    options["validation_interval"] = 100
    assert len(_small_model(pbmc_small, **options).train().history) == 3


def test_patience_spans_at_least_min_steps(pbmc_small):
    from zipo.config import TrainConfig
    from zipo.train.schedule import patience_scale

    # 8 rounds of patience: 8 steps a round already make 64 >= 60; one step needs x8
    assert patience_scale(TrainConfig(), 8) == 1
    assert patience_scale(TrainConfig(), 1) == 8
    assert patience_scale(TrainConfig(plateau_patience=15), 1) == 4
    assert patience_scale(TrainConfig(patience_min_steps=0), 1) == 1
    # 72 training cells in batches of 32 are 3 steps an epoch: patience 1 must span 6 steps, so
    # the plateau waits 2 epochs and cuts after epochs 4 and 7 (1-based), not 3 and 5
    options = dict(max_epochs=8, plateau_patience=1, plateau_threshold=0.5,
                   early_stopping_patience=100, plateau_stop=0, learning_rate=1e-3)
    history = _small_model(pbmc_small, patience_min_steps=6, **options).train().history
    np.testing.assert_allclose(history["learning_rate"], [1e-3] * 4 + [1e-4] * 3 + [1e-5])
    with pytest.raises(ValueError, match="patience_min_steps"):
        _small_model(pbmc_small, patience_min_steps=-1)


def test_weight_average_is_what_validation_scores_and_the_model_keeps(pbmc_small):
    """With a round of one step, the callback sees every step: the average follows
    a_t = d a_(t-1) + (1 - d) p_t, validation scores it, and the model
    keeps the best round's average, not the weights the optimiser reached."""
    decay = 0.7
    seen = []

    def record(trainer):
        seen.append(([p.detach().clone() for p in trainer.net.parameters()],
                     [a.clone() for a in trainer.averaged]))

    model = _small_model(pbmc_small, weight_average=decay, validation_interval=1, max_epochs=2,
                         early_stopping_patience=100, patience_min_steps=0, seed=3)
    model.train(callback=record)
    assert len(seen) == len(model.history) > 2
    for (_, before), (live, averaged) in zip(seen, seen[1:]):
        for a, p, b in zip(averaged, live, before):
            torch.testing.assert_close(a, decay * b + (1 - decay) * p)
    assert any(not torch.equal(a, p) for a, p in zip(*seen[-1][::-1]))
    h = model.history
    best = int(h[monitored_column(h)].idxmin())
    for kept, averaged in zip(model.network.parameters(), seen[best][1]):
        assert torch.equal(kept.detach(), averaged)
    assert validation_scores(model)[0] == pytest.approx(h["validation_loss"].iloc[best], rel=1e-5)
    with pytest.raises(ValueError, match="weight_average"):
        _small_model(pbmc_small, weight_average=1.0)


def test_early_stopping_threshold_ignores_small_gains_but_keeps_their_weights():
    from zipo.train.schedule import EarlyStopping

    net = torch.nn.Linear(2, 1)
    # 1.0, then gains of 0.05% a step: below a 0.1% threshold they are not progress
    values = [1.0] + [1.0 - 0.0005 * k for k in range(1, 10)]
    plain, strict = EarlyStopping(3), EarlyStopping(3, threshold=0.001)
    stops = {}
    for epoch, v in enumerate(values):
        with torch.no_grad():
            net.bias.fill_(v)
        for name, s in (("plain", plain), ("strict", strict)):
            if name not in stops and s.update(epoch, v, net):
                stops[name] = epoch
    assert stops == {"strict": 3}  # 3 epochs after epoch 0; any gain keeps plain going
    assert strict.best_epoch == 3 and strict.best_state["bias"].item() == pytest.approx(values[3])
    # a gain above the threshold is progress again
    assert not strict.update(4, values[3] * 0.99, net) and strict.progress_epoch == 4


def test_early_stopping_threshold_is_checked(pbmc_small):
    with pytest.raises(ValueError, match="early_stopping_threshold"):
        _small_model(pbmc_small, early_stopping_threshold=1.5)


# --------------------------------------------------------------------------- plotting
def test_plot_history_returns_figure_and_writes_png(trained_model, tmp_path):
    from matplotlib.figure import Figure

    assert matplotlib.get_backend().lower() == "agg"
    path = tmp_path / "history.png"
    fig = trained_model.plot_history(path=path)
    assert isinstance(fig, Figure)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 1000
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_allclose(lines["train loss"].get_ydata(), trained_model.history["train_loss"])
    np.testing.assert_allclose(lines["validation loss"].get_ydata(),
                               trained_model.history["validation_loss"])
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_plot_history_before_training_refuses(pbmc_small):
    model = _small_model(pbmc_small)
    with pytest.raises(ValueError, match="no training history"):
        model.plot_history()


@pytest.mark.parametrize("likelihood", ["zip", "zinb"])
def test_loss_is_the_method_objective(likelihood):
    """The training loss term by term (method.md): NLL per entry + alpha_z E[z^2] + alpha_w
    L1/L2 of the first layer, and for NB the theta and rate-MSE terms weighed against a whole
    cell's NLL, i.e. divided by the number of genes."""
    import torch

    from zipo.config import ModelConfig
    from zipo.distributions import log_prob
    from zipo.nn.network import ZiPoNetwork
    from zipo.train.loss import first_layer_l1_l2, loss_terms

    torch.manual_seed(0)
    genes = 40
    config = ModelConfig(encoder_dims=[16, 4], likelihood=likelihood, alpha_z=0.3, alpha_w=0.2,
                         alpha_theta=0.05, mse_weight=0.7)
    net = ZiPoNetwork(genes, 0, config)
    x = torch.poisson(torch.full((12, genes), 3.0))
    out = net(x, torch.zeros(12, 0))
    terms = loss_terms(net, out, x, config)
    nll = -log_prob(x, out.log_mean, out.logit_z, out.log_theta).mean()
    expected = (nll + 0.3 * torch.sigmoid(out.logit_z).pow(2).mean()
                + 0.2 * first_layer_l1_l2(net.first_layer.weight))
    if likelihood == "zinb":
        expected = expected + (0.05 * torch.exp(2 * out.log_theta).mean()
                               + 0.7 * (torch.exp(out.log_mean) - x).pow(2).mean()) / genes
    torch.testing.assert_close(terms.nll, nll)
    torch.testing.assert_close(terms.total, expected)


def test_evaluation_scores_each_batch_by_the_training_loss(pbmc_small):
    """evaluate() is the cell-weighted mean of loss_terms over its batches (it computes the
    first layer's penalty once for all of them)."""
    from zipo.config import ModelConfig
    from zipo.data.counts import CountMatrix
    from zipo.data.loader import CellBatches
    from zipo.nn.network import ZiPoNetwork
    from zipo.train.evaluate import evaluate
    from zipo.train.loss import loss_terms

    config = ModelConfig(encoder_dims=[16, 4], likelihood="zinb", alpha_w=0.5)
    net = ZiPoNetwork.seeded(pbmc_small.n_vars, 0, config, seed=3).eval()
    batches = CellBatches(CountMatrix(pbmc_small), np.zeros((80, 0), np.float32),
                          np.arange(80), 24)  # 4 batches, the last of 8 cells
    total = nll = 0.0
    with torch.no_grad():
        for x, c, idx in batches:
            terms = loss_terms(net, net(x, c), x, config)
            total += terms.total.item() * len(idx)
            nll += terms.nll.item() * len(idx)
    assert evaluate(net, batches, config) == pytest.approx((total / 80, nll / 80), rel=1e-6)


def test_first_layer_penalty_gradient_is_that_of_its_formula():
    """The hand-written backward of the L1/L2 penalty matches autograd on the formula itself,
    and gives pruned (all-zero) neurons a zero gradient instead of autograd's NaN."""
    import torch

    from zipo.train.loss import first_layer_l1_l2

    torch.manual_seed(1)
    weight = torch.randn(6, 9, dtype=torch.float64)
    weight[2] = 0.0
    weight[4, :5] = 0.0
    weight.requires_grad_(True)
    assert torch.autograd.gradcheck(first_layer_l1_l2, (weight,))
    (grad,) = torch.autograd.grad(3 * first_layer_l1_l2(weight), weight)

    w = weight.detach().clone().requires_grad_(True)
    alive = [0, 1, 3, 4, 5]
    rows = w[alive]
    formula = (rows.abs().mean(1) / rows.pow(2).mean(1).sqrt()).sum() / w.shape[0]
    (expected,) = torch.autograd.grad(3 * formula, w)
    torch.testing.assert_close(first_layer_l1_l2(weight), formula)
    torch.testing.assert_close(grad, expected)
    assert torch.all(grad[2] == 0)
