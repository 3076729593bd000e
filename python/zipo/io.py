"""Saving and loading models: a directory of tensors + JSON, written atomically, loaded safely.

Layout of a model directory::

    zipo.json     format version, config, gene names, covariate encoding
    config.toml   the same config as TOML, reusable with ``zipo train --config``
    weights.pt    the network's state dict: tensors only, loaded with ``weights_only=True``
                  so a model file can never run code
    history.csv   per-epoch losses and learning rate

The directory is written under a temporary name beside ``path`` and renamed into place, so a
crash leaves either the old model or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import tomli_w
import torch

from . import __version__
from .config import ZiPoConfig
from .data import CovariateEncoder

FORMAT = "zipo-model"
FORMAT_VERSION = 1
META_FILE, WEIGHTS_FILE, HISTORY_FILE = "zipo.json", "weights.pt", "history.csv"
CONFIG_FILE = "config.toml"  # the effective config, reusable with `zipo train --config`


def _fsync_write(path: Path, write) -> None:
    with open(path, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_directory(path: str | Path, fill, overwrite: bool = False) -> Path:
    """Create directory ``path`` by calling ``fill(tmpdir)`` on a temporary sibling and renaming
    it into place. Refuses an existing ``path`` unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ValueError(f"{str(path)!r} already exists; choose another path or pass overwrite=True")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"cannot write {str(path)!r}: the folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"cannot write {str(path)!r}: the folder {str(parent)!r} is not writable")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=parent))
    except OSError as e:
        raise ValueError(f"cannot write {str(path)!r}: {e.strerror or e}") from None
    try:
        fill(tmp)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def save_model(model, path: str | Path, overwrite: bool = False) -> Path:
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "zipo_version": __version__,
        "is_trained": model.is_trained,
        "config": model.config.to_dict(),
        "var_names": [str(g) for g in model.var_names],
        "covariates": model.covariate_encoder.specs,
    }
    if getattr(model, "pruning", None):  # pruned first layer (zipo.programs); absent otherwise
        from .programs import enforce_pruning

        enforce_pruning(model)
        meta["pruned"] = model.pruning
    state = {k: v.detach().cpu().contiguous() for k, v in model.network.state_dict().items()}

    def fill(tmp: Path) -> None:
        _fsync_write(tmp / META_FILE, lambda fh: fh.write(json.dumps(meta, indent=1).encode()))
        _fsync_write(tmp / WEIGHTS_FILE, lambda fh: torch.save(state, fh))
        _fsync_write(tmp / CONFIG_FILE, lambda fh: fh.write(tomli_w.dumps(meta["config"]).encode()))
        _fsync_write(tmp / HISTORY_FILE, lambda fh: fh.write(model.history.to_csv(index=False).encode()))

    return atomic_directory(path, fill, overwrite=overwrite)


def load_model(path: str | Path, adata=None, device: str = "cpu"):
    from .model import ZiPo, resolve_device  # the model module imports this one
    from .network import ZiPoNetwork

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
    model = ZiPo.__new__(ZiPo)
    model.config = ZiPoConfig.from_dict(meta["config"], source=str(path / META_FILE))
    model.var_names = pd.Index(meta["var_names"])
    model.covariate_encoder = CovariateEncoder(meta["covariates"])
    model.network = ZiPoNetwork(len(model.var_names), model.covariate_encoder.width, model.config.model)
    try:
        model.network.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ValueError(f"the weights in {str(path)!r} do not fit the saved config: {e}") from None
    history_file = path / HISTORY_FILE
    try:
        model.history = pd.read_csv(history_file) if history_file.stat().st_size > 1 else pd.DataFrame()
    except FileNotFoundError:
        raise ValueError(f"the model at {str(path)!r} has no {HISTORY_FILE}; save it again") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ValueError(f"{str(history_file)!r} is corrupt ({e}); save the model again") from None
    model.is_trained = bool(meta.get("is_trained", True))
    model.device = resolve_device(device)
    # train() reads the device from the config: keep it where the model was loaded to
    model.config.train.device = device
    model.network.to(model.device).eval()
    model.adata = None
    model._summary = None
    if meta.get("pruned"):  # the mask is re-derived from the weights that are exactly zero
        from .programs import restore_pruning

        restore_pruning(model, meta["pruned"])
    if adata is not None:
        model.attach(adata)
    return model


CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = "zipo-checkpoint"


def write_checkpoint(directory: str | Path, trainer, model) -> Path:
    """Write the trainer's full state to ``directory/checkpoint.pt`` atomically (temporary file,
    fsync, rename): a kill at any moment leaves the previous checkpoint or the new one."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        "format": CHECKPOINT_FORMAT,
        "format_version": FORMAT_VERSION,
        "var_names": [str(g) for g in model.var_names],
        "model_config": model.config.to_dict()["model"],
        "data_config": model.config.to_dict()["data"],
        "trainer": trainer.state_dict(),
    }
    target = directory / CHECKPOINT_FILE
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        _fsync_write(Path(tmp), lambda fh: torch.save(state, fh))
        os.replace(tmp, target)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def read_checkpoint(directory: str | Path, model) -> dict:
    """The trainer state saved in ``directory``, after checking it belongs to ``model``."""
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        raise ValueError(f"no checkpoint to resume from in {str(directory)!r} ({CHECKPOINT_FILE} "
                         "is missing); train without resume to start afresh")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"the checkpoint {str(path)!r} could not be read safely ({e}); it is "
                         "corrupt or not a ZiPo checkpoint") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{str(path)!r} is not a ZiPo checkpoint")
    if state["var_names"] != [str(g) for g in model.var_names]:
        raise ValueError(f"the checkpoint {str(path)!r} was made on other genes than this data; "
                         "resume with the same AnnData, or train without resume")
    current = model.config.to_dict()
    for section in ("model", "data"):
        if state[f"{section}_config"] != current[section]:
            raise ValueError(f"the checkpoint {str(path)!r} was made with other [{section}] "
                             "options than this model's; use the same config to resume")
    return state["trainer"]
