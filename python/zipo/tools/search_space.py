"""The search space of :func:`zipo.tune`: the paper's, or the user's, as Optuna distributions
over config options."""

from __future__ import annotations

from typing import Any

from ..config import ZiPoConfig, find_option

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

_LIST_OPTIONS = {"encoder_dims", "decoder_dims", "library_dims"}


def normalise_space(space: dict[str, Any], optuna) -> dict[tuple[str, str], Any]:
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
            ZiPoConfig().update({section: {name: option_value(name, probe)}}, source=where)
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


def option_value(name: str, value: Any) -> Any:
    """A sampled value as the config wants it (``"512-128"`` -> ``[512, 128]``)."""
    if name in _LIST_OPTIONS and isinstance(value, str):
        try:
            return [int(v) for v in value.split("-")] if value else []
        except ValueError:
            raise ValueError(
                f"{name}: {value!r} is not a list of widths like '512-256-128'"
            ) from None
    return value


def suggest(trial, name: str, dist, optuna):
    d = optuna.distributions
    if isinstance(dist, d.CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, d.IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, d.FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    raise ValueError(f"unsupported distribution for {name}: {dist!r}")
