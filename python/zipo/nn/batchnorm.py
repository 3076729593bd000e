"""Batch norm pooled over the processes of data-parallel training."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose gradient is the sum of every process's gradient (each process's
    loss depends on every share through the pooled statistics). Ours, because
    ``torch.distributed.nn.functional.all_reduce`` is deprecated."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _AllReduceSum.apply(grad)


class SyncBatchNorm1d(nn.BatchNorm1d):
    """Batch norm whose training statistics are pooled over every process's share of the
    batch. torch's own SyncBatchNorm runs on GPUs only; this one also runs on CPU (gloo).
    Outside distributed training it is exactly ``BatchNorm1d`` (same state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not _distributed():
            return super().forward(x)
        all_reduce = _AllReduceSum.apply
        # Two passes (the mean, then squared deviations from it), as BatchNorm1d computes the
        # variance: E[x^2] - mean^2 cancels badly where a sigmoid unit varies little around a
        # large mean, and two processes then trained measurably apart from one.
        count = torch.full((1,), float(x.shape[0]), dtype=x.dtype, device=x.device)
        stats = all_reduce(torch.cat([x.sum(0), count]))
        n = stats[-1]
        mean = stats[:-1] / n
        var = all_reduce((x - mean).pow(2).sum(0)) / n
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
