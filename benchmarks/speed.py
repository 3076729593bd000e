"""Training and inference speed of zipo's default network on the shared PBMC data.

    python -m benchmarks.speed                      # PBMC 4k, batch sizes 128 256 512, 3 epochs
    python -m benchmarks.speed --epochs 2 --batch-sizes 256 --genes 2000   # quicker

Prints a table: seconds per training epoch (median over epochs after the first, which pays
for allocator warm-up), training cells per second, inference (denoise) cells per second, with
the batch size, torch threads and device. Genes with no counts are dropped first (ZiPo refuses
them); ``--genes N`` keeps the N most-detected genes instead.
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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 256, 512])
    p.add_argument("--genes", type=int, default=None, help="keep the N most-detected genes")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from zipo.train.distributed import resolve_device

    device = str(resolve_device(args.device))
    adata = load_pbmc(n_genes=args.genes)
    print(f"ZiPo speed: PBMC 4k, {adata.n_obs} cells x {adata.n_vars} genes, "
          f"encoder 2048-1024-512-256-128 (paper default), ZIP")
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"cpu={platform.processor() or platform.machine()} epochs={args.epochs}\n")
    header = f"{'batch':>6} {'s/epoch':>9} {'train cells/s':>14} {'denoise cells/s':>16}"
    print(header)
    print("-" * len(header))
    for bs in args.batch_sizes:
        r = measure(adata, bs, args.epochs, device)
        print(f"{r['batch_size']:>6} {r['seconds_per_epoch']:>9.2f} "
              f"{r['train_cells_per_s']:>14.0f} {r['denoise_cells_per_s']:>16.0f}", flush=True)


if __name__ == "__main__":
    main()
