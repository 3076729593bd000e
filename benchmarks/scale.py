"""Scaling benchmark: seconds per epoch, cells per second and peak memory from 10k to 1M cells.

    python -m benchmarks.scale                      # 10k, 100k, 1M cells (about an hour here)
    python -m benchmarks.scale --sizes 10000 100000 --skip-first-layer
    python -m benchmarks.scale --quick              # 2k and 6k cells, a smoke test

Synthetic cells are Poisson resamples of random real PBMC 4k cells (each count x becomes
Poisson(x)), restricted to the 2,000 most-detected genes, so their profiles and sparsity are
PBMC's. They are written once to backed ``.h5ad`` files under ``benchmarks/.scale_data``
(gitignored; 1M cells is about 3 GB) in chunks, so generating never holds the whole matrix.

Each run is ``zipo train DATA --backed --set train.max_epochs=1`` in a fresh process (the
paper's architecture, default batch 256), so its peak RSS is that of training alone, reading
the counts from disk. Rows compare the dense and sparse first layer and 1 vs 2 processes
(DDP over gloo). A second table times a whole training step, dense vs sparse first layer, on
the real PBMC 4k data at 2,000 to all its expressed genes (39% down to 7% non-zeros), and at
all genes the first layer alone and a whole epoch (``--first-layer-only``: just that table).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .datasets import SHARED_DATA, _most_detected

HERE = Path(__file__).resolve().parent
DATA_DIR = HERE / ".scale_data"
N_GENES = 2000
CHUNK_CELLS = 50_000


def _pbmc_counts() -> tuple[sp.csr_matrix, np.ndarray]:
    import anndata as ad

    a = ad.read_h5ad(SHARED_DATA / "pbmc4k_2170.h5ad")
    x = sp.csr_matrix(a.X, dtype=np.float32)
    return x, np.asarray(a.var_names.astype(str))


def synthetic_h5ad(n_cells: int, seed: int = 0) -> Path:
    """Backed .h5ad of ``n_cells`` Poisson-resampled PBMC cells (created once, then reused)."""
    import anndata as ad
    import pandas as pd
    from anndata.io import sparse_dataset, write_elem
    import h5py

    path = DATA_DIR / f"pbmc_resampled_{n_cells}x{N_GENES}_seed{seed}.h5ad"
    if path.exists():
        return path
    DATA_DIR.mkdir(exist_ok=True)
    x, genes = _pbmc_counts()
    keep = _most_detected(x, N_GENES)
    x, genes = x[:, keep].tocsr(), genes[keep]
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp.h5ad")
    obs = pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)])
    var = pd.DataFrame(index=genes)
    ad.AnnData(obs=obs, var=var).write_h5ad(tmp)
    with h5py.File(tmp, "a") as f:
        for start in range(0, n_cells, CHUNK_CELLS):
            rows = rng.integers(0, x.shape[0], min(CHUNK_CELLS, n_cells - start))
            block = x[rows]
            block.data = rng.poisson(block.data).astype(np.float32)
            block.eliminate_zeros()
            # A resample can lose every count of a small cell: give it one back.
            empty = np.flatnonzero(np.diff(block.indptr) == 0)
            if empty.size:
                block = block.tolil()
                for r in empty:
                    block[r, rng.integers(0, N_GENES)] = 1.0
                block = block.tocsr()
            if start == 0:
                if "X" in f:
                    del f["X"]
                write_elem(f, "X", block)
            else:
                sparse_dataset(f["X"]).append(block)
    os.replace(tmp, path)
    return path


def _run_training(data: Path, first_layer: str, nproc: int, extra: list[str]) -> dict:
    """One epoch of ``zipo train --backed`` in a fresh process; its history and peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model"
        cmd = [sys.executable, "-m", "zipo", "train", str(data), "--out", str(out), "--backed",
               "--quiet", "--nproc", str(nproc), "--set", "train.max_epochs=1",
               "--set", f"train.first_layer={first_layer}", *extra]
        # The wrapper's RUSAGE_CHILDREN covers zipo and the processes it spawns.
        wrapper = ("import resource, subprocess, sys, time, json; t = time.perf_counter(); "
                   "r = subprocess.run(sys.argv[1:]); "
                   "print(json.dumps({'rc': r.returncode, 'wall': time.perf_counter() - t, "
                   "'maxrss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")
        done = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True,
                              text=True)
        if done.returncode != 0 or not done.stdout.strip():
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
        info = json.loads(done.stdout.strip().splitlines()[-1])
        if info["rc"] != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
        import pandas as pd

        h = pd.read_csv(out / "history.csv").iloc[0]
        return {"epoch_seconds": float(h["seconds"]),
                "data_wait_seconds": float(h.get("data_wait_seconds", float("nan"))),
                "wall_seconds": info["wall"], "peak_rss_gib": info["maxrss_kb"] / 2**20}


