"""Named starting configurations: ``ZiPo(adata, preset="dca")``, ``zipo train --preset dca``.

A preset only sets options (:func:`zipo.config.resolve_config` applies it); anything passed explicitly (or in a config file given beside it)
overrides it. The DCA-like presets are the paper's way of comparing with DCA inside one
framework, since DCA itself needs TensorFlow < 2.5 and no longer installs; like the paper
they train by reconstructing all counts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .config import ZiPoConfig

_DCA_SHAPE = {"encoder_dims": [128, 64], "decoder_dims": [128]}  # DCA's 128-64-128
# The paper's (and DCA's) training: reconstruct all counts, stop on the validation cells' loss
# by early stopping alone, patience counted in epochs only (validated once an epoch, on 10% of
# the cells however many), and the posterior borrows nothing from neighbouring cells. The
# schedule is the paper's plateau (15) and early stopping (30) from a flat 0.001 (ours: see
# method, "Learning rate"), without a weight average.
_RECONSTRUCT = {"heldout_molecules": 0.0, "objective_heldout": 0.0, "plateau_stop": 0,
                "patience_min_steps": 0, "validation_interval": 2**31 - 1,
                "validation_max_cells": 0, "neighbour_pooling": "off",
                "learning_rate": 0.001, "lr_min": 0.001, "weight_average": 0.0,
                "decoder_lr_factor": 1.0, "plateau_patience": 15, "early_stopping_patience": 30}
# The paper's heads: ZIP with LibNet's predicted library (the defaults are ZINB with the
# observed library). The DCA-like presets keep LibNet, as in the paper.
_PAPER_HEADS = {"likelihood": "zip", "library": "predicted"}
# The paper's best network's shape (the defaults: a narrower encoder and two decoder layers).
_PAPER_SHAPE = {"encoder_dims": [2048, 1024, 512, 256, 128], "decoder_dims": []}

# ZiPo's network with all of it at a flat 0.003 (the defaults: the decoder at 0.003, the encoder
# at 0.001), the same average of the weights, patiences and stopping rule: the defaults'
# epochs on PBMC 4k, 0.8x their steps on 100,000 simulated cells at about their held-out
# deviance, latents that cluster cell types less well (docs, history: "A faster schedule:
# the fast preset"; RESULTS, "`preset="fast"` at atlas scale").
_FAST = {"learning_rate": 0.003, "lr_min": 0.003, "weight_average": 0.97,
         "decoder_lr_factor": 1.0, "plateau_patience": 8, "early_stopping_patience": 16}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # ZiPo's defaults: the paper's kind of network, 512-256-32 wide with two decoder layers of 128,
    # with ZINB heads and the observed library, trained and stopped on held-out molecules.
    "zipo": {},
    # The defaults' model, trained faster.
    "fast": {"train": _FAST},
    # The paper's best model exactly as published: 2048-1024-512-256-128, linear decoder, ZIP,
    # predicted library, reconstruct all counts, stop on the validation cells' loss (docs, method,
    # "where we differ from the paper").
    "paper": {"model": {**_PAPER_HEADS, **_PAPER_SHAPE}, "train": _RECONSTRUCT},
    # DCA as its authors recommend: NB, 128-64-128, ReLU, no residuals, log input of
    # library-size-normalised counts, no first-layer sparsity penalty.
    "dca": {"model": {**_PAPER_HEADS, **_DCA_SHAPE, "likelihood": "nb", "activation": "relu",
                      "residuals": False, "input_transform": "normalize_log1p",
                      "alpha_w": 0.0}, "train": _RECONSTRUCT},
    # The same with a zero-inflated Poisson likelihood ("zipDCA" in the paper).
    "zipdca": {"model": {**_PAPER_HEADS, **_DCA_SHAPE, "likelihood": "zip", "activation": "relu",
                         "residuals": False, "input_transform": "normalize_log1p",
                         "alpha_w": 0.0}, "train": _RECONSTRUCT},
    # DCA's shape with ZiPo's settings: ZIP, sigmoid + batch norm, residuals, log1p input,
    # alpha_z = alpha_w = 0.1 ("tunedDCA").
    "tuneddca": {"model": {**_PAPER_HEADS, **_DCA_SHAPE, "likelihood": "zip", "activation": "sigmoid",
                           "residuals": True, "input_transform": "log1p",
                           "alpha_z": 0.1, "alpha_w": 0.1}, "train": _RECONSTRUCT},
}


# Under SMALL_DATA_CELLS cells (where train.n_fits = 0 also trains four fits), the options
# still at the defaults' values take these (train.small_data): on 80 and 100 cells the 32
# latents and three 128 x genes heads fit the cells' noise, and the narrower network predicted
# held-out molecules better, by the validation cells' molecules as by the test molecules
# (docs, history: "A narrower network on small data"). At a flat 0.001 it takes
# 400-700 epochs of one step each; twice the rate reaches the same deviance, on the validation
# cells' molecules as on the test molecules, in 40% less time on 100 cells ("The narrower
# network's learning rate"), all of it at that rate: the decoder's faster rate and the weights'
# average of the defaults left these cells' deviance where it was and clustered pbmc_small's
# latents worse ("A faster decoder with an average and shorter patiences").
SMALL_DATA_CELLS = 500
# The dispersion choice is off there: a fit validates on ten cells, and its choices scattered
# ("A dispersion scale chosen on the fixed split"). Training ends at the plateau's second cut:
# the first was measured from 500 cells only ("Stopping at the plateau's first cut").
SMALL_DATA = {"model": {"encoder_dims": [512, 256, 8], "decoder_dims": [32]},
              "train": {"max_epochs": 1000, "dispersion_choice": "off", "plateau_stop": 2}}
SMALL_DATA_SCHEDULE = {"learning_rate": 0.002, "lr_min": 0.002, "decoder_lr_factor": 1.0,
                       "weight_average": 0.0}


def small_data_options(config: "ZiPoConfig", n_cells: int) -> None:
    """Give ``config`` the :data:`SMALL_DATA` options where the data have fewer than
    :data:`SMALL_DATA_CELLS` cells and ``train.small_data`` is on: the network's shape where
    both ``encoder_dims`` and ``decoder_dims`` are the defaults' (a shape set by a preset, a
    file or an option is kept), with it the :data:`SMALL_DATA_SCHEDULE` where its
    options are all the defaults', and each other train option of it (``max_epochs``,
    ``dispersion_choice``, ``plateau_stop``) where it is the default's."""
    from .config import ZiPoConfig

    if not config.train.small_data or n_cells >= SMALL_DATA_CELLS:
        return
    default, small = ZiPoConfig(), {"train": {}}

    def at_defaults(section: str, keys) -> bool:
        return all(getattr(getattr(config, section), k) == getattr(getattr(default, section), k)
                   for k in keys)

    if at_defaults("model", ("encoder_dims", "decoder_dims")):
        small["model"] = SMALL_DATA["model"]
        # the schedule was measured with the narrower network only
        if at_defaults("train", SMALL_DATA_SCHEDULE):
            small["train"].update(SMALL_DATA_SCHEDULE)
    small["train"].update({key: value for key, value in SMALL_DATA["train"].items()
                           if at_defaults("train", (key,))})
    config.update(small, source="train.small_data")


# With covariates the decoder keeps the one hidden layer of 128 that the defaults had before
# their second: predicting cells at other covariates (``denoise(covariate_values=...)``)
# transfers a cell's state to another batch through the decoder, and with two layers a
# simulated batch effect predicted away was left 4-7x as large on two of three seeds (and
# 3.6x smaller on the third): docs, history, "Two hidden decoder layers become the default".
COVARIATES_DECODER_DIMS = [128]


def covariate_options(config: "ZiPoConfig") -> None:
    """Give ``config`` :data:`COVARIATES_DECODER_DIMS` where it has covariates and its
    ``decoder_dims`` is the defaults' (after :func:`small_data_options`, whose narrower network
    is kept; a shape set by a preset, a file or an option is kept)."""
    from .config import ZiPoConfig

    if config.data.covariates and config.model.decoder_dims == ZiPoConfig().model.decoder_dims:
        config.update({"model": {"decoder_dims": COVARIATES_DECODER_DIMS}},
                      source="data.covariates")
