"""The sparse first layer: a linear map of a sparse CSR batch whose cost grows with its
non-zeros, not with cells x genes."""

from __future__ import annotations

import warnings

import torch

# Torch warns once per process that CSR tensors are "beta"; ZiPo's use of them (build, slice
# values, embedding_bag, sparse.mm) is tested here, so the warning only alarms users.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


def csr_tensor(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor,
               shape) -> torch.Tensor:
    """A torch sparse CSR tensor of arrays that are already valid CSR (from scipy, or another
    CSR tensor's), built without torch's invariant checks."""
    return torch.sparse_csr_tensor(crow, col, values, size=tuple(shape), check_invariants=False)


def csr_rows(crow: torch.Tensor) -> torch.Tensor:
    """Row index of every stored value of a sparse CSR tensor, from its row pointers."""
    return torch.repeat_interleave(torch.arange(len(crow) - 1, device=crow.device), crow.diff())


class _SparseLinear(torch.autograd.Function):
    """y = X W^T + b for a sparse CSR X (cells x genes) and a dense W (out x genes).

    Forward gathers the rows of W^T that each cell's non-zeros touch (``embedding_bag``, the
    kernel recommender models use for sparse inputs); backward forms dL/dW^T = X^T dL/dy as a
    sparse (genes x cells) times dense product. X itself gets no gradient (it is data)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        crow, col, values = x.crow_indices(), x.col_indices(), x.values()
        y = torch.nn.functional.embedding_bag(
            col, weight.t().contiguous(), crow[:-1], mode="sum", per_sample_weights=values,
        )
        if bias is not None:
            y = y + bias
        ctx.save_for_backward(crow, col, values)
        ctx.shape, ctx.has_bias = x.shape, bias is not None
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        crow, col, values = ctx.saved_tensors
        n_cells, n_genes = ctx.shape
        xt = torch.sparse_coo_tensor(torch.stack([col, csr_rows(crow)]), values, (n_genes, n_cells),
                                     check_invariants=False)
        grad_w = torch.sparse.mm(xt.to_sparse_csr(), grad).t()
        return None, grad_w, grad.sum(0) if ctx.has_bias else None


def sparse_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return _SparseLinear.apply(x, weight, bias)


def as_dense(x: torch.Tensor) -> torch.Tensor:
    """Counts as a dense tensor (the likelihood needs every entry, zeros included)."""
    return x.to_dense() if x.layout == torch.sparse_csr else x
