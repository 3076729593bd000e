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

Optuna is an optional dependency: ``pip install 'zipo[tune]'``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import ZiPoConfig, find_option, read_config_file
from .presets import preset_config

if TYPE_CHECKING:  # pragma: no cover
    from .model import ZiPo

ENCODER_SHAPES = (
    "2048-1024-512-256-128",
    "1024-512-256-128",
    "1024-512-256-128-64",
    "512-256-128",
    "512-256-128-64",
)
"""The encoder shapes the paper searched, as stored in an Optuna study."""

PAPER_SEARCH_SPACE: dict[str, Any] = {
    "encoder_dims": list(ENCODER_SHAPES),
    "alpha_z": (0.01, 1.0, "log"),
    "alpha_w": (0.01, 1.0, "log"),
}
"""The paper's search space, in the ``search_space`` format of :func:`tune`."""

METRICS = ("validation_nll", "validation_loss")
INSTALL_HINT = "hyperparameter search needs Optuna: pip install 'zipo[tune]'"
# Options that change how a trial runs, not what it computes: a resumed study may differ in them.
_RUNTIME_OPTIONS = {"device", "num_threads", "verbose", "checkpoint_every"}
_LIST_OPTIONS = {"encoder_dims", "decoder_dims", "library_dims"}


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
    metric: str = "validation_nll",
    pruner=None,
    sampler=None,
    verbose: bool = False,
    **options: Any,
) -> "ZiPo":
    """Search hyperparameters with Optuna and return the best trial's trained model.

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
        ``"validation_nll"`` (default) or ``"validation_loss"`` (NLL plus penalties).
    pruner, sampler
        Optuna objects replacing the defaults: ``MedianPruner(n_startup_trials=5,
        n_warmup_steps=10)`` and ``TPESampler(seed=...)``. Steps are epochs, counted from 1;
        the value reported at each is the metric at the best validation-loss epoch so far.
    verbose
        Optuna's log and a progress bar over trials (trials' own training bars stay off).

    Returns
    -------
    The best trial's trained :class:`~zipo.ZiPo`, kept in memory from its trial; if that trial
    ran in an earlier session (a resumed study), the model is retrained with its config, which
    on CPU gives the same weights. ``model.study`` is the ``optuna.Study``
    (``model.study.trials_dataframe()``, ``.best_params``, ``.best_value``).
    """
    optuna = _import_optuna()
    from optuna.trial import TrialState

    from .model import ZiPo

    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
        raise ValueError(f"n_trials must be a positive integer, got {n_trials!r}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if timeout is not None and timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    space = _normalise_space(PAPER_SEARCH_SPACE if search_space is None else search_space, optuna)
    base = _base_config(config, preset, layer, covariates, likelihood, max_epochs, seed, options)
    for section, name in space:
        if name in options or f"{section}.{name}" in options:
            raise ValueError(f"{name} is searched, so it cannot also be given as an option; "
                             "drop it from the options or from search_space")
    if base.train.validation_fraction == 0:
        raise ValueError("tuning scores trials on held-out cells: validation_fraction must be > 0")
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
                value = _suggest(trial, name, dist, optuna)
                cfg.update({section: {name: _option_value(name, value)}}, source="search space")
            model = ZiPo(adata, config=cfg)
            state = {"best_loss": math.inf, "score": math.inf}

            def report(trainer) -> None:
                row = trainer.history[-1]
                if row["validation_loss"] < state["best_loss"]:
                    state["best_loss"], state["score"] = row["validation_loss"], row[metric]
                trial.report(state["score"], row["epoch"])
                if trial.should_prune():
                    trial.set_user_attr("epochs", row["epoch"])
                    raise optuna.TrialPruned(f"pruned after epoch {row['epoch']}")

            model.train(callback=report)
            h = model.history
            at = int(h["validation_loss"].to_numpy().argmin())
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
                cfg.update({section: {name: _option_value(name, value)}}, source="best trial")
            model = ZiPo(adata, config=cfg).train()
    finally:
        optuna.logging.set_verbosity(verbosity)
    model.config.train.verbose = _verbose_of(config, options)
    model.study = study
    if out is not None:
        _write_toml_atomic(model.config, out)
    return model


# --------------------------------------------------------------------------- helpers
def _base_config(config, preset, layer, covariates, likelihood, max_epochs, seed,
                 options) -> ZiPoConfig:
    """The config every trial starts from, resolved like ``ZiPo(...)`` does, and checked now."""
    if isinstance(config, ZiPoConfig):
        if preset:
            raise ValueError("pass either a ZiPoConfig object or a preset, not both")
        cfg = ZiPoConfig.from_dict(config.to_dict())
    else:
        cfg = preset_config(preset) if preset else ZiPoConfig()
        if config is not None:
            cfg.update(read_config_file(config), source=str(config))
    given = {"layer": layer, "covariates": covariates, "likelihood": likelihood,
             "max_epochs": max_epochs, **options}
    for key, value in given.items():
        if value is not None:
            cfg.set_option(key, value)
    cfg.set_option("train.seed", seed, source="seed")
    cfg.set_option("train.verbose", False)  # one bar per trial would drown the output
    return cfg


def _verbose_of(config, options) -> bool:
    """The ``verbose`` the user's own config asks for, restored on the returned model."""
    if "verbose" in options:
        return bool(options["verbose"])
    if isinstance(config, ZiPoConfig):
        return config.train.verbose
    if config is not None:
        return read_config_file(config).get("train", {}).get("verbose", True)
    return True


def _normalise_space(space: dict[str, Any], optuna) -> dict[tuple[str, str], Any]:
    """``{(section, name): optuna distribution}``, every option name and choice checked."""
    from optuna.distributions import (
        BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution,
    )

    if not isinstance(space, dict) or not space:
        raise ValueError("search_space must be a non-empty dict {option: distribution}")
    out: dict[tuple[str, str], Any] = {}
    for key, spec in space.items():
        section, name = find_option(key, source="search_space")
        where = f"search_space[{key!r}]"
        if isinstance(spec, BaseDistribution):
            dist = spec
        elif isinstance(spec, list):
            if not spec:
                raise ValueError(f"{where} has no choices")
            choices = [_choice(name, c, where) for c in spec]
            dist = CategoricalDistribution(choices)
        elif isinstance(spec, tuple) and len(spec) in (2, 3):
            low, high = spec[0], spec[1]
            log = len(spec) == 3
            if log and spec[2] != "log":
                raise ValueError(f"{where}: the third item may only be 'log', got {spec[2]!r}")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                       for v in (low, high)):
                raise ValueError(f"{where}: bounds must be numbers, got {spec!r}")
            if not low < high or (log and low <= 0):
                raise ValueError(f"{where}: need low < high (and low > 0 on a log scale), "
                                 f"got {spec!r}")
            if isinstance(low, int) and isinstance(high, int):
                dist = IntDistribution(low, high, log=log)
            else:
                dist = FloatDistribution(float(low), float(high), log=log)
        else:
            raise ValueError(
                f"{where} must be a list of choices, (low, high), (low, high, 'log') or an "
                f"optuna distribution, got {spec!r}"
            )
        # Every value the distribution can give must be a valid option value.
        probes = (dist.choices if isinstance(dist, CategoricalDistribution)
                  else [dist.low, dist.high])
        for probe in probes:
            ZiPoConfig().update({section: {name: _option_value(name, probe)}}, source=where)
        out[(section, name)] = dist
    if len({name for _, name in out}) < len(out):
        raise ValueError("search_space names one option twice")
    return out