ROWS_FILE = DATA_DIR / "rows.jsonl"  # every finished run, so a cut-off benchmark resumes


def _done_rows(extra: list[str]) -> list[dict]:
    if not ROWS_FILE.exists():
        return []
    rows = [json.loads(line) for line in ROWS_FILE.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("extra", []) == extra]


def scale_rows(sizes: list[int], modes: list[str], nprocs: list[int], extra: list[str],
               log=print, resume: bool = False) -> list[dict]:
    done = {(r["cells"], r["first_layer"], r["nproc"]): r for r in _done_rows(extra)} if resume else {}
    rows = []
    for n in sizes:
        started = time.perf_counter()
        data = synthetic_h5ad(n)
        log(f"data {n} cells: {data.name} ({data.stat().st_size / 2**30:.2f} GiB, "
            f"{time.perf_counter() - started:.0f} s)")
        for mode in modes:
            for nproc in nprocs:
                if n >= 1_000_000 and (mode, nproc) != (modes[0], nprocs[0]):
                    continue  # one configuration at 1M cells: an epoch takes a while here
                if (n, mode, nproc) in done:
                    rows.append(done[(n, mode, nproc)])
                    continue
                r = _run_training(data, mode, nproc, extra)
                r.update(cells=n, first_layer=mode, nproc=nproc, extra=extra,
                         cells_per_second=n / r["epoch_seconds"])
                log(json.dumps(r))
                with ROWS_FILE.open("a") as f:
                    f.write(json.dumps(r) + "\n")
                rows.append(r)
    return rows


def choose_first_layer(net, batch, repeats: int = 3) -> tuple[str, dict]:
    """Time ``net``'s first layer (forward + weight gradient) on one sparse CSR batch read
    densely and sparsely; return the faster mode and the seconds per pass of each. What the
    fixed density rule of ``ZiPo.SPARSE_BELOW_DENSITY`` was set from."""
    import torch

    from zipo.nn.sparse import sparse_linear

    layer = net.first_layer
    x_sparse = net.transform_input(batch)
    x_dense = x_sparse.to_dense()

    def one_pass(x: torch.Tensor) -> None:
        if x.layout == torch.sparse_csr:
            y = sparse_linear(x, layer.weight, layer.bias)
        else:
            y = torch.nn.functional.linear(x, layer.weight, layer.bias)
        (weight_grad,) = torch.autograd.grad(y.sum(), [layer.weight])
        if weight_grad.is_cuda:
            torch.cuda.synchronize()

    seconds = {}
    for mode, x in (("dense", x_dense), ("sparse", x_sparse)):
        one_pass(x)  # warm-up
        started = time.perf_counter()
        for _ in range(repeats):
            one_pass(x)
        seconds[mode] = (time.perf_counter() - started) / repeats
    return min(seconds, key=seconds.get), seconds


