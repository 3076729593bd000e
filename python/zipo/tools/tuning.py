"""Hyperparameter search with Optuna: ``zipo.tune(adata, n_trials=20)``, ``zipo tune``.

The default space is the paper's: the encoder shape among five (stored in the study as strings
such as ``"512-256-128"``) and ``alpha_z``, ``alpha_w`` log-uniform in [0.01, 1]. Every trial
trains a model with the same seed, hence on the same validation cells, and is scored by the
validation NLL per entry of the weights it keeps (those of its best validation-loss epoch).
The total validation loss would not do as a score: it includes ``alpha_z`` and ``alpha_w``
times their penalties, so it favours the smallest alphas whatever the fit.

Each epoch's score is reported to Optuna, whose pruner (median rule by default) stops trials
that fall behind. With a database ``storage`` the study survives the process: running again
with the same ``study_name`` continues it up to ``n_trials`` finished trials in total.

:func:`tune` returns a :class:`TuneResult`: the best trial's trained model and the study.
Optuna is an optional dependency: ``pip install 'zipo[tune]'``.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import ZiPoConfig, find_option, resolve_config
from ..files import check_target, write_text_atomic
from ..option_types import one_of
from .search_space import (
    ENCODER_SHAPES, PAPER_SEARCH_SPACE, normalise_space, option_value, suggest,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..model import ZiPo

METRICS = ("validation_heldout_nll", "validation_nll", "validation_loss")
INSTALL_HINT = "hyperparameter search needs Optuna: pip install 'zipo[tune]'"
# Options that change how a trial runs, not what it computes: a resumed study may differ in them.
_RUNTIME_OPTIONS = {"device", "num_threads", "verbose", "checkpoint_every"}


@dataclass(frozen=True)
class TuneResult:
    """What :func:`tune` found: ``model``, the best trial's trained :class:`~zipo.ZiPo`
    (its ``config`` is the best config), and ``study``, the ``optuna.Study`` of every trial
    (``study.trials_dataframe()``, ``study.best_trial``)."""

    model: "ZiPo"
    study: Any

    @property
    def best_params(self) -> dict[str, Any]:
        """The searched options' values in the best trial, as the study stores them
        (encoder shapes as strings such as ``"512-256-128"``)."""
        return dict(self.study.best_params)

    @property
    def best_value(self) -> float:
        """The best trial's score: :attr:`metric` at the epoch its model kept (lower is better)."""
        return float(self.study.best_value)

    @property
    def metric(self) -> str:
        """The validation figure the trials were scored by (see :func:`tune`)."""
        return self.study.user_attrs["zipo_metric"]

    def trials(self) -> "Any":
        """One row per trial (:func:`trials_table`)."""
        return trials_table(self.study)

    def __getattr__(self, name: str) -> Any:
        # tune() returned the model itself before it returned a TuneResult.
        if name.startswith("_") or name in ("model", "study"):
            raise AttributeError(name)
        warnings.warn(f"zipo.tune returns a TuneResult: use result.model.{name}, not "
                      f"result.{name}", DeprecationWarning, stacklevel=2)
        return getattr(self.model, name)


def _import_optuna():
    try:
        import optuna
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return optuna


