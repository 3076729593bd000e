"""Every option of a ZiPo run, grouped as the TOML config file groups them.

A config file has up to three tables, ``[data]``, ``[model]`` and ``[train]``, whose keys are
the fields below. Unknown keys and wrong types are refused with a message naming the key, so a
typo never silently falls back to a default. The effective config is saved with each model.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from .option_types import check_ranges, checked_value, field_names, unknown_name
from .presets import PRESETS


@dataclass
class DataConfig:
    """Where the counts are and which cell annotations are known covariates."""

    layer: str | None = None
    """Layer holding raw counts; ``None`` means ``adata.X``."""
    covariates: list[str] = field(default_factory=list)
    """``adata.obs`` columns fed beside the latents. Categorical/string/bool columns are
    one-hot encoded; numeric columns are standardised."""
    allow_non_integer: bool = False
    """Accept non-integer values (e.g. ambient-corrected counts). Off by default because the
    likelihoods are for counts and normalised data is a common mistake."""


@dataclass
class ModelConfig:
    """Network shape and loss. The kind of network is the paper's best model (sigmoid, batch
    norm, residuals from every encoder layer into the latents); the widths, decoder layers,
    likelihood and library are ours (docs, method: "where we differ from the paper");
    ``preset="paper"`` restores the paper's 2048-1024-512-256-128 encoder, linear decoder and
    ZIP with a predicted library."""

    likelihood: str = "zinb"
    """``zinb`` (default), ``zip`` (the paper's), ``nb`` or ``poisson``. With ZINB each cell's
    rates scatter around the network's mean by a fitted dispersion, which is what lets
    ``denoise(expectation="posterior")`` update the rates by each cell's own counts."""
    encoder_dims: list[int] = field(default_factory=lambda: [512, 256, 32])
    """Widths of the encoder layers; the last is the number of latents. The paper's
    2048-1024-512-256-128 scored the same on held-out molecules at about twice the cost per
    epoch and twice the epochs; 32 latents instead of 128 tie on held-out molecules and
    cluster cell types better (docs, method: "where we differ from the paper")."""
    residuals: bool = True
    """Residual maps from every earlier encoder layer into the latent layer."""
    activation: str = "sigmoid"
    batch_norm: bool = True
    decoder_dims: list[int] = field(default_factory=lambda: [128, 128])
    """Hidden decoder layers before the heads; empty is the paper's linear decoder (two of 128:
    docs, method, "Two hidden decoder layers")."""
    library: str = "observed"
    """Where each cell's library size l (the scale of its rates) comes from: ``predicted``, the
    paper's LibNet, a small network from the latents (``library_dims``), or ``observed``, the
    total counts of the cell the network reads (no LibNet), divided under zero inflation by
    sum_g (1 - pi_g) mu_g so that the expected counts sum to that total. A predicted library
    needs the latents to encode each cell's depth; the observed one (as in scVI) does not,
    though they still follow it (the encoder reads raw depth; docs, history: "Depth in the
    latents"). Under Noise2Self l is the kept molecules' total and the held-out rate is
    rescaled by q / (1 - q); when denoising, l is the cell's own total."""
    library_dims: list[int] = field(default_factory=lambda: [16, 4])
    """Hidden widths of LibNet (the predicted library only)."""
    dispersion: str = "gene-cell"
    """NB inverse dispersion theta (ZINB/NB only), named as in scVI: ``gene-cell``, a head from
    the latents per cell and gene (the paper's, as DCA), or ``gene``, one theta per gene
    (scVI's default). A per-cell theta can explain zeros by dispersion, not a low rate."""
    input_transform: str = "log1p"
    """``log1p`` of counts, or ``normalize_log1p`` (scale each cell to its median library
    size first, as DCA does). Both keep zeros zero, so the input stays sparse."""
    alpha_z: float = 0.1
    """Weight of E[z^2], the zero-inflation penalty (ZIP/ZINB)."""
    alpha_w: float = 0.1
    """Weight of the scale-invariant L1/L2 penalty on first-layer weights."""
    alpha_theta: float = 1e-4
    """Weight of E[theta^2] (ZINB/NB only; the paper gives no value, this is ours). Like
    ``mse_weight`` it is relative to the NLL of a whole cell, as in method.md: the loss adds
    ``alpha_theta / genes * E[theta^2]`` to the NLL per entry."""
    mse_weight: float = 0.1
    """Weight of E[(l mu - x)^2], the paper's "very small" term that stabilises NB training
    (ZINB/NB only), relative to the NLL of a whole cell: the loss adds ``mse_weight / genes *
    E[(l mu - x)^2]`` to the NLL per entry. (Unscaled, 0.1 x the rate MSE was half the loss on
    PBMC 4k and ZINB fitted barely better than no model.)"""
    alpha_kl: float = 0.0
    """Weight of KL(N(U, var) || N(0, I)) on the latents (0: deterministic latents). Above 0
    training decodes a draw from N(U, var), var from a head on U, and the loss adds
    ``alpha_kl / genes * KL`` per cell (1: an ELBO, as scVI's); inference uses the means U."""
    alpha_mmd: float = 0.0
    """Weight of a batch-mixing penalty on the latents (0: off): per training mini-batch and
    category of each categorical covariate, the squared MMD (RBF kernels, ``train/loss.py``)
    between its cells' latents and the others'. Covariates alone leave a batch effect in the
    latents (the encoder sees the affected counts); with it they mix and
    ``denoise(covariate_values={"batch": ref})`` removes most of the effect
    (benchmarks/batch_correction.py). It assumes similar cell-type make-ups across categories.
    Not in the validation loss, so ``train_loss`` exceeds it by the penalty."""
    mmd_covariates: list[str] = field(default_factory=list)
    """Which categorical covariates ``alpha_mmd`` mixes over (empty: all categorical
    covariates); e.g. mix over "batch" but not over a "condition" that is real biology."""


@dataclass
class TrainConfig:
    """Optimiser, schedule and stopping rule (the paper's, except that training and stopping
    score held-out molecules by default; ``preset="paper"`` restores the paper's)."""

    max_epochs: int = 300
    batch_size: int = 256
    validation_fraction: float = 0.1
    validation_max_cells: int = 4096
    """At most this many cells are held out for validation (0: no cap), so that validating
    costs the same from 41,000 cells up instead of growing with the data; the rest train."""
    validation_interval: int = 100
    """Most optimiser steps between validations. An epoch longer than this is cut into equal
    *rounds* of at most this many steps, and the plateau, early stopping, their patiences,
    ``checkpoint_every`` and the history count rounds: a large dataset is watched several
    times a pass and stops within a few passes once it has converged. Where an epoch is at
    most this long (up to 25,600 cells at batch 256, all training) a round is an epoch."""
    learning_rate: float = 0.001
    """Starting learning rate; above ``lr_min`` it is warmed down by ``lr_decay`` each round
    (the default is flat). 0.0212 is the paper's schedule, which on PBMC 4k let zero inflation
    explain most zeros; 0.003 for the whole network (``preset="fast"``) takes about as many
    epochs as the defaults, with latents that cluster cell types less well (docs, history: "A
    faster schedule: the fast preset")."""
    weight_average: float = 0.97
    """Decay per optimiser step of an exponential moving average of the weights (0: off).
    Above 0, validation, early stopping and the trained model use the average, which smooths
    out the optimiser's step-to-step noise, as a lower learning rate would, without slowing
    the descent; with it the faster decoder keeps its held-out deviance and the shorter
    patiences suffice (docs, history: "A faster decoder with an average and shorter
    patiences")."""
    decoder_lr_factor: float = 3.0
    """The learning rate of the decoder, its mean and zero-inflation heads and the library
    network, as a multiple of the encoder's and the dispersion's (``learning_rate`` and its
    schedule). With ``weight_average`` and patiences 8 and 16 it took PBMC 4k from 94 epochs
    to 55 at the same held-out deviance and latents that cluster as well (ten seeds); 1 is the
    earlier defaults' (with ``weight_average = 0``, patiences 15 and 30)."""
    lr_decay: float = 0.9
    """Multiplied into the learning rate every round until it reaches ``lr_min``."""
    lr_min: float = 0.001
    """Floor of the warm-down (a ``learning_rate`` below it stays flat)."""
    plateau_patience: int = 8
    """Rounds (epochs on data of up to ``validation_interval`` steps an epoch) without
    progress before the plateau cuts the learning rate."""
    plateau_threshold: float = 0.001
    """Relative improvement in validation loss that counts as progress (0.1%)."""
    plateau_factor: float = 0.1
    plateau_stop: int | None = None
    """Training also ends at the plateau's n-th learning-rate cut (0: never), best weights kept.
    None: the first where an epoch is one round (up to ``validation_interval`` steps), the
    second on larger data and under 500 cells (``small_data``; ``train.schedule.plateau_stop``)."""
    early_stopping_patience: int = 16
    """Rounds without progress before training stops."""
    early_stopping_threshold: float = 0.0
    """Relative improvement on the best epoch that early stopping counts as progress (0: any).
    Smaller gains still update the weights a trained model keeps."""
    patience_min_steps: int = 60
    """Both patiences are multiplied alike until the plateau's spans this many optimiser steps
    (under ~1,000 cells an epoch is 1-3 steps and it cut the rate while training still gained;
    docs, history: "Patience in optimiser steps"). 0: epochs only (the presets, as published)."""
    heldout_molecules: float = 0.1
    """Fraction of each validation cell's molecules held out by binomial thinning; above 0 the
    history gains ``validation_heldout_nll`` (the Poisson NLL of those molecules given the rate
    predicted from the rest) and the schedule and early stopping watch it instead of the
    validation loss, which rewards copying a cell's noise (``zipo/train/heldout.py``). Under
    NB/ZINB it also gains ``validation_heldout_nll_posterior``, the same score of the rate
    given the kept counts (``denoise(expectation="posterior")``); it is reported, not watched.
    0 is the paper's rule (``preset="paper"``): watch the validation loss."""
    validation_holdout: str = "molecules"
    """What validation holds out of its cells (with ``heldout_molecules`` above 0):
    ``"molecules"``, a fixed ``heldout_molecules`` share of their molecules, drawn once: the
    cells train on the rest like any other, and validation scores molecules of cells the
    network has seen, as the cells it denoises are, so the schedule, early stopping and the
    borrowing from neighbours are chosen in that setting; or ``"cells"``, the whole cells,
    which never train, so validation scores cells the network has not seen. Molecules scored
    as well or better on held-out molecules on six datasets at both MCV splits (docs,
    history: "Validation on molecules of cells that train"). The history's
    ``validation_loss`` and ``validation_nll`` then score the kept molecules, which trained."""
    objective_heldout: float = 0.1
    """Above 0, each training step holds out this fraction of every cell's molecules by
    binomial thinning, feeds the network the rest and scores it on predicting the held-out
    ones (Noise2Self / molecular cross-validation as the objective: copying the input cannot
    pay). 0 is the paper's objective (``preset="paper"``): reconstruct all counts."""
    neighbour_pooling: str = "auto"
    """``"auto"``: after training, choose on the validation cells' held-out molecules whether
    and how much the posterior output borrows from each cell's nearest cells in the latent
    space (:mod:`zipo.neighbours`); ``"off"``: never."""
    dispersion_choice: str = "auto"
    """``"auto"``: with the borrowing, where that is chosen, also choose whether the posterior
    output uses the dispersion theta times 2 instead of theta (the network's rate then counts
    more against the cell's own count), on the same held-out molecules; off under 500 cells
    (``small_data``). It chose 2 on PBMC 4k and the mouse cells, predicting held-out
    molecules 0.04-0.17% better and masked counts 0.6-1.2% better, and theta itself on the
    simulation and the immune cells. Factors below 1, which follow the cells' own dropout
    zeros, are not offered (docs, history: "A dispersion scale chosen on the fixed split").
    ``"off"``: the network's own theta."""
    seed: int = 0
    n_fits: int = 0
    """Networks trained, fit k from ``seed + k - 1``; ``denoise`` averages their outputs (the
    latents, programs and history are the first fit's). 0: 4 under 500 cells, else 1
    (docs, history: "Averages of fits on small data": 1.3-4% better held-out deviance there)."""
    small_data: bool = True
    """On data of fewer than 500 cells, the options still at the defaults' values take
    small-data ones: 8 latents (``encoder_dims = [512, 256, 8]``), a decoder layer of 32,
    trained at a flat 0.002 (the decoder too, without the weights' average) for at most
    1,000 epochs (an epoch there is one or two optimiser steps) to the plateau's second cut,
    without the dispersion choice. The wider network fits the few cells' noise; the
    narrower one predicted held-out molecules 1-3% better on 80 and 100 cells, and twice the
    learning rate gets there in 40% less time on 100 cells (docs, history: "A narrower network
    on small data", "The narrower network's learning rate"). The config then records what
    the model used. False: the defaults on any data."""
    checkpoint_every: int = 10
    """Rounds (epochs on smaller data, see ``validation_interval``) between checkpoints when
    training with a checkpoint directory; a checkpoint may fall mid-epoch."""
    device: str = "auto"
    first_layer: str = "auto"
    """How the first encoder layer reads a batch: ``sparse`` (cost grows with the batch's
    non-zeros), ``dense``, or ``auto``: sparse when under 3% of the counts are non-zero,
    where it was measured to be faster (``benchmarks/scale.py``). Inference reads densely
    unless this is ``sparse``."""
    mixed_precision: bool = True
    """On CUDA, train the encoder in bfloat16 (the decoder heads and likelihood stay float32);
    validation and inference run in float32."""
    prefetch: int = 2
    """Batches a background thread prepares ahead of the training step (0: none), in passes
    of more than one batch."""
    shuffle_chunk: int = 0
    """Cells per shuffled chunk (each batch is several random chunks of consecutive cells).
    0 picks: 1 (a plain permutation) in memory, batch_size / 8 for an on-disk (backed) matrix,
    where contiguous reads are much faster than scattered ones."""
    num_threads: int | None = None
    """CPU threads for torch; ``None`` keeps torch's default."""
    verbose: bool = True


@dataclass
class ZiPoConfig:
    """Every option of a model and its training, in three sections.

    Build one with :func:`~zipo.config.resolve_config` (preset, then file, then options),
    :func:`~zipo.load_config` (a TOML file) or ``ZiPoConfig()`` (the defaults), and pass it
    as ``ZiPo(adata, config=cfg)``. ``zipo config`` prints every option with its default, as
    a TOML file. Names and types are checked when set: an unknown key or a wrong type is
    refused with a message naming it.

    Parameters
    ----------
    data
        Where the counts are and which ``adata.obs`` columns are covariates
        (:class:`DataConfig`, the ``[data]`` table).
    model
        Network shape, likelihood and penalties (:class:`ModelConfig`, ``[model]``).
    train
        Optimiser, schedule, stopping rule and devices (:class:`TrainConfig`, ``[train]``).

    Examples
    --------
    >>> cfg = ZiPoConfig()
    >>> cfg.set_option("model.alpha_z", 0.5)
    >>> cfg.train.max_epochs = 100  # not checked until validate(); set_option checks at once
    >>> cfg.to_dict()["model"]["alpha_z"]
    0.5
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        # TOML has no null: options left at None are omitted and come back as defaults.
        return {
            name: {k: v for k, v in dataclasses.asdict(getattr(self, name)).items() if v is not None}
            for name in SECTIONS
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "ZiPoConfig":
        cfg = cls()
        cfg.update(d, source=source)
        return cfg

    def update(self, d: dict[str, Any], source: str = "config") -> "ZiPoConfig":
        """Set options from a nested ``{section: {key: value}}`` dict, checking names and types."""
        if not isinstance(d, dict):
            raise ValueError(f"{source}: expected a table of sections, got {type(d).__name__}")
        for section, values in d.items():
            if section not in SECTIONS:
                raise ValueError(
                    f"{source}: unknown section [{section}]; the sections are "
                    f"{', '.join('[' + s + ']' for s in SECTIONS)}"
                )
            if not isinstance(values, dict):
                raise ValueError(f"{source}: [{section}] must be a table of key = value")
            target = getattr(self, section)
            for key, value in values.items():
                setattr(target, key, checked_value(section, target, key, value, source))
        self.validate()
        return self

    def set_option(self, key: str, value: Any, source: str = "argument") -> None:
        """Set one option by bare name (``alpha_z``) or dotted name (``model.alpha_z``)."""
        section, name = find_option(key, source)
        self.update({section: {name: value}}, source=source)

    def set_options(self, options: Mapping[str, Any], source: str = "argument") -> None:
        """Set every option of ``options`` whose value is not None (see :meth:`set_option`)."""
        for key, value in options.items():
            if value is not None:
                self.set_option(key, value, source=source)

    def validate(self) -> None:
        """Check every option's choice and range (:func:`zipo.option_types.check_ranges`)."""
        check_ranges(self.model, self.train)

SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


def find_option(key: str, source: str = "argument") -> tuple[str, str]:
    """Resolve ``model.alpha_z`` or a bare ``alpha_z`` to its (section, name)."""
    if "." in key:
        section, name = key.split(".", 1)
        if section in SECTIONS and name in field_names(SECTIONS[section]):
            return section, name
    else:
        for section, klass in SECTIONS.items():
            if key in field_names(klass):
                return section, key
    known = sorted(f"{s}.{n}" for s, k in SECTIONS.items() for n in field_names(k))
    raise ValueError(("" if source == "argument" else f"{source}: ")
                     + unknown_name("option", key, known))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The tables of a TOML config file as written (only the keys it sets), checked."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist")
    try:
        with open(path, "rb") as fh:
            d = tomllib.load(fh)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"config file {str(path)!r} is not valid TOML: {e}") from None
    ZiPoConfig.from_dict(d, source=str(path))  # names, types and ranges
    return d


