"""Devices, and data-parallel training on ``torch.distributed`` (gloo on CPU, NCCL on CUDA).

Each process reads its own share of every global mini-batch (see ``CellBatches.shard``), the
gradients are averaged by ``DistributedDataParallel``, and batch-norm statistics are pooled
over all processes (:class:`SyncBatchNorm1d`), so N processes take the same steps as one
process with the same global batch, up to floating-point summation order.

Launch with ``zipo train --nproc N`` or ``torchrun --nproc-per-node N script.py`` (a script
calling ``ZiPo(...).train()``: the process group is set up from torchrun's environment); on
several machines, ``torchrun --nnodes M --rdzv-backend c10d --rdzv-endpoint HOST:PORT`` on
each (docs/atlas.md).
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from ..nn.batchnorm import convert_batchnorm


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_environment(device: torch.device) -> bool:
    """Join the process group torchrun (or :func:`spawn`) describes in the environment, if any.
    Returns True when training is distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    # NCCL for the CUDA tensors (gradients), gloo for the few CPU-side sums (losses, counts).
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend)
    return True


def all_reduce_sum(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    """Sum numbers over all processes (identity when not distributed)."""
    if world()[1] == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def wrap(net: nn.Module, device: torch.device) -> nn.Module:
    """The network as DDP sees it: gradients averaged over processes at each step."""
    convert_batchnorm(net)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(net, device_ids=ids)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def closing_process_group() -> Iterator[None]:
    """Close the process group (if one was formed) when the block ends: first a barrier, so
    every process is done before any closes its connections (a gloo peer whose connection
    closes mid-teardown can abort or stall the whole job, and torchrun waits for every node's
    workers to exit), then the group destroyed instead of left to interpreter shutdown."""
    try:
        yield
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _worker(rank: int, nproc: int, port: int, fn: Callable[..., Any], args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc))
    with closing_process_group():
        fn(*args)


def spawn(nproc: int, fn: Callable[..., Any], args: tuple = ()) -> None:
    """Run ``fn(*args)`` in ``nproc`` fresh processes that form one process group on this
    machine (what ``zipo train --nproc N`` does). ``fn`` must be importable (module level)."""
    import torch.multiprocessing as mp

    if nproc < 1:
        raise ValueError(f"nproc must be at least 1, got {nproc}")
    mp.spawn(_worker, args=(nproc, _free_port(), fn, args), nprocs=nproc, join=True)
