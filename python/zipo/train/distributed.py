"""Data-parallel training on ``torch.distributed`` (gloo on CPU, NCCL on CUDA).

Each process reads its own share of every global mini-batch (see ``CellBatches.shard``), the
gradients are averaged by ``DistributedDataParallel``, and batch-norm statistics are pooled
over all processes (:class:`SyncBatchNorm1d`), so N processes take the same steps as one
process with the same global batch, up to floating-point summation order.

Launch with ``zipo train --nproc N`` or ``torchrun --nproc-per-node N script.py`` (a script
calling ``ZiPo(...).train()``: the process group is set up from torchrun's environment).
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn


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


def local_device(device: torch.device) -> torch.device:
    """One GPU per process on a multi-GPU machine (LOCAL_RANK), else ``device``."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def all_reduce_sum(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    """Sum numbers over all processes (identity when not distributed)."""
    if world()[1] == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


class SyncBatchNorm1d(nn.BatchNorm1d):
    """Batch norm whose training statistics are pooled over every process's share of the
    batch. torch's own SyncBatchNorm runs on GPUs only; this one also runs on CPU (gloo).
    Outside distributed training it is exactly ``BatchNorm1d`` (same state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world()[1] == 1:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce  # autograd-aware

        c = x.shape[1]
        count = torch.full((1,), float(x.shape[0]), dtype=x.dtype, device=x.device)
        stats = all_reduce(torch.cat([x.sum(0), (x * x).sum(0), count]))
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0.0)
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
                self.num_batches_tracked.add_(1)
        out = (x - mean) / torch.sqrt(var + self.eps)
        return out * self.weight + self.bias if self.affine else out


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Swap every BatchNorm1d of ``module`` for :class:`SyncBatchNorm1d`, in place."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm1d:
            sync = SyncBatchNorm1d(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats)
            sync.load_state_dict(child.state_dict())
            sync.to(next(child.buffers()).device)
            setattr(module, name, sync)
        else:
            convert_batchnorm(child)
    return module


def wrap(net: nn.Module, device: torch.device) -> nn.Module:
    """The network as DDP sees it: gradients averaged over processes at each step."""
    convert_batchnorm(net)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(net, device_ids=ids)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, nproc: int, port: int, fn: Callable[..., Any], args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc))
    try:
        fn(*args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn(nproc: int, fn: Callable[..., Any], args: tuple = ()) -> None:
    """Run ``fn(*args)`` in ``nproc`` fresh processes that form one process group on this
    machine (what ``zipo train --nproc N`` does). ``fn`` must be importable (module level)."""
    import torch.multiprocessing as mp

    if nproc < 1:
        raise ValueError(f"nproc must be at least 1, got {nproc}")
    mp.spawn(_worker, args=(nproc, _free_port(), fn, args), nprocs=nproc, join=True)
