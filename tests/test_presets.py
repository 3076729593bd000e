"""Presets: the configurations method.md describes, that they train, that explicit options and
config files override them, clear errors, and ``zipo train --preset``."""

from __future__ import annotations

import numpy as np
import pytest

import zipo
from zipo.cli import main
from zipo.config import ZiPoConfig, load_config
from zipo.config import preset_config
from zipo.presets import (COVARIATES_DECODER_DIMS, PRESETS, SMALL_DATA, SMALL_DATA_CELLS,
                          SMALL_DATA_SCHEDULE, covariate_options, small_data_options)

DCA_LIKE = {"encoder_dims": [128, 64], "decoder_dims": [128]}  # DCA's 128-64-128

# method.md: "dca" (NB, 128-64-128, log input, library-size normalised input), "zipdca" (the same
# with Poisson, zero-inflated), "tuneddca" (DCA's shape with ZiPo-like settings), all with the
# paper's LibNet library; "paper" is the paper's best model: 2048-1024-512-256-128, residuals,
# sigmoid + batch norm, linear decoder, ZIP, predicted library, alpha_z = alpha_w = 0.1, trained
# as published; "zipo" (the defaults) is its kind of network, 512-256-32 wide with two decoder
# layers of 128, with ZINB heads and the observed library.
PAPER_NETWORK = {"encoder_dims": [2048, 1024, 512, 256, 128], "decoder_dims": [],
                 "residuals": True, "activation": "sigmoid", "batch_norm": True,
                 "input_transform": "log1p", "alpha_z": 0.1, "alpha_w": 0.1}
PREDICTED = {"library": "predicted"}
EXPECTED = {
    "zipo": {**PAPER_NETWORK, "encoder_dims": [512, 256, 32], "decoder_dims": [128, 128],
             "likelihood": "zinb", "library": "observed"},
    "fast": {**PAPER_NETWORK, "encoder_dims": [512, 256, 32], "decoder_dims": [128, 128],
             "likelihood": "zinb", "library": "observed"},
    "paper": {**PAPER_NETWORK, **PREDICTED, "likelihood": "zip"},
    "dca": {"likelihood": "nb", **DCA_LIKE, **PREDICTED, "residuals": False,
            "activation": "relu", "input_transform": "normalize_log1p", "alpha_w": 0.0},
    "zipdca": {"likelihood": "zip", **DCA_LIKE, **PREDICTED, "residuals": False,
               "activation": "relu", "input_transform": "normalize_log1p", "alpha_w": 0.0},
    "tuneddca": {"likelihood": "zip", **DCA_LIKE, **PREDICTED, "residuals": True,
                 "activation": "sigmoid", "batch_norm": True, "input_transform": "log1p",
                 "alpha_z": 0.1, "alpha_w": 0.1},
}


# The paper's and DCA's training: reconstruct all counts, stop on the validation cells' loss
# with patience in epochs (zipo's default trains and stops on held-out molecules).
RECONSTRUCT = {"heldout_molecules": 0.0, "objective_heldout": 0.0, "plateau_stop": 0,
               "patience_min_steps": 0, "validation_interval": 2**31 - 1,
               "validation_max_cells": 0,  # validated once an epoch on 10% of the cells
               "neighbour_pooling": "off",  # the published output: no borrowing
               # the paper's patiences, from a flat 0.001, no weight average
               "learning_rate": 0.001, "lr_min": 0.001, "weight_average": 0.0,
               "decoder_lr_factor": 1.0, "plateau_patience": 15, "early_stopping_patience": 30}
# "fast": the defaults' model at a flat 0.003 for all of it, with a weight average
FAST = {"learning_rate": 0.003, "lr_min": 0.003, "weight_average": 0.97, "decoder_lr_factor": 1.0,
        "plateau_patience": 8, "early_stopping_patience": 16}
EXPECTED_TRAIN = {"zipo": {}, "fast": FAST, "paper": RECONSTRUCT, "dca": RECONSTRUCT, "zipdca": RECONSTRUCT,
                  "tuneddca": RECONSTRUCT}


def test_every_preset_is_described():
    assert set(PRESETS) == set(EXPECTED)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_preset_fields(name):
    cfg = preset_config(name)
    for key, value in EXPECTED[name].items():
        assert getattr(cfg.model, key) == value, (name, key)
    # Presets set the model and how it trains; everything else keeps the defaults.
    default = ZiPoConfig()
    default.update({"train": EXPECTED_TRAIN[name]})
    assert cfg.data == default.data and cfg.train == default.train
    # A fresh object each time: changing one never leaks into the next.
    cfg.model.encoder_dims.append(1)
    assert preset_config(name).model.encoder_dims == EXPECTED[name]["encoder_dims"]


