"""Which device a model trains and predicts on: ``"auto"``, ``"cpu"``, ``"cuda"`` or
``"cuda:N"`` resolved against the GPUs this machine has and the training processes it runs
(torchrun's ``LOCAL_WORLD_SIZE`` and ``LOCAL_RANK``). Training, saving and loading use it."""

from __future__ import annotations

import os

import torch


def local_processes() -> int:
    """Training processes on this machine (torchrun's LOCAL_WORLD_SIZE;
    :func:`zipo.train.distributed.spawn` sets it)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when every process on this machine can have a GPU of its own, else
    CPU; refuses CUDA where there is none, or too few GPUs for the processes."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    processes = local_processes()
    if device == "auto":
        # NCCL runs one process per GPU: more processes than GPUs train on the CPU (gloo)
        return torch.device("cuda" if gpus >= processes else "cpu")
    if device.startswith("cuda") and not gpus:
        raise ValueError(f"device={device!r} was asked for but CUDA is not available; use 'cpu' or 'auto'")
    if device == "cuda" and processes > gpus:
        raise ValueError(f"device='cuda' with {processes} processes on this machine needs a GPU "
                         f"for each, but it has {gpus}; use at most {gpus} processes (--nproc), "
                         "or device='cpu' (or 'auto', which then trains on the CPU)")
    return torch.device(device)


def local_device(device: torch.device) -> torch.device:
    """One GPU per process on a multi-GPU machine (LOCAL_RANK), else ``device``."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device
