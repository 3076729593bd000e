"""CellMapper worker, run with the python of benchmarks/.venvs/cellmapper (cellmapper 0.2.5,
pinned in benchmarks/requirements-cellmapper.txt), configured as the OpenProblems denoising task
runs it (src/methods/cellmapper of openproblems-bio/task_denoising, its defaults): normalise
each cell to 10,000, ``log1p``, highly variable genes, PCA, a kNN graph on the PCA, UMAP-kernel
mapping weights, then 3 smoothing steps applied to the raw counts (self-mapping). The smoothed
counts are rescaled to each cell's own library, as the harness does for MAGIC, so they are
scored like every other method. Embedding: the PCA the neighbours were found in.
CellMapper is not iterative: no epochs.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402

from wio import load_input, save_output, tasks  # noqa: E402

SMOOTHING_STEPS = 3  # OpenProblems' --t default
KERNEL = "umap"  # OpenProblems' --kernel_method default


def main():
    for a in tasks(["cellmapper"]):
        fit(a)


def fit(a):
    import anndata as ad
    import cellmapper as cm
    import scanpy as sc
    from importlib.metadata import version

    x, _ = load_input(a.input)
    if a.task != "denoise":
        raise SystemExit("CellMapper has no likelihood: only the denoise task")
    counts = x.tocsr().astype(np.float32)
    started = time.perf_counter()
    adata = ad.AnnData(counts.copy(), layers={"counts": counts})
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata)
    sc.pp.pca(adata, random_state=a.seed)
    cmap = cm.CellMapper(adata)
    cmap.compute_neighbors(use_rep="X_pca")
    cmap.compute_mapping_matrix(kernel_method=KERNEL)
    cmap.map_layers(key="counts", t=SMOOTHING_STEPS)
    smoothed = cmap.query_imputed.X
    smoothed = np.asarray(smoothed.toarray() if hasattr(smoothed, "toarray") else smoothed,
                          dtype=np.float64)
    fit_seconds = time.perf_counter() - started
    lib = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    pred = smoothed * (lib / np.maximum(smoothed.sum(axis=1), 1e-12))[:, None]
    info = {"fit_seconds": fit_seconds, "epochs": None, "seconds_per_epoch": None,
            "cellmapper": version("cellmapper"), "scanpy": version("scanpy"),
            "smoothing_steps": SMOOTHING_STEPS, "kernel": KERNEL}
    save_output(a.output, info, pred=pred.astype(np.float32),
                latent=np.asarray(adata.obsm["X_pca"], dtype=np.float32))


if __name__ == "__main__":
    main()
