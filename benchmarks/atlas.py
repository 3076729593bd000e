"""Atlas scale: time to a trained model, memory and accuracy from 10,000 to 1,000,000 cells.

    python -m benchmarks.atlas                                  # the RESULTS.md table (hours)
    python -m benchmarks.atlas --sizes 100000 --methods zipo    # one row
    python -m benchmarks.atlas --sizes 1000000 --methods scvi --scvi-epochs 1   # timed, projected
    python -m benchmarks.atlas --quick                          # 3,000 cells, a smoke test
    python -m benchmarks.atlas --sizes 1000000 --all-genes --mouse --no-real-mouse --device cuda

Cells are simulated around real ones, so their rates are known. Each real cell of the source
(PBMC 4k from the shared data, or scanpy's 10,000 mouse cells) gets a smooth profile: the mean
gene proportions of its 15 nearest neighbours (PCA of log-normalised counts). A simulated cell
copies a random real cell's profile and library size (times a log-normal factor, sd 0.25),
with Gamma(10, 1/10) biological noise on each gene: rate = L * profile * G, counts ~
Poisson(rate). The data are written once, in blocks, to a backed ``.h5ad`` under
``benchmarks/.scale_data`` (gitignored). The real mouse cells are also run whole (all of
them with at least 20 UMIs; no true rates there).

The first ``--scored`` cells (2,000) are split by molecular cross-validation (p = 0.9): the
file holds X' for them, and their X'' and true rates are kept beside it. Each method trains
on the whole file with its defaults and its own stopping rule, in a fresh process (peak RSS is
that process's VmHWM; its ru_maxrss would also count the image forked from this one): ZiPo
from the backed file (``zipo.ZiPo(backed).train()``), scVI from the file read into memory as
CSR (``scvi.model.SCVI(adata).train()``, epochs ``min(400, 400 * 20,000 / cells)``). Both then predict the scored cells, which are scored on X'' (Poisson deviance, as
``benchmarks.run``) and against the true rates (square-root error at the full depth). Where
scVI's rule is out of reach, ``--scvi-epochs N`` times N epochs and projects its rule's time
(its accuracy is then that of N epochs, marked). ``--device cuda`` trains both on the GPU
(scVI with ``accelerator="gpu"``, both clocks started after CUDA is), recorded as each row's
``device``. Run it alone: other jobs inflate every time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from . import protocols as P

HERE = Path(__file__).resolve().parent
DATA_DIR = HERE / ".scale_data"
MCV_P = 0.9
BLOCK_ENTRIES = 2 * 10**7  # cells x genes drawn at a time while simulating
# the genes each source is simulated at (the mouse cells come with 1,000)
SOURCE_GENES = {"pbmc4k": "2000", "mouse10k": "1000", "mouse10k_real": "1000"}


# --------------------------------------------------------------------------- simulation
def _source(name: str, all_genes: bool) -> tuple[sp.csr_matrix, np.ndarray]:
    from . import datasets as D

    if name == "pbmc4k":
        ds = D.pbmc4k(None if all_genes else 2000)
    elif name == "mouse10k":
        ds = D.mouse_10k_subset(n_cells=10**6)  # all 10,000 cells with >= 20 UMIs
    else:
        raise SystemExit(f"unknown source {name!r}")
    return sp.csr_matrix(ds.counts, dtype=np.float64), np.asarray(ds.genes).astype(str)


def smooth_profiles(x: sp.csr_matrix, k: int = 15, n_pcs: int = 30) -> np.ndarray:
    """Each cell's mean gene proportions over its ``k`` nearest neighbours (itself included),
    found in the top ``n_pcs`` principal components of log-normalised counts."""
    library = np.asarray(x.sum(axis=1)).ravel()
    props = sp.diags(1.0 / library) @ x
    top = np.argsort(-np.asarray((x > 0).sum(axis=0)).ravel())[:2000]
    logn = np.log1p(1e4 * props[:, top].toarray())
    logn -= logn.mean(axis=0)
    u, s, _ = np.linalg.svd(logn, full_matrices=False)
    pcs = u[:, :n_pcs] * s[:n_pcs]
    sq = (pcs**2).sum(axis=1)
    dist = sq[:, None] + sq[None, :] - 2 * pcs @ pcs.T
    neighbours = np.argsort(dist, axis=1)[:, :k]
    rows = np.repeat(np.arange(x.shape[0]), k)
    average = sp.csr_matrix((np.full(rows.size, 1.0 / k), (rows, neighbours.ravel())),
                            shape=(x.shape[0], x.shape[0]))
    return np.asarray((average @ props).todense())


def dataset_path(n_cells: int, source: str, all_genes: bool, seed: int = 0) -> Path:
    genes = "allgenes" if all_genes else "2000genes"
    return DATA_DIR / f"atlas_{source}_{n_cells}x{genes}_seed{seed}.h5ad"


def simulate(n_cells: int, source: str = "pbmc4k", all_genes: bool = False, seed: int = 0,
             scored: int = 2000) -> Path:
    """The backed ``.h5ad`` of ``n_cells`` simulated cells (made once, then reused), and
    beside it ``.truth.npz``: the scored cells' X'' and true rates."""
    import anndata as ad
    import h5py
    import pandas as pd
    from anndata.io import sparse_dataset, write_elem

    path = dataset_path(n_cells, source, all_genes, seed)
    truth = path.with_suffix(".truth.npz")
    if path.exists() and truth.exists():
        return path
    DATA_DIR.mkdir(exist_ok=True)
    x, genes = _source(source, all_genes)
    profiles = smooth_profiles(x)
    library = np.asarray(x.sum(axis=1)).ravel()
    rng = np.random.default_rng(seed)
    block = max(scored, BLOCK_ENTRIES // len(genes))
    tmp = path.with_suffix(".tmp.h5ad")
    obs = pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)])
    ad.AnnData(obs=obs, var=pd.DataFrame(index=genes)).write_h5ad(tmp)
    with h5py.File(tmp, "a") as f:
        for start in range(0, n_cells, block):
            m = min(block, n_cells - start)
            cells = rng.integers(0, x.shape[0], m)
            depth = library[cells] * np.exp(rng.normal(0.0, 0.25, m))
            rate = depth[:, None] * profiles[cells] * rng.gamma(10.0, 0.1, (m, len(genes)))
            counts = sp.csr_matrix(rng.poisson(rate).astype(np.float32))
            if start == 0:  # the scored cells: X' in the file, X'' and the rates beside it
                kept, held = P.mcv_split(counts[:scored], MCV_P, rng)
                counts = sp.vstack([kept, counts[scored:]]).tocsr()
                np.savez(truth, rate=rate[:scored].astype(np.float32), p=MCV_P,
                         **{f"heldout_{k}": getattr(held, k)
                            for k in ("data", "indices", "indptr", "shape")})
            empty = np.flatnonzero(np.diff(counts.indptr) == 0)
            if empty.size:  # a cell with no molecules gets one, as 10x calls need some
                counts = (counts + sp.csr_matrix(
                    (np.ones(empty.size, np.float32), (empty, rng.integers(0, len(genes),
                                                                           empty.size))),
                    shape=counts.shape)).tocsr()
            if start == 0:
                write_elem(f, "X", counts)
            else:
                sparse_dataset(f["X"]).append(counts)
    tmp.replace(path)
    return path


