"""Checking a config option's value against the type its dataclass field declares, so a
typo or a wrong type in a config file, ``--set`` or a keyword names the key and what it wants;
and the values of the options that name a choice.

The choices are named here, not in the modules that implement them (:mod:`zipo.distributions`,
:mod:`zipo.nn.network`, which import them from here), so that reading and checking a config
needs no torch."""

from __future__ import annotations

import dataclasses
from typing import Any, get_type_hints

#: Every likelihood by name: (zero_inflated, negative_binomial).
LIKELIHOODS = {"zip": (True, False), "zinb": (True, True), "poisson": (False, False),
               "nb": (False, True)}
ACTIVATIONS = ("sigmoid", "relu", "gelu", "tanh", "elu", "softplus")
INPUT_TRANSFORMS = ("log1p", "normalize_log1p")
FIRST_LAYER_MODES = ("auto", "sparse", "dense")
NEIGHBOUR_POOLING = ("auto", "off")
LIBRARY_MODES = ("predicted", "observed")
DISPERSIONS = ("gene-cell", "gene")
#: The allowed values of each option that names a choice, by (section, option).
CHOICES = {("model", "likelihood"): tuple(LIKELIHOODS), ("model", "activation"): ACTIVATIONS,
           ("model", "input_transform"): INPUT_TRANSFORMS, ("model", "library"): LIBRARY_MODES,
           ("model", "dispersion"): DISPERSIONS, ("train", "first_layer"): FIRST_LAYER_MODES,
           ("train", "neighbour_pooling"): NEIGHBOUR_POOLING}


def field_names(klass) -> list[str]:
    return [f.name for f in dataclasses.fields(klass)]


def checked_value(section: str, target, key: str, value: Any, source: str) -> Any:
    """Return ``value`` coerced to the declared type of ``section.key`` or raise ValueError."""
    hints = get_type_hints(type(target))
    if key not in hints:
        raise ValueError(
            f"{source}: unknown key {key!r} in [{section}]; valid keys are "
            f"{', '.join(field_names(type(target)))}"
        )
    hint = str(hints[key])
    where = f"{source}: [{section}] {key}"
    if value is None:
        if "None" in hint:
            return None
        raise ValueError(f"{where} cannot be empty")
    if "list[int]" in hint:
        if isinstance(value, (list, tuple)) and all(_is_int(v) for v in value):
            return [int(v) for v in value]
        raise ValueError(f"{where} must be a list of integers, got {value!r}")
    if "list[str]" in hint:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ValueError(f"{where} must be a list of strings, got {value!r}")
    if hint.startswith("<class 'bool'>") or hint == "bool":
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where} must be true or false, got {value!r}")
    if "int" in hint:
        if _is_int(value):
            return int(value)
        raise ValueError(f"{where} must be an integer, got {value!r}")
    if "float" in hint:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"{where} must be a number, got {value!r}")
    if "str" in hint:
        if isinstance(value, str):
            return value
        raise ValueError(f"{where} must be a string, got {value!r}")
    raise AssertionError(f"unhandled option type {hint} for {key}")  # pragma: no cover


def _is_int(v: Any) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or (
        hasattr(v, "dtype") and getattr(v.dtype, "kind", "") in "iu"
    )
