"""Validation NLL of ZiPo on PBMC 4k against the no-model baseline.

    python -m benchmarks.pbmc_nll                       # 2,000 most-detected genes
    python -m benchmarks.pbmc_nll --genes 0             # every expressed gene (18,368; slow)

Trains the default model (paper architecture 2048-1024-512-256-128, ZIP) to its own early
stopping (or --max-epochs) and prints a table: the validation NLL per matrix entry, the
baseline's (each gene's mean proportion in the training cells x the cell's library size,
Poisson), epochs and time.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.speed import load_pbmc


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--genes", type=int, default=2000, help="most-detected genes to keep; 0 = all expressed")
    p.add_argument("--max-epochs", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--likelihood", default="zip")
    p.add_argument("--learning-rate", type=float, default=None, help="default: zipo's (0.001)")
    args = p.parse_args(argv)
    import zipo

    adata = load_pbmc(n_genes=args.genes or None)
    options = {} if args.learning_rate is None else {"learning_rate": args.learning_rate}
    model = zipo.ZiPo(adata, likelihood=args.likelihood, max_epochs=args.max_epochs,
                      seed=args.seed, verbose=False, **options)
    started = time.perf_counter()
    model.train()
    seconds = time.perf_counter() - started
    h = model.history
    best = h["validation_nll"].idxmin()
    baseline = model.baseline_nll()
    print(f"PBMC 4k, {adata.n_obs} cells x {adata.n_vars} genes, {args.likelihood}, "
          f"lr start {model.config.train.learning_rate}, seed {args.seed}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'model':<28} {'val NLL/entry':>14} {'epochs':>7} {'seconds':>8}")
    print(f"{'baseline (mean proportion)':<28} {baseline:>14.4f} {'-':>7} {'-':>8}")
    print(f"{'ZiPo (best epoch ' + str(int(h['epoch'][best])) + ')':<28} "
          f"{h['validation_nll'][best]:>14.4f} {len(h):>7} {seconds:>8.0f}")
    print(f"relative to baseline: {h['validation_nll'][best] / baseline - 1:+.1%}")


if __name__ == "__main__":
    main()