def training_step_seconds(net, config, batch, repeats: int = 4) -> float:
    """Seconds per training step as the Trainer takes it (Noise2Self split, forward, loss,
    backward, Adam) on one batch, dense or sparse CSR; the first is a warm-up."""
    import torch

    from zipo.config import TrainConfig
    from zipo.train.heldout import binomial_split
    from zipo.train.loss import loss_terms

    q = TrainConfig().objective_heldout  # the default training split, as the Trainer's
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
    generator = torch.Generator().manual_seed(0)
    covariates = torch.zeros(batch.shape[0], 0)
    net.train()

    def step() -> None:
        x, target = binomial_split(batch, q, generator)
        loss = loss_terms(net, net(x, covariates), target, config, rate_scale=q / (1 - q))
        optimiser.zero_grad(set_to_none=True)
        loss.total.backward()
        optimiser.step()

    step()
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - started) / repeats


def first_layer_rows(repeats: int = 5, epochs: bool = True, log=print,
                     gene_counts=(2000, 5000, 10000, 0)) -> list[dict]:
    """Dense vs sparse first layer on the real PBMC 4k data: a whole training step (batch 256)
    on its ``gene_counts`` most-detected genes (0: every expressed gene), which sets the
    density; at all genes also the first layer alone and, with ``epochs``, a whole epoch
    (``ZiPo.SPARSE_BELOW_DENSITY`` follows whole epochs, which are noisier: RESULTS.md)."""
    import torch

    import zipo
    from zipo.config import ModelConfig
    from zipo.data.loader import csr_to_torch
    from zipo.nn.network import ZiPoNetwork

    counts, genes = _pbmc_counts()
    rows = []
    for n in gene_counts:
        keep = (_most_detected(counts, n) if n else
                np.flatnonzero(np.asarray(counts.sum(axis=0)).ravel() > 0))
        x = counts[:, keep].tocsr()
        torch.manual_seed(0)
        config = ModelConfig()
        net = ZiPoNetwork(x.shape[1], 0, config)
        batch = csr_to_torch(x[256:512])
        row = {"data": f"PBMC 4k, {x.shape[0]} x {x.shape[1]} genes",
               "density": x.nnz / (x.shape[0] * x.shape[1]),
               "step_dense_s": training_step_seconds(net, config, batch.to_dense(), repeats),
               "step_sparse_s": training_step_seconds(net, config, batch, repeats)}
        if not n:
            _, seconds = choose_first_layer(net, csr_to_torch(x[:256]), repeats=repeats)
            row.update(layer_dense_s=seconds["dense"], layer_sparse_s=seconds["sparse"])
        if not n and epochs:
            import anndata as ad

            a = ad.AnnData(x, var={"gene": genes[keep]})
            a.var_names = genes[keep]
            for mode in ("dense", "sparse"):
                m = zipo.ZiPo(a, max_epochs=2, verbose=False, first_layer=mode)
                m.train()
                row[f"epoch_{mode}_s"] = float(m.history["seconds"].iloc[-1])
        log(json.dumps(row))
        rows.append(row)
    return rows