def preset_config(name: str) -> ZiPoConfig:
    """A fresh :class:`ZiPoConfig` holding the preset ``name`` (see :mod:`zipo.presets`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return ZiPoConfig.from_dict(PRESETS[name], source=f"preset {name!r}")


def resolve_config(config: ZiPoConfig | str | Path | None = None, preset: str | None = None,
                   options: Mapping[str, Any] | None = None, assignments: Sequence[str] = (),
                   source: str = "argument") -> ZiPoConfig:
    """The configuration of a run, each step overriding the one before: ``preset`` (default:
    the defaults), the TOML file ``config`` where it sets a key (or a copy of a ZiPoConfig
    object, which excludes a preset), ``options`` by name (None values are skipped), then
    ``assignments``, ``"key=value"`` strings as ``--set`` takes them."""
    if isinstance(config, ZiPoConfig):
        if preset:
            raise ValueError("pass either a ZiPoConfig object or a preset, not both")
        cfg = ZiPoConfig.from_dict(config.to_dict())  # own copy
    else:
        cfg = preset_config(preset) if preset else ZiPoConfig()
        if config is not None:
            cfg.update(read_config_file(config), source=str(config))
    cfg.set_options(options or {}, source=source)
    for item in assignments:
        key, value = parse_assignment(item, "--set", "section.key=value")
        cfg.set_option(key, value, source="--set")
    return cfg


def parse_assignment(item: str, flag: str, form: str) -> tuple[str, Any]:
    """``"key=value"`` -> (key, value), the value read as TOML (numbers, booleans, [lists],
    "strings"; bare words are strings)."""
    if "=" not in item:
        raise ValueError(f"{flag} expects {form}, got {item!r}")
    key, text = item.split("=", 1)
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    return key.strip(), value


def load_config(path: str | Path) -> ZiPoConfig:
    """Read a TOML config file into a checked :class:`ZiPoConfig` (defaults for unset keys)."""
    return ZiPoConfig.from_dict(read_config_file(path), source=str(path))