def real(source: str = "mouse10k", seed: int = 0, scored: int = 2000) -> Path:
    """The real cells of ``source`` whole, as :func:`simulate` writes them: X' for the first
    ``scored`` (in a random order of the cells), X'' beside the file, and no rates."""
    import anndata as ad
    import pandas as pd

    path = DATA_DIR / f"atlas_{source}_real_seed{seed}.h5ad"
    truth = path.with_suffix(".truth.npz")
    if path.exists() and truth.exists():
        return path
    DATA_DIR.mkdir(exist_ok=True)
    x, genes = _source(source, False)
    rng = np.random.default_rng(seed)
    x = x[rng.permutation(x.shape[0])].astype(np.float32)
    kept, held = P.mcv_split(x[:scored], MCV_P, rng)
    np.savez(truth, p=MCV_P, **{f"heldout_{k}": getattr(held, k)
                                for k in ("data", "indices", "indptr", "shape")})
    counts = sp.vstack([kept, x[scored:]]).tocsr()
    obs = pd.DataFrame(index=[f"cell{i}" for i in range(x.shape[0])])
    tmp = path.with_suffix(".tmp.h5ad")
    ad.AnnData(counts, obs=obs, var=pd.DataFrame(index=genes)).write_h5ad(tmp)
    tmp.replace(path)
    return path


def _truth(path: Path) -> tuple[np.ndarray | None, sp.csr_matrix, float]:
    z = np.load(path.with_suffix(".truth.npz"))
    held = sp.csr_matrix((z["heldout_data"], z["heldout_indices"], z["heldout_indptr"]),
                         shape=tuple(z["heldout_shape"]))
    return (z["rate"] if "rate" in z else None), held, float(z["p"])


def _cells(path: Path) -> int:
    import anndata as ad

    return ad.read_h5ad(path, backed="r").n_obs


