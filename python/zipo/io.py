"""Saving and loading models: a directory of tensors + JSON, written atomically, loaded safely.

Layout of a model directory::

    zipo.json     format version, config, gene names, covariate encoding
    config.toml   the same config as TOML, reusable with ``zipo train --config``
    weights.pt    the network's state dict: tensors only, loaded with ``weights_only=True``
                  so a model file can never run code
    history.csv   per-epoch losses and learning rate
    fits/2, ...   the further fits of a model of several (``train.n_fits``), each laid out
                  as above (format version 2; a model of one fit is version 1, as before)

The directory is written under a temporary name beside ``path`` and renamed into place, so a
crash leaves either the old model or the new one, never half of one. This module reads and
writes plain data (:class:`SavedModel`); :meth:`zipo.ZiPo.save` makes one of a model and
:meth:`zipo.ZiPo.load` builds a model from one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import tomli_w
import torch

from . import __version__
from .config import ZiPoConfig
from .files import atomic_path, write_synced

FORMAT = "zipo-model"
FORMAT_VERSION = 2  # 2: further fits in fits/ (a zipo that reads 1 refuses, not drops, them)
FITS_DIR = "fits"
META_FILE, WEIGHTS_FILE, HISTORY_FILE = "zipo.json", "weights.pt", "history.csv"
# Options that models saved by older zipo versions lack, with the values those versions used
# (so a saved model keeps its network and training whatever today's defaults are).
OLDER_SAVES = {"model": {"library": "predicted", "dispersion": "gene-cell"},
               "train": {"heldout_molecules": 0.0, "objective_heldout": 0.0}}
CONFIG_FILE = "config.toml"  # the effective config, reusable with `zipo train --config`


@dataclass
class SavedModel:
    """What a model directory holds; :meth:`zipo.ZiPo.load` builds the model from it."""

    config: ZiPoConfig
    var_names: list[str]
    covariates: list[dict]  # CovariateEncoder specs
    weights: dict[str, torch.Tensor]
    history: pd.DataFrame
    is_trained: bool
    pruning: dict | None = None  # the record of ZiPo.prune, when the first layer was pruned
    pooling: dict | None = None  # the neighbour pooling chosen at training (zipo.neighbours)
    fits: list["SavedModel"] = field(default_factory=list)  # the further fits, 2 to n


def write_model(saved: SavedModel, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``saved`` as a model directory at ``path``, atomically."""
    with atomic_path(path, overwrite=overwrite, directory=True) as tmp:
        _write_files(saved, tmp)
    return Path(path)


def _write_files(saved: SavedModel, directory: Path) -> None:
    meta = {
        "format": FORMAT,
        "format_version": 2 if saved.fits else 1,
        "zipo_version": __version__,
        "is_trained": saved.is_trained,
        "config": saved.config.to_dict(),
        "var_names": [str(g) for g in saved.var_names],
        "covariates": saved.covariates,
    }
    if saved.pruning:
        meta["pruned"] = saved.pruning
    if saved.pooling:
        meta["neighbour_pooling"] = saved.pooling
    if saved.fits:
        meta["fits"] = len(saved.fits) + 1
    weights = {k: v.detach().cpu().contiguous() for k, v in saved.weights.items()}
    tmp = Path(directory)
    write_synced(tmp / META_FILE, lambda fh: fh.write(json.dumps(meta, indent=1).encode()))
    write_synced(tmp / WEIGHTS_FILE, lambda fh: torch.save(weights, fh))
    write_synced(tmp / CONFIG_FILE, lambda fh: fh.write(tomli_w.dumps(meta["config"]).encode()))
    write_synced(tmp / HISTORY_FILE,
                 lambda fh: fh.write(saved.history.to_csv(index=False).encode()))
    for k, fit in enumerate(saved.fits, 2):
        (tmp / FITS_DIR / str(k)).mkdir(parents=True)
        _write_files(fit, tmp / FITS_DIR / str(k))


def read_model(path: str | Path) -> SavedModel:
    """The contents of the model directory ``path``, checked; ValueError says what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"no ZiPo model at {str(path)!r}: it is not a directory")
    try:
        meta = json.loads((path / META_FILE).read_text())
    except FileNotFoundError:
        raise ValueError(
            f"{str(path)!r} is not a ZiPo model directory ({META_FILE} is missing)"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{str(path / META_FILE)!r} is corrupt ({e}); save the model again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{str(path / META_FILE)!r} does not describe a ZiPo model")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"the model at {str(path)!r} has format version {version}, newer than this ZiPo "
            f"({__version__}) reads (up to {FORMAT_VERSION}); upgrade zipo to load it"
        )
    try:
        state = torch.load(path / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"the model at {str(path)!r} has no {WEIGHTS_FILE}; save it again") from None
    except Exception as e:  # truncated zip, or a pickle that is not plain tensors
        raise ValueError(
            f"{str(path / WEIGHTS_FILE)!r} could not be read safely as model weights ({e}); "
            "it is corrupt, truncated, or not a ZiPo weights file"
        ) from None

    missing = [k for k in ("config", "var_names", "covariates") if k not in meta]
    if missing:
        raise ValueError(
            f"{str(path / META_FILE)!r} is corrupt (it lacks {', '.join(missing)}); save the model again"
        )
    saved = meta["config"]
    if isinstance(saved, dict):
        saved = {section: {**OLDER_SAVES.get(section, {}), **values}
                 if isinstance(values, dict) else values for section, values in saved.items()}
    config = ZiPoConfig.from_dict(saved, source=str(path / META_FILE))
    history_file = path / HISTORY_FILE
    try:
        history = pd.read_csv(history_file) if history_file.stat().st_size > 1 else pd.DataFrame()
    except FileNotFoundError:
        raise ValueError(f"the model at {str(path)!r} has no {HISTORY_FILE}; save it again") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ValueError(f"{str(history_file)!r} is corrupt ({e}); save the model again") from None
    n_fits = meta.get("fits", 1)
    if not isinstance(n_fits, int) or n_fits < 1:
        raise ValueError(f"{str(path / META_FILE)!r} is corrupt (fits = {n_fits!r}); save the model again")
    fits = []
    for k in range(2, n_fits + 1):
        if not (path / FITS_DIR / str(k)).is_dir():
            raise ValueError(f"the model at {str(path)!r} has {n_fits} fits but lacks "
                             f"{FITS_DIR}/{k}; save it again")
        fits.append(read_model(path / FITS_DIR / str(k)))
    return SavedModel(config=config, var_names=list(meta["var_names"]),
                      covariates=meta["covariates"], weights=state, history=history,
                      is_trained=bool(meta.get("is_trained", True)), pruning=meta.get("pruned"),
                      pooling=meta.get("neighbour_pooling"), fits=fits)