def test_zipo_preset_is_the_default():
    assert preset_config("zipo") == ZiPoConfig()


@pytest.mark.parametrize("name", list(EXPECTED))
def test_preset_builds_trains_and_denoises(pbmc_small, name):
    model = zipo.ZiPo(pbmc_small, preset=name, max_epochs=2, batch_size=32, seed=0, verbose=False)
    net, m = model.network, EXPECTED[name]
    if m["encoder_dims"] == ZiPoConfig().model.encoder_dims:  # 80 cells: the narrower shape
        m = {**m, **SMALL_DATA["model"]}
    # The network has the preset's shape.
    assert [block[0].out_features for block in net.encoder] == m["encoder_dims"]
    assert len(net.residuals) == (len(m["encoder_dims"]) - 1 if m["residuals"] else 0)
    assert [block[0].out_features for block in net.decoder] == m["decoder_dims"]
    assert net.input_transform == m["input_transform"]
    assert (net.z_head is not None) == (m["likelihood"] in ("zip", "zinb"))
    assert (net.theta_head is not None) == (m["likelihood"] in ("nb", "zinb"))
    act = type(net.encoder[0][1]).__name__.lower()
    assert act == m["activation"]

    model.train()
    assert len(model.history) == 2
    out = model.denoise(pbmc_small, copy=True)
    den = out.layers["zipo_denoised"]
    assert den.shape == pbmc_small.shape and np.isfinite(den).all() and (den > 0).all()
    assert out.obsm["X_zipo"].shape == (pbmc_small.n_obs, m["encoder_dims"][-1])


def test_covariates_keep_one_decoder_layer_unless_a_shape_is_set():
    def decoder(n_cells, **options):
        cfg = ZiPoConfig()
        cfg.set_options(options)
        small_data_options(cfg, n_cells)
        covariate_options(cfg)
        return cfg.model.decoder_dims

    assert decoder(1000) == [128, 128] and decoder(1000, covariates=[]) == [128, 128]
    assert decoder(1000, covariates=["batch"]) == COVARIATES_DECODER_DIMS == [128]
    assert decoder(1000, covariates=["batch"], decoder_dims=[64, 64]) == [64, 64]
    assert decoder(80, covariates=["batch"]) == SMALL_DATA["model"]["decoder_dims"]


def test_small_data_options_replace_defaults_only():
    def small(n_cells, **options):
        cfg = ZiPoConfig()
        cfg.set_options(options)
        small_data_options(cfg, n_cells)
        t = cfg.train
        return (cfg.model.encoder_dims, cfg.model.decoder_dims, t.max_epochs,
                (t.learning_rate, t.lr_min, t.decoder_lr_factor, t.weight_average),
                t.dispersion_choice, t.plateau_stop)

    # the defaults: a flat 0.001, the decoder at three times it, the weights' average
    default_schedule, doubled = (0.001, 0.001, 3.0, 0.97), tuple(SMALL_DATA_SCHEDULE.values())
    # from 500 cells training ends at the plateau's first cut (None), under 500 cells its second
    default = ([512, 256, 32], [128, 128], 300, default_schedule, "auto", None)
    narrow = ([512, 256, 8], [32], 1000, doubled, "off", 2)
    assert doubled == (0.002, 0.002, 1.0, 0.0)
    assert small(SMALL_DATA_CELLS - 1) == narrow
    assert small(SMALL_DATA_CELLS) == default
    assert small(80, small_data=False) == default
    # a shape set explicitly is kept whole, even in part, and with it the schedule
    assert small(80, encoder_dims=[256, 16]) == ([256, 16], [128, 128], 1000, default_schedule,
                                                 "off", 2)
    assert small(80, decoder_dims=[64]) == ([512, 256, 32], [64], 1000, default_schedule, "off",
                                            2)
    assert small(80, **PRESETS["paper"]["model"])[0] == [2048, 1024, 512, 256, 128]
    assert small(80, max_epochs=50) == ([512, 256, 8], [32], 50, doubled, "off", 2)
    assert small(80, plateau_stop=3)[5] == 3 and small(80, **PRESETS["paper"]["train"])[5] == 0
    assert small(80, plateau_stop=1)[5] == 1  # set explicitly: kept, though it is the rule's
    # a schedule set in part is kept whole: the preset's, or one option of it
    assert small(80, **PRESETS["fast"]["train"])[3] == (0.003, 0.003, 1.0, 0.97)
    assert small(80, learning_rate=0.0005)[3] == (0.0005, 0.001, 3.0, 0.97)
    assert small(80, lr_min=0.0001)[3] == (0.001, 0.0001, 3.0, 0.97)
    assert small(80, weight_average=0.9)[3] == (0.001, 0.001, 3.0, 0.9)
    assert small(80, decoder_lr_factor=2)[3] == (0.001, 0.001, 2.0, 0.97)