# --------------------------------------------------------------------------- fits
ZIPO_CHILD = r"""
import json, sys, time
import numpy as np, torch
import torch._dynamo  # as `import scvi` does before scVI's clock starts
path, threads, scored, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
options = json.loads(sys.argv[5])
sys.path.insert(0, sys.argv[6])
from wio import peak_rss_mb
torch.set_num_threads(threads)
import anndata as ad, zipo
if options.get("device") == "cuda":  # start CUDA before the clock, as scVI's child does
    torch.zeros(1, device="cuda")
data = ad.read_h5ad(path, backed="r")
started = time.perf_counter()
model = zipo.ZiPo(data, verbose=False, **options).train()
seconds = time.perf_counter() - started
cells = data[:scored].to_memory()
model.denoise(cells)
np.save(out, np.asarray(cells.layers["zipo_denoised"], dtype=np.float32))
h = model.history
print(json.dumps({"seconds": seconds, "epochs": float(h["epoch"].iloc[-1]),
                  "steps": int(h["step"].iloc[-1]), "rounds": len(h),
                  "batch_size": model.config.train.batch_size,
                  "peak_rss_gib": peak_rss_mb() / 1024}))
"""

SCVI_CHILD = r"""
import json, os, sys, time
import numpy as np, torch
path, threads, scored, out, epochs = (sys.argv[1], int(sys.argv[2]), int(sys.argv[3]),
                                      sys.argv[4], int(sys.argv[5]))
sys.path.insert(0, sys.argv[6])
device = sys.argv[7]
torch.set_num_threads(threads)
if device == "cuda":  # start CUDA before the clock, as ZiPo's child does
    torch.zeros(1, device=device)
import anndata as ad, scvi
from scvi.model._utils import get_max_epochs_heuristic
from scvi_worker import _params
from wio import peak_rss_mb
scvi.settings.seed, scvi.settings.num_threads, scvi.settings.dl_num_workers = 0, threads, 0
adata = ad.read_h5ad(path)
started = time.perf_counter()
scvi.model.SCVI.setup_anndata(adata)
model = scvi.model.SCVI(adata)
rule = get_max_epochs_heuristic(adata.n_obs)
accelerator = "gpu" if device == "cuda" else "cpu"
model.train(max_epochs=epochs or rule, accelerator=accelerator, devices=1,
            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
seconds = time.perf_counter() - started
ran = len(model.history["elbo_train"])
np.save(out, _params(model, adata[:scored].copy())[0].astype(np.float32))
steps_per_epoch = -(-int(adata.n_obs * 0.9) // 128)  # scVI: 90% train, batches of 128
print(json.dumps({"seconds": seconds, "epochs": ran, "steps": ran * steps_per_epoch,
                  "rule": rule, "batch_size": 128, "peak_rss_gib": peak_rss_mb() / 1024}))
"""


def fit(method: str, path: Path, threads: int, scored: int, scvi_epochs: int = 0,
        zipo_options: dict | None = None, device: str = "cpu") -> dict:
    """Train ``method`` on ``path`` on ``device`` in a fresh process; its record with the
    scored cells' prediction scored."""
    from .venvs import python

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pred.npy"
        if method == "zipo":
            cmd = [sys.executable, "-c", ZIPO_CHILD, str(path), str(threads), str(scored),
                   str(out), json.dumps({"device": device, **(zipo_options or {})}),
                   str(HERE / "workers")]
        else:
            exe = python("scvi")
            if not exe.exists():
                raise SystemExit(f"{exe} not found: `python -m benchmarks.run --setup-only`")
            cmd = [str(exe), "-c", SCVI_CHILD, str(path), str(threads), str(scored), str(out),
                   str(scvi_epochs), str(HERE / "workers"), device]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{method} failed on {path.name}:\n{done.stderr[-3000:]}")
        rec = json.loads(done.stdout.strip().splitlines()[-1])
        pred = np.load(out).astype(np.float64)
    rate, held, p = _truth(path)
    rec["mcv_deviance"] = P.score_mcv(pred, held, p)["poisson_deviance"]
    rec["truth_sqrt_mse"] = (float("nan") if rate is None else float(np.mean(
        (np.sqrt(np.maximum(pred / p, 0)) - np.sqrt(rate)) ** 2)))
    if method == "scvi" and rec["epochs"] < rec["rule"]:
        rec["projected_seconds"] = rec["seconds"] / rec["epochs"] * rec["rule"]
    return rec


# --------------------------------------------------------------------------- report
def loglog_slope(records: list[dict], method: str) -> float | None:
    """Slope of log(time to model) against log(cells) over the 2,000-gene PBMC rows."""
    rows = [(r["cells"], r.get("projected_seconds", r["seconds"])) for r in records
            if r["method"] == method and r["genes"] == "2000" and r["source"] == "pbmc4k"]
    if len({c for c, _ in rows}) < 2:
        return None
    c, s = np.log(np.array(rows, dtype=float)).T
    return float(np.polyfit(c, s, 1)[0])