def loglog_slope(rows: list[dict]) -> float | None:
    pts = sorted({(r["cells"], r["epoch_seconds"]) for r in rows
                  if (r["first_layer"], r["nproc"]) == (rows[0]["first_layer"], rows[0]["nproc"])})
    if len(pts) < 2:
        return None
    n, s = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(n, s, 1)[0])


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for key in sorted({(r["first_layer"], r["nproc"]) for r in rows}):
        pts = sorted((r["cells"], r["epoch_seconds"]) for r in rows
                     if (r["first_layer"], r["nproc"]) == key)
        ax.plot(*zip(*pts), marker="o", label=f"{key[0]} first layer, {key[1]} process(es)")
    ns = sorted({r["cells"] for r in rows})
    base = [r for r in rows if r["cells"] == ns[0]][0]["epoch_seconds"]
    ax.plot(ns, [base * n / ns[0] for n in ns], "k:", label="linear")
    ax.set(xscale="log", yscale="log", xlabel="cells", ylabel="seconds per epoch",
           title="ZiPo: one epoch vs cells (2 cores)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(rows: list[dict], layer: list[dict], command: str) -> str:
    import torch

    from zipo.config import ModelConfig

    default_encoder = "-".join(map(str, ModelConfig().encoder_dims))
    lines = [f"Command: `{command}`  ", f"Date: {time.strftime('%Y-%m-%d')}; machine: "
             f"{platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}, "
             f"Python {platform.python_version()}."]
    if rows:
        lines += ["", f"Synthetic PBMC-resampled cells x {N_GENES} genes, backed .h5ad, zipo's "
                  f"default network ({default_encoder}) unless the command sets encoder_dims, "
                  "batch 256, one epoch (training + 10% validation pass).", "",
                  "| cells | first layer | processes | s / epoch | cells / s | waiting for data "
                  "(s) | peak RSS per process (GiB) |", "|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['cells']:,} | {r['first_layer']} | {r['nproc']} | "
                     f"{r['epoch_seconds']:.1f} | {r['cells_per_second']:.0f} | "
                     f"{r['data_wait_seconds']:.1f} | {r['peak_rss_gib']:.2f} |")
    slope = loglog_slope(rows) if rows else None
    if slope is not None:
        lines += ["", f"Log-log slope of seconds per epoch against cells "
                      f"({rows[0]['first_layer']} first layer, {rows[0]['nproc']} process): "
                      f"**{slope:.3f}**."]
    if layer:
        lines += ["", "Dense against sparse first layer on PBMC 4k's most-detected genes, zipo's "
                  "default network, one training step of 256 cells (Noise2Self split, forward, "
                  "loss, backward, Adam):", "",
                  "| data | non-zeros | dense step (s) | sparse step (s) | sparse / dense |",
                  "|---|---:|---:|---:|---:|"]
    for r in layer:
        lines.append(f"| {r['data']} | {100 * r['density']:.1f}% | {r['step_dense_s']:.3f} | "
                     f"{r['step_sparse_s']:.3f} | {r['step_sparse_s'] / r['step_dense_s']:.2f} |")
    for r in layer:
        if "layer_dense_s" in r:
            lines += ["", f"{r['data']}: the first layer alone (forward + weight gradient) "
                          f"dense {r['layer_dense_s']:.3f} s, sparse {r['layer_sparse_s']:.3f} s."]
        if "epoch_dense_s" in r:
            lines[-1] += (f" Whole epoch: dense {r['epoch_dense_s']:.1f} s, sparse "
                          f"{r['epoch_sparse_s']:.1f} s.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--modes", nargs="+", default=["sparse", "dense"],
                   help="first-layer modes; the first one is also run at 1M cells")
    p.add_argument("--nprocs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--quick", action="store_true", help="2k and 6k cells, small network")
    p.add_argument("--skip-first-layer", action="store_true")
    p.add_argument("--first-layer-only", action="store_true",
                   help="only the dense-vs-sparse table on PBMC 4k (no synthetic runs)")
    p.add_argument("--resume", action="store_true",
                   help="reuse the runs already in benchmarks/.scale_data/rows.jsonl")
    p.add_argument("--out", type=Path, help="write the markdown table (and a .png plot beside)")
    args = p.parse_args(argv)
    extra: list[str] = []
    if args.quick:
        args.sizes = [2000, 6000]
        extra = ["--set", "model.encoder_dims=[64, 16]"]
    rows = [] if args.first_layer_only else scale_rows(args.sizes, args.modes, args.nprocs,
                                                       extra, resume=args.resume)
    layer = [] if args.skip_first_layer else first_layer_rows(
        repeats=1 if args.quick else 5, epochs=not args.quick)
    text = markdown(rows, layer, "python -m benchmarks.scale " + " ".join(argv or sys.argv[1:]))
    print(text)
    if args.out:
        args.out.write_text(text)
        if rows:
            plot(rows, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