def _choice(name: str, value: Any, where: str):
    """A categorical choice as Optuna can store it: list options become ``"512-128"``."""
    if name in _LIST_OPTIONS and isinstance(value, (list, tuple)):
        return "-".join(str(int(v)) for v in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"{where}: choice {value!r} is not a number, string, bool or list of widths")


def _option_value(name: str, value: Any) -> Any:
    """A sampled value as the config wants it (``"512-128"`` -> ``[512, 128]``)."""
    if name in _LIST_OPTIONS and isinstance(value, str):
        try:
            return [int(v) for v in value.split("-")] if value else []
        except ValueError:
            raise ValueError(
                f"{name}: {value!r} is not a list of widths like '512-256-128'"
            ) from None
    return value


def _suggest(trial, name: str, dist, optuna):
    d = optuna.distributions
    if isinstance(dist, d.CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, d.IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, d.FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    raise ValueError(f"unsupported distribution for {name}: {dist!r}")


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
    if out.exists() and not overwrite:
        raise ValueError(f"{str(out)!r} already exists; choose another out or pass overwrite=True "
                         "(--overwrite)")
    if not out.parent.is_dir():
        raise ValueError(
            f"cannot write {str(out)!r}: the folder {str(out.parent)!r} does not exist"
        )
    return out


def _write_toml_atomic(cfg: ZiPoConfig, path: Path) -> None:
    import tomli_w

    text = tomli_w.dumps(cfg.to_dict())
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=".toml", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


__all__ = ["tune", "PAPER_SEARCH_SPACE", "ENCODER_SHAPES", "trials_table"]