def test_small_data_options_are_recorded_and_reloaded(pbmc_small, tmp_path):
    model = zipo.ZiPo(pbmc_small, batch_size=32, seed=0, verbose=False)
    assert model.config.train.max_epochs == SMALL_DATA["train"]["max_epochs"]
    model.train(max_epochs=2)
    assert len(model.history) == 2
    # the optimiser ran at the small-data rate, not only the config
    assert (model.history["learning_rate"] == SMALL_DATA_SCHEDULE["learning_rate"]).all()
    model.save(tmp_path / "m")
    loaded = zipo.ZiPo.load(tmp_path / "m")
    assert loaded.config.model.decoder_dims == SMALL_DATA["model"]["decoder_dims"]
    assert loaded.config.train.learning_rate == SMALL_DATA_SCHEDULE["learning_rate"]
    assert loaded.get_latent(pbmc_small).shape == (pbmc_small.n_obs, 8)


def test_explicit_options_override_the_preset(pbmc_small):
    model = zipo.ZiPo(pbmc_small, preset="dca", likelihood="zinb", encoder_dims=[32, 8],
                      alpha_w=0.05, verbose=False)
    m = model.config.model
    assert (m.likelihood, m.encoder_dims, m.alpha_w) == ("zinb", [32, 8], 0.05)
    # ... and only what was given: the rest is still the preset's.
    assert m.decoder_dims == [128] and m.activation == "relu" and not m.residuals
    assert m.input_transform == "normalize_log1p"
    assert model.network.theta_head is not None and model.network.z_head is not None


def test_config_file_overrides_the_preset_and_options_override_the_file(pbmc_small, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[model]\nlikelihood = "zinb"\nencoder_dims = [64, 16]\n'
                   '[train]\nmax_epochs = 7\n')
    model = zipo.ZiPo(pbmc_small, preset="dca", config=cfg, encoder_dims=[32, 8], verbose=False)
    m = model.config.model
    assert m.likelihood == "zinb"  # file beat preset
    assert m.encoder_dims == [32, 8]  # option beat file
    assert m.decoder_dims == [128] and m.activation == "relu"  # preset where the file is silent
    assert model.config.train.max_epochs == 7


def test_unknown_preset_errors_clearly(pbmc_small):
    with pytest.raises(ValueError, match="unknown preset 'scvi'; choose one of zipo, fast, paper, "
                                         "dca, zipdca, tuneddca"):
        zipo.ZiPo(pbmc_small, preset="scvi")
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("DCA")  # names are case-sensitive
    with pytest.raises(ValueError, match="either a ZiPoConfig object or a preset"):
        zipo.ZiPo(pbmc_small, preset="dca", config=ZiPoConfig())


def test_cli_train_with_preset_dca(pbmc_small_path, tmp_path, capsys):
    out = tmp_path / "model"
    rc = main(["train", str(pbmc_small_path), "--preset", "dca", "--out", str(out),
               "--max-epochs", "2", "--batch-size", "32", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert "Trained 2 epochs" in capsys.readouterr().out
    saved = load_config(out / "config.toml")
    assert saved.model.likelihood == "nb"
    assert saved.model.encoder_dims == [128, 64] and saved.model.decoder_dims == [128]
    assert saved.model.input_transform == "normalize_log1p" and not saved.model.residuals
    loaded = zipo.ZiPo.load(out)
    assert loaded.config.model == saved.model
    assert loaded.network.theta_head is not None and loaded.network.z_head is None

    # A flag overrides the preset, the rest of the preset stays.
    out2 = tmp_path / "model2"
    assert main(["train", str(pbmc_small_path), "--preset", "dca", "--likelihood", "zinb",
                 "--encoder-dims", "32", "8", "--out", str(out2), "--max-epochs", "1",
                 "--batch-size", "32", "--quiet"]) == 0
    saved = load_config(out2 / "config.toml")
    assert (saved.model.likelihood, saved.model.encoder_dims) == ("zinb", [32, 8])
    assert saved.model.decoder_dims == [128] and saved.model.activation == "relu"


def test_cli_unknown_preset_is_refused(pbmc_small_path, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", str(pbmc_small_path), "--preset", "scvi", "--out", str(tmp_path / "m")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'scvi'" in err and "dca" in err
    assert list(tmp_path.iterdir()) == []
