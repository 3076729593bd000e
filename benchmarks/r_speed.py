"""Training speed from R (zipo::train through reticulate) against Python (zipo.ZiPo().train).

    .venv-r/bin/python -m benchmarks.r_speed                 # PBMC 4k, 2,000 and all genes
    .venv-r/bin/python -m benchmarks.r_speed --genes 2000 --epochs 3 --unisolated

Run it with the Python environment R's reticulate uses (NumPy < 2; ``.venv-r`` from
``scripts/install-r.sh``): the R side runs in an Rscript whose reticulate is bound to this same
interpreter, so both sides use the same torch, threads and data. Prints, per gene set, seconds
per training epoch (median of the epochs after the first) on each side and their ratio, plus
a 2048 x 2048 float32 ``torch.mm``. ``--unisolated`` adds R rows where torch is imported
before zipo, which leaves torch bound to R's BLAS (what every R user got before zipo loaded
torch with its own BLAS: ``python/zipo/_torch_blas.py``). R's BLAS is named in the header;
switch it with ``update-alternatives --config libblas.so.3-x86_64-linux-gnu``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

# One timing of torch's matrix products, the same code in both processes: the best of five
# runs of a square product and a linear layer's forward and backward (the training hot path).
TORCH_WORK = textwrap.dedent("""
    import time, torch
    torch.manual_seed(0)
    _a, _b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    _x, _w = torch.randn(256, 2000), torch.randn(1024, 2000, requires_grad=True)
    torch_work_seconds = float("inf")
    for _ in range(5):
        _t = time.perf_counter()
        _a @ _b
        torch.nn.functional.linear(_x, _w).sum().backward()
        torch_work_seconds = min(torch_work_seconds, time.perf_counter() - _t)
""")

# R code that starts Python the way every zipo function does; `first_torch` imports torch
# before zipo (the unisolated case).
R_START = """
if ({first_torch}) invisible(reticulate::import("torch"))
stopifnot(suppressWarnings(zipo::zipo_available()))
"""


def python_env() -> dict[str, str]:
    """This environment without R's library path (rpy2 sets it; a Python started with it
    loads the system's libpython)."""
    return {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}


def run_rscript(code: str, timeout: float = 3600) -> str:
    """Run R code with reticulate bound to this interpreter; its stdout."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "script.R"
        script.write_text(code)
        env = dict(os.environ, RETICULATE_PYTHON=sys.executable)
        done = subprocess.run(["Rscript", str(script)], capture_output=True, text=True,
                              env=env, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"Rscript failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def _last_number(out: str) -> float:
    return float(out.strip().splitlines()[-1])


def torch_work_python() -> float:
    """Seconds of TORCH_WORK in a fresh plain Python process of this environment."""
    done = subprocess.run([sys.executable, "-c", TORCH_WORK + "\nprint(torch_work_seconds)"],
                          capture_output=True, text=True, env=python_env(), check=True)
    return _last_number(done.stdout)


def torch_work_r(first_torch: bool = False) -> float:
    """Seconds of TORCH_WORK inside R, after R has started Python through the zipo package."""
    code = R_START.format(first_torch="TRUE" if first_torch else "FALSE") + (
        f"reticulate::py_run_string({TORCH_WORK!r})\n"
        "cat(reticulate::py$torch_work_seconds, '\\n')\n")
    return _last_number(run_rscript(code))


def r_blas() -> str:
    out = run_rscript('p <- extSoftVersion()[["BLAS"]]; cat(file.path(basename(dirname(p)), basename(p)), "\\n")')
    return out.strip().splitlines()[-1]


def _median_after_first(seconds) -> float:
    seconds = np.asarray(seconds, dtype=float)
    return float(np.median(seconds[1:] if seconds.size > 1 else seconds))


def epoch_seconds_python(adata, epochs: int, seed: int) -> float:
    import zipo

    model = zipo.ZiPo(adata, max_epochs=epochs, seed=seed, verbose=False,
                      early_stopping_patience=10**6)
    model.train()
    return _median_after_first(model.history["seconds"])


def epoch_seconds_r(mtx_dir: Path, epochs: int, seed: int, first_torch: bool = False) -> float:
    """zipo::train() on an SCE read from MatrixMarket (genes x cells), as an R user calls it."""
    code = R_START.format(first_torch="TRUE" if first_torch else "FALSE") + textwrap.dedent(f"""
        suppressPackageStartupMessages(library(SingleCellExperiment))
        m <- as(Matrix::readMM("{mtx_dir}/matrix.mtx"), "CsparseMatrix")
        rownames(m) <- readLines("{mtx_dir}/genes.txt")
        colnames(m) <- readLines("{mtx_dir}/cells.txt")
        sce <- SingleCellExperiment(assays = list(counts = m))
        model <- zipo::train(sce, epochs = {epochs}, seed = {seed}, verbose = FALSE,
                             early_stopping_patience = 1000000)
        s <- zipo::training_history(model)$seconds
        cat(if (length(s) > 1) median(s[-1]) else s, "\\n")
    """)
    return _last_number(run_rscript(code))


def write_mtx(adata, folder: Path) -> None:
    import scipy.io
    import scipy.sparse as sp

    folder.mkdir(parents=True, exist_ok=True)
    scipy.io.mmwrite(str(folder / "matrix.mtx"), sp.csc_matrix(adata.X).T.astype(np.int64))
    (folder / "genes.txt").write_text("\n".join(map(str, adata.var_names)) + "\n")
    (folder / "cells.txt").write_text("\n".join(map(str, adata.obs_names)) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--genes", nargs="+", default=["2000", "all"],
                   help="gene sets: a number of most-detected genes, or 'all' expressed genes")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--unisolated", action="store_true",
                   help="also time R with torch imported before zipo (bound to R's BLAS)")
    args = p.parse_args(argv)

    import anndata as ad
    import torch

    from . import datasets

    print(f"ZiPo from R vs Python: PBMC 4k, default network (ZIP), {args.epochs} epochs, "
          "seconds per epoch = median after the first")
    print(f"R BLAS: {r_blas()}; python {sys.executable}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    header = f"{'work':<34} {'Python s':>9} {'R s':>9} {'R/Python':>9}"
    print(header)
    print("-" * len(header))

    def row(what: str, py: float, r: float) -> None:
        print(f"{what:<34} {py:>9.3f} {r:>9.3f} {r / py:>9.2f}", flush=True)

    py_mm = torch_work_python()
    row("torch mm 2048^2 + linear fwd/bwd", py_mm, torch_work_r())
    if args.unisolated:
        row("  same, torch imported before zipo", py_mm, torch_work_r(first_torch=True))
    with tempfile.TemporaryDirectory() as tmp:
        for genes in args.genes:
            ds = datasets.pbmc4k(None if genes == "all" else int(genes))
            adata = ad.AnnData(ds.counts)
            adata.obs_names = [f"cell{i}" for i in range(adata.n_obs)]
            adata.var_names = [str(g) for g in ds.genes]
            mtx = Path(tmp) / f"genes_{genes}"
            write_mtx(adata, mtx)
            what = f"epoch, {adata.n_vars} genes"
            py = epoch_seconds_python(adata, args.epochs, args.seed)
            row(what, py, epoch_seconds_r(mtx, args.epochs, args.seed))
            if args.unisolated:
                row("  same, torch imported before zipo", py,
                    epoch_seconds_r(mtx, args.epochs, args.seed, first_torch=True))


if __name__ == "__main__":
    main()
