"""One fit of a variant scored on its validation cells (``run_fit``) and one timing
(``run_time``); both run in a worker process with one torch thread."""

from __future__ import annotations

import math
import os
import time
import traceback
from datetime import datetime, timezone
from functools import lru_cache

import numpy as np

from .. import datasets as D
from .plan import spec_key

DELTA = 1e-4
STALL_MARGIN = 0.01  # a fit whose validation NLL is < 1% below the baseline's has stalled


@lru_cache(maxsize=4)
def dataset(name: str, genes: int):
    if name == "pbmc4k":
        return D.pbmc4k(genes)
    return D.load(name)


def make_adata(counts, gene_names, cell_names=None):
    import anndata as ad
    import pandas as pd

    n = counts.shape[0]
    obs = pd.DataFrame(index=cell_names if cell_names is not None else [f"cell{i}" for i in range(n)])
    return ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=[str(g) for g in gene_names]))


def subsample_cells(ds, n: int, seed: int):
    """``n`` cells: a random subset without replacement, or (more cells than the data have) the
    whole data tiled plus a random remainder. Genes without counts in the subset are dropped
    (ZiPo refuses them)."""
    x = ds.counts
    rng = np.random.default_rng([seed, n, 17])
    total = x.shape[0]
    if n <= total:
        rows = np.sort(rng.choice(total, n, replace=False))
    else:
        rows = np.concatenate([np.tile(np.arange(total), n // total),
                               np.sort(rng.choice(total, n % total, replace=False))])
    sub = x[rows]
    keep = np.flatnonzero(np.asarray((sub > 0).sum(axis=0)).ravel() > 0)
    return make_adata(sub[:, keep].tocsr(), ds.genes[keep], [f"c{i}" for i in range(n)])


def one_thread() -> None:
    """One BLAS and torch thread in this process: fits run side by side, one per core."""
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(k, "1")
    import torch

    torch.set_num_threads(1)


def _finite(v) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def prune_available() -> bool:
    import zipo

    return callable(getattr(zipo.ZiPo, "prune", None))


def run_fit(spec: dict) -> dict:
    """Train one variant on one seed and score it on its validation cells."""
    one_thread()
    import warnings

    import zipo

    warnings.filterwarnings("ignore")
    rec = {"key": spec_key(spec), "kind": "fit", **spec}
    ds = dataset(spec["dataset"], spec["genes"])
    adata = make_adata(ds.counts, ds.genes)
    tr = spec["train"]
    # The paper's claims are about the paper's training (whole-count reconstruction).
    model = zipo.ZiPo(adata, preset="paper", seed=spec["seed"], verbose=False, **spec["model"], **tr)
    started = time.perf_counter()
    status, error = "ok", None
    try:
        model.train()
    except FloatingPointError as e:
        status, error = "diverged", str(e).split(";")[0]
    except Exception as e:  # noqa: BLE001 - any failure is a result to report, not a crash
        return {**rec, "status": "error", "error": f"{type(e).__name__}: {e}"}
    rec["seconds"] = time.perf_counter() - started
    h = model.history
    rec["epochs"] = int(len(h))
    if len(h):
        from zipo.train.schedule import monitored_column

        vl = h[monitored_column(h)].to_numpy(dtype=float)
        if not np.all(np.isfinite(h["validation_nll"].to_numpy(dtype=float))):
            status = "diverged"
            error = error or "validation NLL became NaN/inf"
        rec["best_epoch"] = int(h["epoch"].iloc[int(np.nanargmin(vl))]) if np.isfinite(vl).any() else None
        rec["seconds_per_epoch"] = float(np.median(h["seconds"].to_numpy(dtype=float)))
    try:
        rec["baseline_nll"] = _finite(model.baseline_nll())
        val = adata[model.validation_indices].copy()
        rec["nll"] = _finite(model.evaluate(val)["nll"])
        zi = spec["model"]["likelihood"] in ("zip", "zinb")
        out = model.denoise(val, expectation="rate", zero_inflation=zi, copy=True)
        x = val.X.toarray() if hasattr(val.X, "toarray") else np.asarray(val.X)
        rate = np.asarray(out.layers["zipo_denoised"], dtype=np.float64)
        rec["mse_rate"] = _finite(np.mean((rate - x) ** 2))
        rec["rate_over_observed"] = _finite(rate.mean() / x.mean())
        if zi:
            zp = np.asarray(out.layers["zipo_zero_prob"], dtype=np.float64)
            rec["mean_z"] = _finite(zp.mean())
            rec["mean_z_at_zeros"] = _finite(zp[x == 0].mean())
        w = model.network.first_layer.weight.detach().abs().cpu().numpy().astype(np.float64)
        rel = w / np.maximum(w.max(axis=1, keepdims=True), 1e-300)
        rec["sparsity"] = float((rel < DELTA).mean())
        rec["sparsity_1e-2"] = float((rel < 1e-2).mean())
    except Exception as e:  # noqa: BLE001
        error = error or f"scoring: {type(e).__name__}: {e}"
        if status == "ok":
            status = "error"
    if status == "ok" and rec.get("nll") is not None and rec.get("baseline_nll") is not None:
        if rec["nll"] > rec["baseline_nll"] * (1 - STALL_MARGIN):
            status = "stalled"
    rec["prune_available"] = prune_available()
    if rec["prune_available"] and status != "error":
        try:
            res = model.prune(delta=DELTA, adata=val)
            for k, v in res.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    rec[f"prune_{k}"] = _finite(v)
        except Exception as e:  # noqa: BLE001
            rec["prune_error"] = f"{type(e).__name__}: {e}"
    rec.update(status=status, error=error, finished=now())
    return rec


def run_time(spec: dict) -> dict:
    """Seconds per epoch (median of the epochs after the first) on ``n_cells`` cells."""
    one_thread()
    import warnings

    import zipo

    warnings.filterwarnings("ignore")
    rec = {"key": spec_key(spec), "kind": "time", **spec}
    adata = subsample_cells(dataset(spec["dataset"], spec["genes"]), spec["n_cells"], spec["seed"])
    model = zipo.ZiPo(adata, preset="paper", seed=spec["seed"], verbose=False,
                      max_epochs=spec["epochs"], early_stopping_patience=10**6, **spec["model"])
    try:
        started = time.perf_counter()
        model.train()
        rec["seconds"] = time.perf_counter() - started
    except Exception as e:  # noqa: BLE001
        return {**rec, "status": "error", "error": f"{type(e).__name__}: {e}"}
    s = model.history["seconds"].to_numpy(dtype=float)
    rec.update(status="ok", genes_used=int(adata.n_vars), error=None, finished=now(),
               seconds_per_epoch=float(np.median(s[1:] if len(s) > 1 else s)))
    return rec


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_spec(spec: dict) -> dict:
    try:
        return run_time(spec) if spec.get("n_cells") else run_fit(spec)
    except Exception as e:  # noqa: BLE001 - report, never lose the other fits
        return {"key": spec_key(spec), "kind": "time" if spec.get("n_cells") else "fit", **spec,
                "status": "error", "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(limit=3)}
