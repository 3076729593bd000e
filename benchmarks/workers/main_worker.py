"""Worker for the methods that run in the project's own environment: ZiPo (its defaults, the
paper's model, the in-framework DCA preset) and the two baselines. Run by the harness as a subprocess, one fit per
process, so that wall time and peak RSS are the fit's own:

    python benchmarks/workers/main_worker.py TASKS.json     (see wio.tasks)
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402

from wio import load_input, n_components, pca_scores, save_output, tasks  # noqa: E402

ZIPO_METHODS = {
    "zipo": {},                           # zipo.ZiPo's defaults
    "zipo_paper": {"preset": "paper"},    # the paper's best model, trained as published
    "zipo_dca": {"preset": "dca"},        # DCA inside the ZiPo framework (method.md)
}
METHODS = [*ZIPO_METHODS, "mean", "pca"]


def _adata(x):
    import anndata as ad
    import pandas as pd

    return ad.AnnData(
        x.astype(np.float32), obs=pd.DataFrame(index=[f"c{i}" for i in range(x.shape[0])]),
        var=pd.DataFrame(index=[f"g{j}" for j in range(x.shape[1])]))


def run_zipo(method, task, x, t, seed, max_epochs, threads, depth=None):
    import torch
    import zipo
    from zipo.config import TrainConfig

    torch.set_num_threads(threads)
    kw = dict(ZIPO_METHODS[method])
    preset = kw.pop("preset", None)
    adata = _adata(x)
    # A full run's cap (400) leaves ZiPo its own limit (300 epochs; 1,000 under 500 cells,
    # train.small_data), as scVI keeps its rule; a lower cap (quick runs: 3) binds.
    max_epochs = max_epochs if max_epochs < TrainConfig().max_epochs else None
    model = zipo.ZiPo(adata, preset=preset, max_epochs=max_epochs, seed=seed, verbose=False,
                      device="cpu", num_threads=threads, **kw)
    started = time.perf_counter()
    diverged = None
    try:
        model.train()
    except FloatingPointError as e:
        # zipo stops when the loss becomes NaN/inf, restores the best weights so far (trained,
        # in eval mode, history kept) and raises: score them and record the divergence.
        diverged = str(e)
    fit_seconds = time.perf_counter() - started
    h = model.history
    if diverged is None:
        from zipo.train.schedule import monitored_column

        monitored = h[monitored_column(h)]
        epochs = int(len(h))
        timing = {"best_epoch": int(np.argmin(monitored.to_numpy()) + 1),
                  "seconds_per_epoch": float(np.median(h["seconds"].to_numpy())),
                  "validation_nll": float(h["validation_nll"].min()) if "validation_nll" in h else None}
    else:
        import re

        found = re.search(r"in epoch (\d+)", diverged)
        epochs = int(found.group(1)) if found else None
        timing = {"diverged": diverged[:200], "diverged_at_epoch": epochs,
                  "seconds_per_epoch": fit_seconds / epochs if epochs else None}
    info = {"fit_seconds": fit_seconds, "epochs": epochs, **timing,
            "stopped_early": bool(epochs is not None and epochs < model.config.train.max_epochs),
            "zipo_version": zipo.__version__, "zipo_path": os.path.dirname(zipo.__file__),
            "torch": torch.__version__}
    pooling = getattr(model, "pooling", None)
    if pooling is not None:  # what the posterior borrows from neighbours (zipo.neighbours)
        info.update(pooling_neighbours=pooling.neighbours, pooling_weight=pooling.weight)
    out = {}
    if task == "denoise":
        rate = model.denoise(adata, copy=True)  # the default output (the defaults' posterior)
        mix = model.denoise(adata, expectation="mixture", copy=True)
        out["pred"] = rate.layers["zipo_denoised"]
        out["pred_mix"] = mix.layers["zipo_denoised"]
        if depth is not None:  # MCV: log-normalised expression at the held-out molecules' depth
            out["pred_lognorm"] = model.denoise(adata, expectation="lognorm", depth=depth,
                                                copy=True).layers["zipo_denoised"]
        out["latent"] = rate.obsm["X_zipo"]
    else:
        test = _adata(t)
        nll = model.evaluate(test)["nll"]  # mean per entry
        out["test_nll_sum"] = np.array(nll * t.shape[0] * t.shape[1])
    return info, out


def run_baseline(method, task, x, t, seed):
    started = time.perf_counter()
    lib = np.asarray(x.sum(axis=1), dtype=np.float64).ravel()
    totals = np.asarray(x.sum(axis=0), dtype=np.float64).ravel()
    props = totals / totals.sum()
    out = {}
    if method == "mean":
        if task == "denoise":
            out["pred"] = np.outer(lib, props).astype(np.float32)
        else:
            from scipy.special import gammaln

            tt = t.toarray().astype(np.float64)
            rate = np.outer(tt.sum(axis=1), props)
            out["test_nll_sum"] = np.array(np.sum(rate - tt * np.log(rate) + gammaln(tt + 1)))
    else:  # pca: low-rank reconstruction of log1p(counts scaled to the median library)
        scale = float(np.median(lib))
        y = np.log1p(x.toarray().astype(np.float64) / lib[:, None] * scale)
        k = n_components(y.shape)
        scores, comps, means = pca_scores(y, k, seed)
        recon = np.expm1(scores @ comps + means).clip(min=0.0) * lib[:, None] / scale
        out["pred"] = recon.astype(np.float32)
        out["latent"] = scores.astype(np.float32)
    info = {"fit_seconds": time.perf_counter() - started, "epochs": None,
            "seconds_per_epoch": None}
    if method == "pca":
        info["n_components"] = k
    return info, out


def main():
    for a in tasks(METHODS):
        x, t = load_input(a.input)
        if a.method in ZIPO_METHODS:
            info, out = run_zipo(a.method, a.task, x, t, a.seed, a.max_epochs, a.threads,
                                 a.depth)
        else:
            info, out = run_baseline(a.method, a.task, x, t, a.seed)
        save_output(a.output, info, **out)


if __name__ == "__main__":
    main()
