"""`zipo demo`: train briefly on the embedded PBMC sample, denoise it, and say what happened."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def run_demo(epochs: int = 60, out: str | Path | None = None, seed: int = 0,
             verbose: bool = True, echo=print) -> dict:
    """Train a ZiPo model on the shipped PBMC sample and print a short report.

    The default model, capped at ``epochs`` (60: about a minute on 2 CPU cores). Returns the
    figures it printed.
    """
    from .datasets import pbmc4k_demo
    from .model import ZiPo

    adata = pbmc4k_demo()
    echo(f"Demo data: {adata.n_obs} PBMCs x {adata.n_vars} genes of raw UMI counts "
         f"(10x PBMC 4k sample shipped with zipo), "
         f"{adata.X.nnz / (adata.n_obs * adata.n_vars):.1%} non-zero.")
    model = ZiPo(adata, max_epochs=epochs, seed=seed, verbose=verbose)
    echo(f"Model: {model}")
    started = time.perf_counter()
    model.train()
    seconds = time.perf_counter() - started
    h = model.history
    baseline = model.baseline_nll()
    echo(f"Trained {len(h)} epochs in {seconds:.1f} s; validation NLL per entry "
         f"{h['validation_nll'].iloc[0]:.4f} (epoch 1) -> {h['validation_nll'].min():.4f} (best); "
         f"baseline (gene mean proportion x library size, Poisson) {baseline:.4f}.")
    model.denoise(adata, zero_inflation=True)
    den = adata.layers["zipo_denoised"]
    raw = adata.X
    zero = raw.toarray() == 0
    echo("Wrote adata.layers['zipo_denoised'] (the rate l*mu given each cell's counts), "
         "adata.layers['zipo_zero_prob'], adata.obsm['X_zipo'] "
         f"({adata.obsm['X_zipo'].shape[1]} latents), adata.obs['zipo_library_size'].")
    echo(f"Observed zeros: {zero.mean():.1%} of entries; mean denoised value there "
         f"{den[zero].mean():.3f}; mean zero-inflation probability "
         f"{adata.layers['zipo_zero_prob'].mean():.3f}.")
    markers = [g for g in ("CD3E", "MS4A1", "LYZ", "NKG7") if g in adata.var_names]
    types = adata.obs["cell_type"].astype(str)
    rows = []
    for g in markers:
        j = adata.var_names.get_loc(g)
        top = max(sorted(set(types) - {"?"}), key=lambda t: den[types.values == t, j].mean())
        rows.append(f"{g}: highest denoised mean in {top} "
                    f"({den[types.values == top, j].mean():.2f} vs {den[:, j].mean():.2f} overall)")
    echo("Markers: " + "; ".join(rows) + ".")
    result = {"epochs": len(h), "seconds": seconds, "baseline_nll": baseline,
              "validation_nll_first": float(h["validation_nll"].iloc[0]),
              "validation_nll_best": float(h["validation_nll"].min()),
              "denoised_shape": den.shape, "finite": bool(np.isfinite(den).all())}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        model.save(out / "model", overwrite=True)
        model.plot_history(path=out / "history.png")
        echo(f"Saved the model to {out / 'model'} and its training plot to {out / 'history.png'}.")
    return result