def tune(
    adata,
    n_trials: int = 20,
    storage: str | None = None,
    study_name: str = "zipo",
    timeout: float | None = None,
    max_epochs: int | None = None,
    search_space: dict[str, Any] | None = None,
    config: ZiPoConfig | str | Path | None = None,
    preset: str | None = None,
    seed: int = 0,
    layer: str | None = None,
    covariates: list[str] | None = None,
    likelihood: str | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    metric: str | None = None,
    pruner=None,
    sampler=None,
    verbose: bool = False,
    **options: Any,
) -> TuneResult:
    """Search hyperparameters with Optuna; return the best trial's trained model and the study.

    Parameters
    ----------
    adata, layer, covariates, likelihood, config, preset, **options
        As for :class:`~zipo.ZiPo`: they make the base configuration every trial starts from;
        the searched options override it. ``max_epochs`` caps every trial's training.
    n_trials
        Finished (complete or pruned) trials the study should hold in total. A study loaded
        from ``storage`` that already holds some runs only the missing ones.
    storage, study_name
        An Optuna storage URL, e.g. ``"sqlite:///zipo-tune.db"``, to keep the study on disk and
        resume it by running again with the same ``study_name``. ``None`` keeps it in memory.
    timeout
        Stop starting new trials after this many seconds.
    search_space
        ``{option: distribution}`` replacing the paper's space (:data:`PAPER_SEARCH_SPACE`).
        Options are config names (``alpha_z``, ``model.decoder_dims``...). A distribution is a
        list of choices (list options such as ``encoder_dims`` as ``"512-128"`` strings or
        lists of ints), ``(low, high)`` (uniform; ints give integers), ``(low, high, "log")``
        (log-uniform), or an ``optuna.distributions`` object.
    seed
        Seeds the TPE sampler and every trial's training (initial weights, validation split),
        so all trials are scored on the same validation cells.
    out
        Write the best trial's config here as TOML (atomically), for ``zipo train --config``
        or ``ZiPo(adata, config=...)``. An existing file is replaced only with ``overwrite``.
    metric
        ``"validation_heldout_nll"`` (held-out molecules of the validation cells; the default
        when ``train.heldout_molecules`` > 0, as it is by default), ``"validation_nll"`` (the
        default otherwise) or ``"validation_loss"`` (NLL plus penalties).
    pruner, sampler
        Optuna objects replacing the defaults: ``MedianPruner(n_startup_trials=5,
        n_warmup_steps=10)`` and ``TPESampler(seed=...)``. Steps are epochs, counted from 1;
        the value reported at each is the metric at the best epoch so far (the epoch training
        keeps: :func:`zipo.train.schedule.monitored_column`).
    verbose
        Optuna's log and a progress bar over trials (trials' own training bars stay off).

    Returns
    -------
    TuneResult
        ``.model``, the best trial's trained :class:`~zipo.ZiPo`, kept in memory from its
        trial (if that trial ran in an earlier run of a resumed study, it is retrained with its
        config, which on CPU gives the same weights); trials train one fit each, and the
        best then gets the further fits ``train.n_fits`` asks (``ZiPo.add_fits``);
        ``.study``, the ``optuna.Study``; and ``.best_params``, ``.best_value`` and
        ``.trials()``.
    """
    optuna = _import_optuna()
    from optuna.trial import TrialState

    from ..model import ZiPo
    from ..train.schedule import kept_row, monitored_column

    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
        raise ValueError(f"n_trials must be a positive integer, got {n_trials!r}")
    if timeout is not None and timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    space = normalise_space(PAPER_SEARCH_SPACE if search_space is None else search_space, optuna)
    base, user_verbose = _base_config(config, preset, {
        "layer": layer, "covariates": covariates, "likelihood": likelihood,
        "max_epochs": max_epochs, **options, "train.seed": seed})
    for section, name in space:
        if name in options or f"{section}.{name}" in options:
            raise ValueError(f"{name} is searched, so it cannot also be given as an option; "
                             "drop it from the options or from search_space")
    if base.train.validation_fraction == 0:
        raise ValueError("tuning scores trials on held-out cells: validation_fraction must be > 0")
    metric = metric or ("validation_heldout_nll" if base.train.heldout_molecules > 0
                        else "validation_nll")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {one_of(METRICS)}, got {metric!r}")
    if metric == "validation_heldout_nll" and base.train.heldout_molecules <= 0:
        raise ValueError("metric='validation_heldout_nll' needs train.heldout_molecules > 0")
    if (metric != "validation_heldout_nll" and base.train.heldout_molecules > 0
            and base.train.validation_holdout == "molecules"):
        raise ValueError(f"metric={metric!r} scores the validation cells' kept molecules, which "
                         "the trials train on under validation_holdout='molecules': score "
                         "'validation_heldout_nll', or set validation_holdout='cells'")
    out = _check_out(out, overwrite)

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)
    try:
        study = _open_study(optuna, storage, study_name, pruner)
        fingerprint = {"zipo_metric": metric,
                       "zipo_data": f"{adata.n_obs} cells x {adata.n_vars} genes",
                       "zipo_base_config": _comparable(base)}
        _check_same_settings(study, fingerprint, study_name)
        finished = (TrialState.COMPLETE, TrialState.PRUNED)
        done = len(study.get_trials(deepcopy=False, states=finished))
        # A resumed study gets a sampler seeded past the trials it holds, so it does not propose
        # the first session's random start-up points again.
        study.sampler = sampler or optuna.samplers.TPESampler(seed=seed + len(study.trials))
        best: dict[str, Any] = {}

        def objective(trial) -> float:
            cfg = ZiPoConfig.from_dict(base.to_dict())
            for (section, name), dist in space.items():
                value = suggest(trial, name, dist, optuna)
                cfg.update({section: {name: option_value(name, value)}}, source="search space")
            cfg.train.n_fits = 1  # a trial is scored on its first fit; the best gets the rest
            model = ZiPo(adata, config=cfg)
            state = {"best_loss": math.inf, "score": math.inf}

            def report(trainer) -> None:
                row = trainer.history[-1]
                kept = row[monitored_column(row)]
                if kept < state["best_loss"]:
                    state["best_loss"], state["score"] = kept, row[metric]
                trial.report(state["score"], len(trainer.history))  # rounds: an int step
                if trial.should_prune():
                    trial.set_user_attr("epochs", row["epoch"])
                    raise optuna.TrialPruned(f"pruned after epoch {row['epoch']}")

            model.train(callback=report)
            h = model.history
            at = kept_row(h)
            score = float(h[metric].iloc[at])
            trial.set_user_attr("epochs", len(h))
            trial.set_user_attr("best_epoch", int(h["epoch"].iloc[at]))
            if not best or score < best["score"]:
                best.update(score=score, number=trial.number, model=model)
            return score

        remaining = n_trials - done
        if remaining > 0:
            study.optimize(
                objective, n_trials=remaining, timeout=timeout, catch=(FloatingPointError,),
                callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=finished)],
                show_progress_bar=verbose,
            )
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not complete:
            raise ValueError(
                f"no trial of study {study_name!r} completed ({len(study.trials)} ran: "
                f"{_state_counts(study)}); allow more epochs before pruning or more trials"
            )
        best_trial = study.best_trial
        if best.get("number") == best_trial.number:
            model = best["model"]
        else:  # best trial ran in an earlier session: retrain it
            cfg = ZiPoConfig.from_dict(base.to_dict())
            for name, value in best_trial.params.items():  # its own space, whatever ours is now
                section, name = find_option(name, source=f"trial {best_trial.number}")
                cfg.update({section: {name: option_value(name, value)}}, source="best trial")
            cfg.train.n_fits = 1
            model = ZiPo(adata, config=cfg).train()
        model.add_fits(base.train.n_fits)  # the fits the config asks beyond the trial's one
    finally:
        optuna.logging.set_verbosity(verbosity)
    model.config.train.verbose = user_verbose
    if out is not None:
        import tomli_w

        write_text_atomic(out, tomli_w.dumps(model.config.to_dict()), overwrite=overwrite)
    return TuneResult(model, study)


