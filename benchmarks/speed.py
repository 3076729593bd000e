"""Training and inference speed of zipo's default network on the shared PBMC data.

    python -m benchmarks.speed                      # PBMC 4k, batch sizes 128 256 512, 3 epochs
    python -m benchmarks.speed --epochs 2 --batch-sizes 256 --genes 2000   # quicker
    python -m benchmarks.speed --likelihood         # the loss alone: written-out gradients

Prints a table: seconds per training epoch (median over epochs after the first, which pays
for allocator warm-up), training cells per second, inference (denoise) cells per second, with
the batch size, torch threads and device. Genes with no counts are dropped first (ZiPo refuses
them); ``--genes N`` keeps the N most-detected genes instead.

``--likelihood`` times the loss alone instead: forward and backward of each likelihood's log P
on one batch of real counts (the first ``--batch-sizes`` cells), with zipo's written-out
derivatives (``zipo.distributions.log_prob``) against autograd's graph of the same values.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pbmc4k_2170.h5ad"


def load_pbmc(path: Path = DATA, n_genes: int | None = None):
    import anndata as ad

    if not path.is_file():
        raise SystemExit(f"{path} not found: the shared data folder must sit beside the repo")
    adata = ad.read_h5ad(path)
    detected = np.asarray((adata.X > 0).sum(axis=0)).ravel()
    keep = np.flatnonzero(detected > 0)
    if n_genes is not None:
        keep = np.sort(np.argsort(-detected, kind="stable")[:n_genes])
    return adata[:, keep].copy()


def measure(adata, batch_size: int, epochs: int, device: str, seed: int = 0) -> dict:
    import zipo

    model = zipo.ZiPo(adata, max_epochs=epochs, batch_size=batch_size, device=device,
                      seed=seed, verbose=False, early_stopping_patience=10**6)
    model.train()
    seconds = model.history["seconds"].to_numpy()
    per_epoch = float(np.median(seconds[1:] if len(seconds) > 1 else seconds))
    n_train = len(model.train_indices)
    started = time.perf_counter()
    model.denoise(adata.copy(), batch_size=batch_size)
    inference = time.perf_counter() - started
    return {
        "batch_size": batch_size, "seconds_per_epoch": per_epoch,
        "train_cells_per_s": n_train / per_epoch, "denoise_cells_per_s": adata.n_obs / inference,
    }


LIKELIHOOD_REPEATS = 12


def likelihood_ms(counts: torch.Tensor, likelihood: str, written_out: bool,
                  repeats: int = LIKELIHOOD_REPEATS) -> float:
    """Milliseconds (best of ``repeats``) of forward + backward of the summed log P over
    ``counts``, with per-entry parameters as the network gives them."""
    from zipo.distributions import _log_prob_and_grads, likelihood_flags, log_prob

    zero_inflated, nb = likelihood_flags(likelihood)
    gen = torch.Generator().manual_seed(0)
    library = counts.sum(1, keepdim=True).clamp_min(1)
    rate = (counts.sum(0, keepdim=True) + 1) / library.sum()

    def noise():
        return 0.3 * torch.randn(counts.shape, generator=gen)

    params = [(library * rate).log() + noise(),
              noise() - 2 if zero_inflated else None,
              noise() + 1 if nb else None]
    params = [None if t is None else t.requires_grad_() for t in params]
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        if written_out:
            value = log_prob(counts, *params)
        else:  # autograd through the same formula's values
            value = _log_prob_and_grads(counts, *params, with_grads=False)[0]
        value.sum().backward()
        best = min(best, time.perf_counter() - started)
    return 1000 * best


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                   help="default 128 256 512 (--likelihood: 256, the training batch)")
    p.add_argument("--genes", type=int, default=None, help="keep the N most-detected genes")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--likelihood", action="store_true", help="time the loss alone (CPU)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.likelihood:
        adata = load_pbmc(n_genes=args.genes)
        cells = (args.batch_sizes or [256])[0]
        counts = torch.as_tensor(adata.X[:cells].toarray(), dtype=torch.float32)
        print(f"log P forward + backward, PBMC 4k, {cells} cells x {adata.n_vars} genes "
              f"({(counts > 0).float().mean():.1%} non-zero), threads={torch.get_num_threads()}, "
              f"best of {LIKELIHOOD_REPEATS} (ms)\n")
        print("| likelihood | written out | autograd | ratio |\n| --- | ---: | ---: | ---: |")
        for name in ("zinb", "zip", "nb", "poisson"):
            fast, slow = (likelihood_ms(counts, name, w) for w in (True, False))
            print(f"| {name} | {fast:.1f} | {slow:.1f} | {fast / slow:.2f} |", flush=True)
        return
    from zipo.config import ModelConfig
    from zipo.device import resolve_device

    device = str(resolve_device(args.device))
    adata = load_pbmc(n_genes=args.genes)
    m = ModelConfig()
    print(f"ZiPo speed: PBMC 4k, {adata.n_obs} cells x {adata.n_vars} genes, "
          f"zipo's defaults (encoder {'-'.join(map(str, m.encoder_dims))}, {m.likelihood})")
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"cpu={platform.processor() or platform.machine()} epochs={args.epochs}\n")
    header = f"{'batch':>6} {'s/epoch':>9} {'train cells/s':>14} {'denoise cells/s':>16}"
    print(header)
    print("-" * len(header))
    for bs in args.batch_sizes or [128, 256, 512]:
        r = measure(adata, bs, args.epochs, device)
        print(f"{r['batch_size']:>6} {r['seconds_per_epoch']:>9.2f} "
              f"{r['train_cells_per_s']:>14.0f} {r['denoise_cells_per_s']:>16.0f}", flush=True)


if __name__ == "__main__":
    main()
