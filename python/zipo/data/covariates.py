"""Covariates: ``adata.obs`` columns encoded for the decoder (categories one-hot, numbers
standardised), fixed at training so new cells are encoded as the training cells were.

Messages name the cell annotations and their fixes as the user's language does
(:mod:`zipo.errors`): ``adata.obs`` in Python, colData or a Seurat object's meta.data in R."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError, notice
from .counts import examples

# The cell annotations, as each language calls them.
_OBS = {"python": "adata.obs", "r": "colData (or the Seurat meta.data)"}


#: An integer covariate with at most this many distinct values draws a warning: it is
#: probably a label (batch 1, 2, 3) that should be one-hot encoded, not a number.
FEW_INTEGER_VALUES = 20


class CovariateEncoder:
    """Encodes ``adata.obs`` columns: categories one-hot, numbers standardised.

    The categories and the mean/sd are fixed when training, so inference encodes new cells
    exactly as the training cells were encoded.
    """

    def __init__(self, specs: list[dict[str, Any]] | None = None):
        self.specs = specs or []

    @property
    def names(self) -> list[str]:
        return [s["name"] for s in self.specs]

    @property
    def width(self) -> int:
        return sum(len(s["categories"]) if s["kind"] == "categorical" else 1 for s in self.specs)

    @classmethod
    def fit(cls, obs: pd.DataFrame, columns: Sequence[str]) -> "CovariateEncoder":
        specs = []
        for name in columns:
            col = _column(obs, name)
            if _is_numeric(col):
                n_values = col.nunique()
                if pd.api.types.is_integer_dtype(col) and n_values <= FEW_INTEGER_VALUES:
                    said = (f"covariate {name!r} holds integers with only {n_values} distinct "
                            "values, so it is standardised as one number, not one-hot encoded "
                            "as categories; if these are labels (batch, donor...), ")
                    notice({"python": said + "cast the column to str or category first: "
                                     f"adata.obs[{name!r}] = adata.obs[{name!r}].astype(str)",
                            "r": said + f"make the column a factor first: sce${name} <- "
                                        f"factor(sce${name})"}, stacklevel=3)
                values = col.to_numpy(dtype=np.float64)
                sd = float(values.std())
                specs.append(
                    {"name": name, "kind": "continuous", "mean": float(values.mean()),
                     "sd": sd if sd > 0 else 1.0}
                )
            else:
                cats = col.cat.categories if isinstance(col.dtype, pd.CategoricalDtype) else None
                observed = set(col.astype(str))
                ordered = [str(c) for c in cats if str(c) in observed] if cats is not None else []
                specs.append(
                    {"name": name, "kind": "categorical",
                     "categories": ordered or sorted(observed)}
                )
        return cls(specs)

    def transform(self, obs: pd.DataFrame) -> np.ndarray:
        parts = [np.zeros((len(obs), 0), dtype=np.float32)]
        for s in self.specs:
            col = _column(obs, s["name"])
            if s["kind"] == "continuous":
                if not _is_numeric(col):
                    said = f"covariate {s['name']!r} was numeric when the model was trained but is "
                    raise InputError({"python": f"{said}{col.dtype} now",
                                      "r": f"{said}not now (a factor, character or logical)"},
                                     "pass the same kind of values")
                v = (col.to_numpy(dtype=np.float64) - s["mean"]) / s["sd"]
                parts.append(v.astype(np.float32)[:, None])
            else:
                values = col.astype(str).to_numpy()
                index = {c: i for i, c in enumerate(s["categories"])}
                unseen = sorted(set(values) - set(index))
                if unseen:
                    raise InputError(
                        f"covariate {s['name']!r} has categories the model never saw in "
                        f"training: {examples(unseen)}; the model knows "
                        f"{examples(s['categories'])}",
                        "Map these cells to a known category or retrain with them included",
                        sep=". ")
                onehot = np.zeros((len(values), len(index)), dtype=np.float32)
                onehot[np.arange(len(values)), [index[v] for v in values]] = 1.0
                parts.append(onehot)
        return np.concatenate(parts, axis=1)


    def fixed(self, obs: pd.DataFrame, values: dict[str, Any] | None,
              missing_only: bool = False) -> pd.DataFrame:
        """The covariate columns of ``obs``, with those named in ``values`` set to one value for
        every cell (e.g. ``{"batch": "donor1"}``: predict all cells as if in that batch); with
        ``missing_only``, only those ``obs`` lacks (the cells were measured at these values)."""
        names = self.names
        if not values:
            return obs
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise InputError(
                f"covariate_values names {examples(unknown)}, which the model was not trained "
                "with", f"its covariates are {examples(names) or 'none'}")
        frame = pd.DataFrame(index=obs.index)
        for name in names:
            use_value = name in values and (not missing_only or name not in obs.columns)
            frame[name] = [values[name]] * len(obs) if use_value else obs[name].to_numpy()
        return frame

    def mmd_groups(self, alpha_mmd: float, mmd_covariates: Sequence[str]) -> list[tuple[int, int]]:
        """Column ranges [start, stop) in the encoded covariates of the categorical covariates
        that ``alpha_mmd`` mixes the latents over (``mmd_covariates``, or all categorical
        ones); empty when alpha_mmd is 0. Raises when there is none to mix over."""
        if alpha_mmd <= 0:
            return []
        specs = self.specs
        names = [s["name"] for s in specs]
        categorical = [s["name"] for s in specs if s["kind"] == "categorical"]
        wrong = [n for n in mmd_covariates if n not in categorical]
        if wrong:
            raise InputError(
                f"mmd_covariates names {examples(wrong)}, not a categorical covariate of the "
                "model", "alpha_mmd mixes over categorical covariates (this model's: "
                f"{examples(categorical) or 'none'})")
        groups, start = [], 0
        for s in specs:
            width = len(s["categories"]) if s["kind"] == "categorical" else 1
            if s["kind"] == "categorical" and (not mmd_covariates or s["name"] in mmd_covariates):
                groups.append((start, start + width))
            start += width
        if not groups:
            raise InputError(
                f"alpha_mmd={alpha_mmd:g} mixes the latents across the categories of a "
                "categorical covariate, but the model has none (covariates: "
                f"{examples(names) or 'none'})",
                {"python": "pass e.g. covariates=['batch'] with a string/categorical obs column "
                           "(cast integer labels with .astype(str)), or set alpha_mmd=0",
                 "r": "pass e.g. covariates = \"batch\" with a factor or character colData "
                      "column (make integer labels a factor with factor()), or set "
                      "alpha_mmd = 0"})
        return groups


def _column(obs: pd.DataFrame, name: str) -> pd.Series:
    if name not in obs.columns:
        raise InputError(
            {lang: f"covariate {name!r} is not a column of {where} (columns: "
                   f"{examples(list(obs.columns)) or 'none'})" for lang, where in _OBS.items()},
            "add it or fix the name")
    col = obs[name]
    if col.isna().any():
        n = int(col.isna().sum())
        raise InputError(
            {"python": f"covariate {name!r} has {n} missing values (NaN)",
             "r": f"covariate {name!r} has {n} NA values"},
            {"python": "fill them (e.g. with an 'unknown' category) or drop those cells",
             "r": "fill them (e.g. with an 'unknown' level) or drop those cells"})
    return col


def _is_numeric(col: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
