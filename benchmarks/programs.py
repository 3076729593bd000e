"""Pruning and gene programs on PBMC 4k: how sparse the first layer gets, what pruning costs,
and which programs mark each cell type.

    python -m benchmarks.programs                       # ZIP, encoder 512-256-128, 40 epochs
    python -m benchmarks.programs --likelihood zinb     # the paper says ZINB does not sparsify; see CLAIMS.md

Trains on the 2,170 PBMC 4k cells restricted to the 2,000 most-detected genes
(``benchmarks.datasets.pbmc4k``), prunes at ``--delta``, prints the pruned fraction and the
validation NLL/MSE before and after, then for each SoupX cell type the programs whose mean
activity (first-layer pre-activation) best separates it from the other cells: largest
|standardised mean difference| (mean in - mean out) / pooled sd, with their top genes by
|weight| (sign shown: a "-" gene lowers the program's activity) and the genes that drive the
difference: the activity is linear in log1p counts, so the mean difference of program i between
the cell type and the rest is exactly sum_g W_ig * (mean log1p x_g in - mean out); the genes with
the largest terms (in the direction of the difference) are listed.

Also prints the fraction of first-layer weights that other deltas would prune, since how sparse
the layer gets depends on how long it trained (see the report in the README).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd
import torch


def _anndata(n_genes: int):
    import anndata as ad

    from .datasets import pbmc4k

    ds = pbmc4k(n_genes)
    adata = ad.AnnData(ds.counts)
    adata.var_names = [str(g) for g in ds.genes]
    adata.obs_names = [f"cell{i}" for i in range(adata.n_obs)]
    adata.obs["cell_type"] = pd.Categorical([lab if lab is not None else "?" for lab in ds.labels])
    return adata


def standardised_differences(activity: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """Cell types x programs: (mean in - mean out) / pooled sd."""
    rows = {}
    for t in sorted(set(labels) - {"?"}):
        inside = labels == t
        a, b = activity[inside], activity[~inside]
        pooled = np.sqrt(((len(a) - 1) * a.var(axis=0, ddof=1) + (len(b) - 1) * b.var(axis=0, ddof=1))
                         / (len(a) + len(b) - 2))
        with np.errstate(divide="ignore", invalid="ignore"):
            rows[t] = np.where(pooled > 0, (a.mean(axis=0) - b.mean(axis=0)) / pooled, 0.0)
    return pd.DataFrame(rows).T


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--likelihood", default="zip", choices=["zip", "zinb", "poisson", "nb"])
    p.add_argument("--encoder", default="512,256,128")
    p.add_argument("--alpha-w", type=float, default=0.1)
    p.add_argument("--max-epochs", type=int, default=40)
    p.add_argument("--delta", type=float, default=1e-4)
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--top-programs", type=int, default=3)
    p.add_argument("--top-genes", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    import zipo

    adata = _anndata(args.genes)
    encoder = [int(d) for d in args.encoder.split(",")]
    model = zipo.ZiPo(adata, likelihood=args.likelihood, encoder_dims=encoder,
                      alpha_w=args.alpha_w, max_epochs=args.max_epochs, seed=args.seed,
                      verbose=False)
    started = time.perf_counter()
    model.train()
    seconds = time.perf_counter() - started
    weights = model.network.first_layer.weight.detach().abs().cpu().numpy()
    relative = weights / np.maximum(weights.max(axis=1, keepdims=True), np.finfo(np.float32).tiny)
    sweep = {d: float((relative < d).mean()) for d in (1e-4, 1e-3, 1e-2, 0.1)}
    report = model.prune(delta=args.delta)
    table = model.gene_programs(adata)
    n_genes = table.groupby("program").size().reindex(adata.uns["zipo_programs"]["programs"],
                                                      fill_value=0)

    print(f"## ZiPo pruning and gene programs: PBMC 4k, {adata.n_obs} cells x {adata.n_vars} genes\n")
    print(f"likelihood {args.likelihood}, encoder {encoder}, alpha_w {args.alpha_w}, "
          f"{len(model.history)} epochs ({seconds:.0f} s, {args.threads} thread(s)), seed {args.seed}\n")
    print("| delta | first-layer weights pruned | genes per program (median, min-max) | "
          "val NLL before | val NLL after | val MSE before | val MSE after |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {args.delta:g} | {report['weights_pruned']:,} / {report['weights_total']:,} "
          f"({report['pruned_fraction']:.2%}) | {int(n_genes.median())} ({n_genes.min()}-{n_genes.max()}) | "
          f"{report['nll_before']:.5f} | {report['nll_after']:.5f} | "
          f"{report['mse_before']:.4f} | {report['mse_after']:.4f} |\n")
    print("Fraction of first-layer weights below delta x their neuron's largest |weight| "
          "(before pruning): " + ", ".join(f"{d:g}: {v:.1%}" for d, v in sweep.items()) + "\n")

    activity = model.program_activity(adata)
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    smd = standardised_differences(activity, labels)
    logx = adata.X.tocsr().log1p() if hasattr(adata.X, "tocsr") else np.log1p(adata.X)
    w_signed = model.network.first_layer.weight.detach().cpu().numpy()
    gene_names = np.asarray(adata.var_names)
    names = list(adata.uns["zipo_programs"]["programs"])
    top_genes = {
        prog: ", ".join(f"{g}{'+' if w > 0 else '-'}" for g, w in
                        zip(grp["gene"][: args.top_genes], grp["weight"][: args.top_genes]))
        for prog, grp in table.groupby("program", sort=False)
    }
    print(f"Programs that best separate each cell type (|standardised mean difference| of the "
          f"first-layer pre-activation, cell type vs the rest); top {args.top_genes} genes by "
          "|weight|, sign = direction of the weight.\n")
    print(f"| cell type (cells) | program | SMD | genes in program | top {args.top_genes} genes "
          "by \\|weight\\| | genes driving the difference |")
    print("| --- | --- | --- | --- | --- | --- |")
    for t, row in smd.iterrows():
        inside = labels == t
        diff = (np.asarray(logx[inside].mean(axis=0)).ravel()
                - np.asarray(logx[~inside].mean(axis=0)).ravel())
        best = np.argsort(-np.abs(row.to_numpy()), kind="stable")[: args.top_programs]
        for j in best:
            prog = names[j]
            terms = w_signed[j] * diff * np.sign(row.iloc[j])
            drivers = np.argsort(-terms, kind="stable")[: args.top_genes // 2 + 1]
            driving = ", ".join(f"{gene_names[g]}{'+' if w_signed[j, g] > 0 else '-'}"
                                for g in drivers if terms[g] > 0)
            print(f"| {t} ({int(inside.sum())}) | {prog} | {row.iloc[j]:+.2f} | "
                  f"{n_genes[prog]} | {top_genes.get(prog, '(empty)')} | {driving} |")


if __name__ == "__main__":
    main()
