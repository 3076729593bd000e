"""Checkpoints of a training run: the trainer's whole state in ``checkpoint.pt``, written
atomically and read back only into a model with the same genes and options."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..config import ZiPoConfig
from ..files import atomic_path, write_synced

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = "zipo-checkpoint"
CHECKPOINT_VERSION = 1


def write_checkpoint(directory: str | Path, trainer, var_names: Sequence[str],
                     config: ZiPoConfig) -> Path:
    """Write ``trainer.state_dict()`` to ``directory/checkpoint.pt`` atomically: a kill at any
    moment leaves the previous checkpoint or the new one."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    options = config.to_dict()
    state = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "var_names": [str(g) for g in var_names],
        "model_config": options["model"],
        "data_config": options["data"],
        "trainer": trainer.state_dict(),
    }
    target = directory / CHECKPOINT_FILE
    with atomic_path(target) as tmp:
        write_synced(tmp, lambda fh: torch.save(state, fh))
    return target


def has_checkpoint(directory: str | Path) -> bool:
    return (Path(directory) / CHECKPOINT_FILE).is_file()


def read_checkpoint(directory: str | Path, var_names: Sequence[str], config: ZiPoConfig) -> dict:
    """The trainer state saved in ``directory``, after checking it was made on these genes
    with these [model] and [data] options."""
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
    if state["var_names"] != [str(g) for g in var_names]:
        raise ValueError(f"the checkpoint {str(path)!r} was made on other genes than this data; "
                         "resume with the same AnnData, or train without resume")
    current = config.to_dict()
    for section in ("model", "data"):
        if state[f"{section}_config"] != current[section]:
            raise ValueError(f"the checkpoint {str(path)!r} was made with other [{section}] "
                             "options than this model's; use the same config to resume")
    return state["trainer"]