def cells_per_second(r: dict) -> float:
    """Training throughput over the timed fit: cells passed through optimiser steps per second
    of wall time (setup and validation included). Records from before ``batch_size`` was
    recorded used each method's default (ZiPo 256, scVI 128)."""
    batch = r.get("batch_size", 256 if r["method"] == "zipo" else 128)
    return r["steps"] * batch / r["seconds"]


def markdown(records: list[dict]) -> str:
    lines = ["| data | cells | genes | method | time to model (s) | epochs | steps | "
             "training cells/s | peak RSS (GiB) | MCV deviance | error vs truth |",
             "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in records:
        time_ = f"{r['seconds']:.0f}"
        if "projected_seconds" in r:
            time_ = f"{r['projected_seconds']:.0f} (projected: {r['epochs']} of {r['rule']} epochs timed)"
        method = r["method"] + ("" if r.get("device", "cpu") == "cpu" else f" ({r['device']})")
        lines.append(f"| {r['source']} | {r['cells']:,} | {r['genes']} | {method} | {time_} | "
                     f"{r['epochs']:.3g} | {r['steps']:,} | {cells_per_second(r):,.0f} | "
                     f"{r['peak_rss_gib']:.2f} | "
                     f"{r['mcv_deviance']:.4f} | {r['truth_sqrt_mse']:.4f} |"
                     .replace("| nan |", "| — |"))
    for method in ("zipo", "scvi"):
        slope = loglog_slope(records, method)
        if slope is not None:
            lines.append(f"\nlog-log slope of {method}'s time against cells (PBMC, 2,000 genes): "
                         f"{slope:.2f}")
    return "\n".join(lines)


def finished(records: list[dict], key: dict) -> list[dict]:
    """The records of the row ``key`` names (records from before ``device`` was recorded ran
    on the CPU)."""
    return [r for r in records
            if all(r.get(k, "cpu" if k == "device" else None) == v for k, v in key.items())]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--all-genes", type=int, nargs="*", default=[100_000],
                    help="sizes also simulated at all of PBMC 4k's detected genes")
    ap.add_argument("--mouse", type=int, nargs="*", default=[10_000],
                    help="sizes simulated around scanpy's 10,000 mouse cells")
    ap.add_argument("--real-mouse", action=argparse.BooleanOptionalAction, default=True,
                    help="also the real 10,000 mouse cells whole (no true rates)")
    ap.add_argument("--methods", nargs="+", default=["zipo", "scvi"], choices=["zipo", "scvi"])
    ap.add_argument("--scvi-epochs", type=int, default=0,
                    help="time this many scVI epochs and project its rule (0: train to it)")
    ap.add_argument("--zipo-options", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="where both methods train (ZiPo's zipo option device follows it)")
    ap.add_argument("--scored", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=DATA_DIR / "atlas_records.jsonl",
                    help="records (JSON lines); finished rows are not run again")
    ap.add_argument("--quick", action="store_true", help="3,000 PBMC cells, ZiPo only")
    args = ap.parse_args(argv)
    from .mcv_variants import parse_variant

    zipo_options = parse_variant(["zipo", *args.zipo_options])[1]
    if "device" in zipo_options:
        raise SystemExit("name the device with --device (both methods train there), "
                         "not --zipo-options device=...")
    plan = [("pbmc4k", n, False) for n in args.sizes]
    plan += [("pbmc4k", n, True) for n in args.all_genes]
    plan += [("mouse10k", n, False) for n in args.mouse]
    if args.real_mouse:
        plan.append(("mouse10k_real", 0, False))
    if args.quick:
        plan, args.methods, args.scored = [("pbmc4k", 3000, False)], ["zipo"], 300
    done = ([json.loads(line) for line in args.out.read_text().splitlines()]
            if args.out.exists() else [])
    records = []
    for source, n_cells, all_genes in plan:
        path = (real("mouse10k", scored=args.scored) if source == "mouse10k_real" else
                simulate(n_cells, source, all_genes, scored=args.scored))
        n_cells = n_cells or _cells(path)
        for method in args.methods:
            genes = "all" if all_genes else SOURCE_GENES[source]
            key = dict(source=source, cells=n_cells, genes=genes, device=args.device,
                       method=method, options=zipo_options if method == "zipo" else {})
            old = finished(done, key)
            if old:
                records.append(old[-1])
                continue
            rec = {**key, **fit(method, path, args.threads, args.scored, args.scvi_epochs,
                                zipo_options, args.device)}
            print(json.dumps(rec), flush=True)
            records.append(rec)
            if not args.quick:
                with open(args.out, "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
    print(markdown(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
