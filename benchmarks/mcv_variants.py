"""ZiPo training variants on the harness's molecular cross-validation split (issue 15).

    python -m benchmarks.mcv_variants --variant heldout heldout_molecules=0.1 --seeds 0 1 2
    python -m benchmarks.mcv_variants --variant default --variant heldout heldout_molecules=0.1

Each variant is ``zipo.ZiPo(adata, **options)`` trained to its own stopping rule (at most
``--max-epochs``) on ``X'`` of the same split ``benchmarks.run`` makes for ``mcv{p}`` and seed
(``--dataset``: PBMC 4k with its ``--genes`` most-detected genes, pbmc_small, the
simulation, whose error against the true rates is reported too, or one of the harness's extra
datasets such as ``celltypist_sample``), then scored against ``X''`` exactly as the harness
scores (Poisson NLL and deviance of the rescaled rate, sqrt MSE; genes without counts in ``X'``
get the no-denoising baseline). Prints one line per fit and a mean ± sd table, so
variants can be compared with the scVI rows of RESULTS.md without re-running scVI.

``--split-seed S`` keeps the split of seed S for every fit (``--seeds`` then seed the models
alone), and ``--ensemble`` also scores each variant's posterior output averaged over its fits:
how much of the error is the spread between trained models.

    python -m benchmarks.mcv_variants --variant default --seeds 0 1 2 3 --split-seed 0 --ensemble

``--pooling-grid`` also scores the posterior with every fit of the model given the same
borrowing from neighbours, each (k, w) of a grid (what validation chose is in the record): how
far the choice made on the validation cells is from the best in hindsight.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from .datasets import DATASETS, EXTRA_DATASETS


def parse_variant(words: list[str]) -> tuple[str, dict]:
    name, options = words[0], {}
    for kv in words[1:]:
        key, value = kv.split("=", 1)
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return name, options


def mcv_split(dataset: str, n_genes: int, p: float, seed: int, cells: int | None = None):
    """(dataset, X', X'') of the split ``benchmarks.run`` makes for ``mcv{p}`` and ``seed``;
    with ``cells``, of that many random cells of the dataset (the same cells for every seed)."""
    from . import datasets as D
    from . import protocols as P
    from .splits import PROTOCOLS

    ds = D.pbmc4k(n_genes or None) if dataset == "pbmc4k" else D.load(dataset)
    if cells:
        ds = D.subsample(ds, cells, None, seed=0)
    rng = np.random.default_rng([seed, PROTOCOLS.index(f"mcv{p}"), 7])  # as splits.make_split
    return ds, *P.mcv_split(ds.counts, p, rng)


def mcv_anndata(dataset: str, n_genes: int, p: float, seed: int, cells: int | None = None):
    """(dataset, X' as AnnData at the genes it expresses, X', X'', those genes) of the split
    :func:`mcv_split` makes: what each fit of ZiPo trains on."""
    from . import protocols as P

    ds, x1, x2 = mcv_split(dataset, n_genes, p, seed, cells)
    expressed = P.expressed_genes(x1)
    return ds, counts_anndata(x1[:, expressed]), x1, x2, expressed


def counts_anndata(x):
    """Counts as the AnnData a ZiPo fit reads: float32, cells ``c0...``, genes ``g0...``."""
    import anndata as ad

    adata = ad.AnnData(x.astype(np.float32))
    adata.obs_names = [f"c{i}" for i in range(adata.n_obs)]
    adata.var_names = [f"g{j}" for j in range(adata.n_vars)]
    return adata


def fit_and_score(options: dict, seed: int, p: float, dataset: str, n_genes: int,
                  max_epochs: int, split_seed: int | None = None,
                  predictions: list | None = None, pooling_grid: bool = False,
                  cells: int | None = None) -> dict:
    """The record of one fit on the split of ``split_seed`` (default ``seed``); under NB/ZINB
    its posterior output (all genes, at the depth of X') is appended to ``predictions``."""
    import zipo
    from zipo.train.schedule import kept_row

    from .clustering import depth_r2_within_labels, latent_scores
    from . import protocols as P

    ds, adata, x1, x2, expressed = mcv_anndata(dataset, n_genes, p,
                                               seed if split_seed is None else split_seed, cells)
    started = time.perf_counter()
    options = {"device": "cpu", **options}  # a variant may name device=cuda
    model = zipo.ZiPo(adata, seed=seed, verbose=False, max_epochs=max_epochs, **options).train()
    fit_seconds = time.perf_counter() - started
    pred = model.denoise(adata, expectation="rate", copy=True).layers["zipo_denoised"]
    full = P.mean_baseline(np.asarray(x1.sum(axis=1)).ravel(), P.gene_proportions(x1))
    full[:, expressed] = pred
    h = model.history
    rec = {"epochs": len(h), "fit_s": fit_seconds, "s_per_epoch": float(h["seconds"].median()),
           **P.score_mcv(full, x2, p), **P.score_openproblems(full, x2)}
    # OpenProblems' log MSE with ZiPo's log-normalised expectation at the held-out depth
    lognorm = model.denoise(adata, expectation="lognorm", depth=(1 - p) / p,
                            copy=True).layers["zipo_denoised"]
    rec.update(P.score_openproblems_lognorm(lognorm, x2, P.gene_proportions(x1), expressed))
    # what a choice between variants may look at: the kept epoch's validation scores
    kept = h.iloc[kept_row(h)]
    for column in ("validation_heldout_nll", "validation_heldout_nll_posterior"):
        if column in h:
            rec[column] = float(kept[column])
    if ds.labels is not None:  # as benchmarks.run scores latents (k-means, k = label count)
        latent = model.get_latent(adata)
        rec.update(latent_scores(latent, ds.labels, seed=seed))
        log_library = np.log(np.maximum(np.asarray(x1.sum(axis=1)).ravel(), 1))
        rec["latent_depth_r2"] = depth_r2_within_labels(latent, log_library, ds.labels)
    if ds.truth:  # as benchmarks.run scores the simulation
        rec["truth_sqrt_mse"] = truth_sqrt_mse(full, ds, p)
    if model.network.negative_binomial:  # the rate given each count, scored the same way
        post = full.copy()
        post[:, expressed] = model.denoise(adata, expectation="posterior",
                                           copy=True).layers["zipo_denoised"]
        scores = {**P.score_mcv(post, x2, p), **P.score_openproblems(post, x2)}
        if ds.truth:
            scores["truth_sqrt_mse"] = truth_sqrt_mse(post, ds, p)
        rec.update({f"posterior_{k}": v for k, v in scores.items()})
        if predictions is not None:
            predictions.append(post)
        if pooling_grid:
            rec.update(score_pooling_grid(model, adata, post, expressed, x2, p))
    return rec


POOLING_GRID_NEIGHBOURS = (5, 15, 30, 50, 99)  # 99: every other cell of 100
POOLING_GRID_WEIGHTS = (0.1, 0.3, 1.0, 3.0)


def score_pooling_grid(model, adata, post: np.ndarray, expressed, x2, p: float) -> dict:
    """Each fit's chosen (k, w), and the MCV deviance of the posterior with every fit given
    the same (k, w) of the grid instead (k capped at the cells - 1; "none": no borrowing)."""
    from zipo.neighbours import NeighbourPooling

    from . import protocols as P

    post = post.copy()  # the record's own prediction stays as it was
    fits = [model, *model.further_fits]
    chosen = [f.pooling for f in fits]
    grid = [(0, 0.0)] + [(k, w) for k in POOLING_GRID_NEIGHBOURS for w in POOLING_GRID_WEIGHTS]
    scores = {}
    try:
        for k, w in grid:
            for fit in fits:
                fit.pooling = NeighbourPooling(neighbours=min(k, adata.n_obs - 1), weight=w)
            post[:, expressed] = model.denoise(adata, expectation="posterior",
                                               copy=True).layers["zipo_denoised"]
            scores["none" if w == 0 else f"k={k},w={w:g}"] = P.score_mcv(post, x2, p)[
                "poisson_deviance"]
    finally:
        for fit, pooling in zip(fits, chosen):
            fit.pooling = pooling
    best = min(scores, key=scores.get)
    return {"pooling_chosen": [f"k={c.neighbours},w={c.weight:g}" for c in chosen],
            "pooling_grid_deviance": scores, "pooling_best_in_hindsight": best,
            "pooling_best_deviance": scores[best]}


def truth_sqrt_mse(full: np.ndarray, ds, p: float) -> float:
    """Error against the simulation's true rates on the square-root scale, of ``full`` (the
    prediction at the depth of X') scaled to the whole cell's depth."""
    at_depth = np.maximum(full / p, 0)
    return float(np.mean((np.sqrt(at_depth) - np.sqrt(ds.truth["rate"])) ** 2))


def main(argv=None) -> tuple[dict, dict]:
    """Fit, print, and return the records by variant and the ensembles' scores by variant."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", nargs="+", action="append", required=True,
                    metavar="NAME [KEY=VALUE ...]", help="a name and zipo options")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--p", type=float, default=0.9, choices=[0.9, 0.5])
    ap.add_argument("--dataset", default="pbmc4k", choices=[*DATASETS, *EXTRA_DATASETS])
    ap.add_argument("--genes", type=int, default=2000, help="pbmc4k: most-detected genes kept (0: every detected gene)")
    ap.add_argument("--cells", type=int, default=None,
                    help="that many random cells of the dataset (the same for every seed)")
    ap.add_argument("--max-epochs", type=int, default=400)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--split-seed", type=int, default=None,
                    help="the split of this seed for every fit (default: each fit's seed)")
    ap.add_argument("--ensemble", action="store_true",
                    help="with --split-seed: also score each variant's mean posterior output")
    ap.add_argument("--pooling-grid", action="store_true",
                    help="also score the posterior at every (k, w) of a grid of borrowing")
    args = ap.parse_args(argv)
    if args.ensemble and args.split_seed is None:
        ap.error("--ensemble needs --split-seed (an average is of fits on one split)")

    import torch

    torch.set_num_threads(args.threads)
    metrics = ["poisson_nll", "poisson_deviance", "sqrt_mse", "op_mse_log1p",
               "op_mse_log1p_lognorm", "truth_sqrt_mse", "kmeans_ari", "kmeans_nmi",
               "latent_depth_r2",
               "validation_heldout_nll", "validation_heldout_nll_posterior", "epochs", "fit_s", "posterior_poisson_nll",
               "posterior_sqrt_mse", "posterior_truth_sqrt_mse", "posterior_poisson_deviance",
               "pooling_best_deviance"]
    from . import protocols as P

    rows, ensembles = {}, {}
    # the held-out molecules the averages are scored on (one split for every fit)
    held = (mcv_split(args.dataset, args.genes, args.p, args.split_seed, args.cells)[2]
            if args.ensemble else None)
    for words in args.variant:
        name, options = parse_variant(words)
        predictions = [] if args.ensemble else None
        for seed in args.seeds:
            rec = fit_and_score(options, seed, args.p, args.dataset, args.genes, args.max_epochs,
                                args.split_seed, predictions, args.pooling_grid, args.cells)
            print(json.dumps({"variant": name, "seed": seed, **rec}), flush=True)
            rows.setdefault(name, []).append(rec)
            if predictions:  # the average of the fits so far
                ensembles.setdefault(name, []).append(
                    P.score_mcv(np.mean(predictions, axis=0), held, args.p))
    where = f"pbmc4k, {args.genes} genes" if args.dataset == "pbmc4k" else args.dataset
    where += f", {args.cells} random cells" if args.cells else ""
    print(f"\n{where}, MCV p = {args.p}, seeds {args.seeds} (mean ± sd)")
    print("| variant | " + " | ".join(metrics) + " |")
    print("| --- " * (len(metrics) + 1) + "|")
    for name, recs in rows.items():
        cells = [f"{np.mean([r[m] for r in recs]):.5g} ± {np.std([r[m] for r in recs]):.2g}"
                 if all(m in r for r in recs) else "—" for m in metrics]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if ensembles:
        print(f"\nposterior output averaged over the first n fits (split of seed {args.split_seed})")
        print("| variant | n | poisson_nll | poisson_deviance | sqrt_mse |\n| --- | ---: | ---: | ---: | ---: |")
        for name, scores in ensembles.items():
            for n, sc in enumerate(scores, 1):
                print(f"| {name} | {n} | {sc['poisson_nll']:.5f} | {sc['poisson_deviance']:.5f} | "
                      f"{sc['sqrt_mse']:.5f} |")
    return rows, ensembles


if __name__ == "__main__":
    main()
