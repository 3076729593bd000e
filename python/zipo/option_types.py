"""Checking a config option's value against the type its dataclass field declares, so a
typo or a wrong type in a config file, ``--set`` or a keyword names the key and what it wants;
the values of the options that name a choice; and each option's range.

The choices are named here, not in the modules that implement them (:mod:`zipo.distributions`,
:mod:`zipo.nn.network`, which import them from here), so that reading and checking a config
needs no torch."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, get_type_hints

from .errors import InputError

#: Every likelihood by name: (zero_inflated, negative_binomial).
LIKELIHOODS = {"zip": (True, False), "zinb": (True, True), "poisson": (False, False),
               "nb": (False, True)}
ACTIVATIONS = ("sigmoid", "relu", "gelu", "tanh", "elu", "softplus")
INPUT_TRANSFORMS = ("log1p", "normalize_log1p")
FIRST_LAYER_MODES = ("auto", "sparse", "dense")
AUTO_OR_OFF = ("auto", "off")
VALIDATION_HOLDOUT = ("cells", "molecules")
LIBRARY_MODES = ("predicted", "observed")
DISPERSIONS = ("gene-cell", "gene")
#: The allowed values of each option that names a choice, by (section, option).
CHOICES = {("model", "likelihood"): tuple(LIKELIHOODS), ("model", "activation"): ACTIVATIONS,
           ("model", "input_transform"): INPUT_TRANSFORMS, ("model", "library"): LIBRARY_MODES,
           ("model", "dispersion"): DISPERSIONS, ("train", "first_layer"): FIRST_LAYER_MODES,
           ("train", "neighbour_pooling"): AUTO_OR_OFF,
           ("train", "dispersion_choice"): AUTO_OR_OFF,
           ("train", "validation_holdout"): VALIDATION_HOLDOUT}


def one_of(choices) -> str:
    """``'a', 'b' or 'c'``: the choices as a message names them, in R's words as Python's."""
    names = [repr(c) for c in choices]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def unknown_name(what: str, name: str, known: list[str], where: str = "") -> str:
    """``unknown option 'epochs' (did you mean 'max_epochs'?); known options are ...``: the
    closest known names by spelling, then them all; dotted names (``train.max_epochs``) are
    written dotted only when ``name`` is."""
    bare = {k.rsplit(".", 1)[-1]: k for k in known}
    close = difflib.get_close_matches(name.rsplit(".", 1)[-1], list(bare), n=2, cutoff=0.6)
    if "." in name:
        close = [bare[c] for c in close]
    else:
        known = list(bare)
    hint = f" (did you mean {one_of(close)}?)" if close else ""
    return f"unknown {what} {name!r}{where}{hint}; known {what}s are {', '.join(known)}"


def field_names(klass) -> list[str]:
    return [f.name for f in dataclasses.fields(klass)]


def checked_value(section: str, target, key: str, value: Any, source: str) -> Any:
    """Return ``value`` coerced to the declared type of ``section.key`` or raise ValueError
    (a keyword argument's by its name, a config's as ``source: [section] key``)."""
    hints = get_type_hints(type(target))
    if key not in hints:
        raise ValueError(f"{source}: "
                         + unknown_name("key", key, field_names(type(target)), f" in [{section}]"))
    hint = str(hints[key])
    where = key if source == "argument" else f"{source}: [{section}] {key}"

    def refuse(python: str, r: str | None = None):
        return InputError({"python": f"{where} must be {python}, got {value!r}",
                           "r": f"{where} must be {r or python}, got {_r_value(value)}"})

    if value is None:
        if "None" in hint:
            return None
        raise ValueError(f"{where} cannot be empty")
    if "list[int]" in hint:
        if isinstance(value, (list, tuple)) and all(_is_int(v) for v in value):
            return [int(v) for v in value]
        raise refuse("a list of integers", "a vector of whole numbers, e.g. c(512, 128)")
    if "list[str]" in hint:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        raise refuse("a list of strings", "a character vector")
    if hint.startswith("<class 'bool'>") or hint == "bool":
        if isinstance(value, bool):
            return value
        raise refuse("True or False" if source == "argument" else "true or false",
                     "TRUE or FALSE")
    if "int" in hint:
        if _is_int(value):
            return int(value)
        raise refuse("an integer", "a whole number")
    if "float" in hint:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise refuse("a number")
    if "str" in hint:
        if isinstance(value, str):
            return value
        raise refuse("a string", "a character string")
    raise AssertionError(f"unhandled option type {hint} for {key}")  # pragma: no cover


def _r_value(value: Any) -> str:
    """``value`` as R would write what reticulate sent: ``c("64")`` for a list, ``"yes"``."""
    if isinstance(value, (list, tuple)):
        return f"c({', '.join(_r_value(v) for v in value)})"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    return f'"{value}"' if isinstance(value, str) else repr(value)


# Train options with a least value: (name, least, what the least means).
TRAIN_MINIMA = (("n_fits", 0, " (0: chosen by the number of cells)"), ("checkpoint_every", 1, ""),
                ("max_epochs", 1, ""),
                ("plateau_stop", 0, " (0: never; empty: chosen by the data's size)"),
                ("patience_min_steps", 0, " (0: patience in epochs)"))


# Options the R package's functions name otherwise (train(epochs = ...)).
ARGUMENT_NAMES = {"python": {}, "r": {"max_epochs": "epochs"}}


def check_ranges(m, t) -> None:
    """Raise ValueError naming the first option of the [model] ``m`` or [train] ``t``
    settings whose value is not one of its choices or is out of its range."""
    sections = {"model": m, "train": t}
    for (section, name), choices in CHOICES.items():
        value = getattr(sections[section], name)
        if value not in choices:
            raise ValueError(f"{name} must be one of {one_of(choices)}, got {value!r}")
    for name in ("encoder_dims", "decoder_dims", "library_dims"):
        dims = getattr(m, name)
        if any(d < 1 for d in dims):
            raise ValueError(f"{name} must hold positive layer widths, got {dims}")
    if not m.encoder_dims:
        raise ValueError("encoder_dims needs at least one layer (its last width is the latent size)")
    for name in ("alpha_z", "alpha_w", "alpha_theta", "mse_weight", "alpha_kl", "alpha_mmd"):
        if getattr(m, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(m, name)}")
    if not 0 <= t.validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {t.validation_fraction}")
    for name in ("heldout_molecules", "objective_heldout", "weight_average"):
        if not 0 <= getattr(t, name) < 1:
            raise ValueError(f"{name} must be in [0, 1), got {getattr(t, name)}")
    if t.batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (batch norm needs 2 cells), got {t.batch_size}")
    if t.validation_interval < 1 or t.validation_max_cells < 0:
        raise ValueError("validation_interval must be >= 1 and validation_max_cells >= 0 "
                         f"(got {t.validation_interval} and {t.validation_max_cells})")
    for name, least, meaning in TRAIN_MINIMA:
        if getattr(t, name) is not None and getattr(t, name) < least:
            raise InputError({lang: f"{names.get(name, name)} must be >= {least}{meaning}, got "
                                    f"{getattr(t, name)}" for lang, names in ARGUMENT_NAMES.items()})
    if t.prefetch < 0 or t.shuffle_chunk < 0:
        raise ValueError("prefetch and shuffle_chunk must be >= 0 "
                         f"(got {t.prefetch} and {t.shuffle_chunk})")
    for name in ("learning_rate", "lr_min", "decoder_lr_factor"):
        if getattr(t, name) <= 0:
            raise ValueError(f"{name} must be > 0, got {getattr(t, name)}")
    if not 0 <= t.early_stopping_threshold < 1:
        raise ValueError("early_stopping_threshold must be in [0, 1), got "
                         f"{t.early_stopping_threshold}")
    if not 0 < t.lr_decay <= 1 or not 0 < t.plateau_factor <= 1:
        raise ValueError("lr_decay and plateau_factor must be in (0, 1]")


def _is_int(v: Any) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or (
        hasattr(v, "dtype") and getattr(v.dtype, "kind", "") in "iu"
    )