# --------------------------------------------------------------------------- helpers
def _base_config(config, preset, options) -> tuple[ZiPoConfig, bool]:
    """The config every trial starts from, resolved like ``ZiPo(...)`` does and checked now,
    and the ``verbose`` it asks for (restored on the returned model)."""
    cfg = resolve_config(config, preset, options)
    verbose = cfg.train.verbose
    cfg.set_option("train.verbose", False)  # one bar per trial would drown the output
    return cfg, verbose


def _comparable(cfg: ZiPoConfig) -> str:
    d = cfg.to_dict()
    d["train"] = {k: v for k, v in d["train"].items() if k not in _RUNTIME_OPTIONS}
    return json.dumps(d, sort_keys=True)


def _open_study(optuna, storage, study_name: str, pruner):
    if storage is not None and (not isinstance(storage, str) or "://" not in storage):
        raise ValueError(f"storage must be a database URL such as 'sqlite:///zipo-tune.db', "
                         f"got {storage!r}")
    pruner = pruner or optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=10)
    try:
        return optuna.create_study(storage=storage, study_name=study_name, pruner=pruner,
                                   direction="minimize", load_if_exists=True)
    except Exception as e:  # sqlalchemy/optuna raise many kinds on a bad URL or file
        if isinstance(e, ValueError) and "direction" in str(e):
            raise ValueError(f"study {study_name!r} in {storage!r}: {e}") from None
        raise ValueError(f"cannot open the Optuna storage {storage!r}: "
                         f"{type(e).__name__}: {e}".splitlines()[0]) from None


def _check_same_settings(study, fingerprint: dict[str, str], study_name: str) -> None:
    """Refuse to mix trials run on other data, with another metric or another base config."""
    attrs = study.user_attrs
    if study.trials and not attrs:
        raise ValueError(f"study {study_name!r} holds trials that zipo.tune did not run; "
                         "choose another study_name")
    for key, value in fingerprint.items():
        if key not in attrs:
            study.set_user_attr(key, value)
        elif attrs[key] != value:
            what = {"zipo_metric": f"metric ({attrs[key]}, now {value})",
                    "zipo_data": f"data ({attrs[key]}, now {value})",
                    "zipo_base_config": "base config (options, config file, preset, max_epochs "
                                        "or seed)"}[key]
            raise ValueError(
                f"study {study_name!r} was run with another {what}, so its scores are not "
                "comparable to new trials; resume it with the same settings, or choose another "
                "study_name"
            )


def _state_counts(study) -> str:
    counts: dict[str, int] = {}
    for t in study.trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def _check_out(out, overwrite: bool) -> Path | None:
    if out is None:
        return None
    out = Path(out)
    if out.suffix != ".toml":
        raise ValueError(f"out must be a .toml file, got {str(out)!r}")
    return check_target(out, overwrite, hint="overwrite=True (--overwrite)")


def trials_table(study) -> "Any":
    """One row per trial of a :func:`tune` study: number, state, score (named after the
    metric), epochs trained and the searched values."""
    import pandas as pd

    score = study.user_attrs.get("zipo_metric", "value")
    rows = []
    for t in study.trials:
        rows.append({"trial": t.number, "state": t.state.name, score: t.value,
                     "epochs": t.user_attrs.get("epochs"), **t.params})
    return pd.DataFrame(rows)


__all__ = ["tune", "TuneResult", "PAPER_SEARCH_SPACE", "ENCODER_SHAPES", "trials_table"]
