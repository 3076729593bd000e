"""The OpenProblems denoising task on its own terms: its unmodified scripts, run here as viash's
executable runner runs them, with ZiPo's component (integrations/openproblems/zipo) beside
their MAGIC, CellMapper and controls.

    python -m benchmarks.openproblems --setup --quick       # CI: pbmc_small, ZiPo 5 epochs
    python -m benchmarks.openproblems --setup --datasets pbmc4k simulated --out DIR

Per dataset: the dataset in the task's common format (``layers["counts"]`` and the ``uns`` keys
their process_dataset copies), their ``process_dataset`` (molecular cross-validation, 90% of the
molecules to train), each method on the train file, their ``mse`` and ``poisson`` metrics on
each output. A component runs from a temporary copy of its folder in which the block between
``## VIASH START`` and ``## VIASH END`` is replaced by the actual ``par`` and ``meta`` (what
viash does); nothing else is changed (the vendored copies' hashes are tested). Their scripts
run in the pinned peer venv ``openproblems``, ZiPo's in this environment; every run is one
subprocess (benchmarks.runner.run_worker), so its wall time and peak RSS are its own.

Their ``poisson`` script calls ``poisson_nll_loss(test_data, denoised_data)`` with the signature
``(y_pred, y_true)``: the test counts stand in the prediction's place. Beside it the records
hold the same loss with the arguments in order, ``mean(pred - test * log(pred + 1e-6))`` with
``pred`` scaled as their script scales it (by test total / train total), computed here from the
same files; and the swapped form recomputed the same way, which must equal their score.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from . import datasets as D
from . import venvs
from .runner import run_worker

HERE = Path(__file__).resolve().parent
INTEGRATION = HERE.parent / "integrations" / "openproblems"
TASK = INTEGRATION / "task_denoising"
TASK_COMMIT = "bda85e2f19cad7363506b2414b843afbc92b5d34"  # the vendored files' (README there)
FILES = ("input", "input_train", "input_test", "input_prediction", "output", "output_train",
         "output_test")
PEER = "openproblems"
EPS = 1e-6  # their poisson_nll_loss's
# Each component runs under this launcher, which reports its child's peak RSS: the rusage that
# wait4 gives for a direct child includes the parent's RSS at the fork (Linux carries the
# pre-exec high-water mark over), and this harness holds the datasets; the launcher is ~10 MB.
LAUNCHER = """import resource, subprocess, sys
try:
    code = subprocess.call(sys.argv[3:], timeout=float(sys.argv[2]))
except subprocess.TimeoutExpired:
    code = 124
open(sys.argv[1], "w").write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)
"""
ALRA_NOT_INSTALLABLE = (
    "not installable: ALRA is an R package installed from GitHub (the task's config: "
    "`r: github: KlugerLab/ALRA`) and its script reads h5ad with CRAN's R package anndata; "
    "neither is in Debian or on PyPI, the only package sources here and in CI")


@dataclass(frozen=True)
class Component:
    method_id: str  # the variant's name, reported as meta["name"] and the output's method_id
    folder: Path  # holds config.vsh.yaml and the script
    variant: dict = field(default_factory=dict)  # argument values over the config's defaults
    venv: str | None = PEER  # None: this environment
    control: bool = False  # gets input_test too; left out of the ranks


def components(method_ids: list[str] | None = None) -> list[Component]:
    zipo = INTEGRATION / "zipo"
    variants = read_config(zipo)["info"]["variants"]
    found = [
        Component("no_denoising", TASK / "src/control_methods/no_denoising", control=True),
        Component("perfect_denoising", TASK / "src/control_methods/perfect_denoising",
                  control=True),
        Component("magic", TASK / "src/methods/magic"),
        Component("cellmapper", TASK / "src/methods/cellmapper"),
        *[Component(name, zipo, dict(values or {}), venv=None)
          for name, values in variants.items()],
    ]
    return [c for c in found if method_ids is None or c.method_id in method_ids]


# ----------------------------------------------------------------- viash's executable runner
def read_config(folder: Path) -> dict:
    import yaml  # PyYAML: with optuna in the [test] extra, and in the peer venv

    return yaml.safe_load((folder / "config.vsh.yaml").read_text())


def defaults(config: dict) -> dict:
    """The component's own arguments by name (``--t`` -> ``t``): their defaults, else None."""
    return {a["name"].lstrip("-"): a.get("default") for a in config.get("arguments", [])}


def viash_block(par: dict, meta: dict) -> str:
    def lines(name, d):
        body = "".join(f"  {k!r}: {v!r},\n" for k, v in d.items())
        return f"{name} = {{\n{body}}}\n"

    return lines("par", par) + lines("meta", meta)


def substitute(script: str, par: dict, meta: dict) -> str:
    """``script`` with the lines between ``## VIASH START`` and ``## VIASH END`` replaced by
    ``par`` and ``meta`` as Python dicts (the marker lines kept); the rest unchanged."""
    lines = script.splitlines(keepends=True)
    start = [i for i, line in enumerate(lines) if line.strip() == "## VIASH START"]
    end = [i for i, line in enumerate(lines) if line.strip() == "## VIASH END"]
    if len(start) != 1 or len(end) != 1 or end[0] < start[0]:
        raise ValueError("a viash script needs one '## VIASH START' line followed by one "
                         f"'## VIASH END' line; found {len(start)} and {len(end)}")
    return "".join(lines[:start[0] + 1]) + viash_block(par, meta) + "".join(lines[end[0]:])


def prepare(comp: Component, par: dict, workdir: Path, threads: int) -> tuple[Path, dict]:
    """Copy the component's resources into ``workdir`` and substitute its script; returns the
    script to run and its ``par``: the config's defaults, then the variant's values, then
    ``par`` (the files, and anything set for this run)."""
    config = read_config(comp.folder)
    resources = [r["path"] for r in config["resources"]]
    workdir.mkdir(parents=True)
    for r in resources:
        shutil.copy2(comp.folder / r, workdir / Path(r).name)
    values = {**defaults(config), **comp.variant, **par}
    meta = {"name": comp.method_id, "resources_dir": str(workdir), "temp_dir": str(workdir),
            "cpus": threads}
    script = workdir / Path(resources[0]).name  # the first resource is the script, as viash's
    script.write_text(substitute((comp.folder / resources[0]).read_text(), values, meta))
    return script, values


# ----------------------------------------------------------------------------- the data
ORIGIN = {  # organism, url, reference: the uns keys process_dataset copies into test.h5ad
    "pbmc4k": ("homo_sapiens", "https://support.10xgenomics.com/single-cell-gene-expression/"
               "datasets/2.1.0/pbmc4k", "10x Genomics, 4k PBMCs from a Healthy Donor"),
    "pbmc4k_all_genes": ("homo_sapiens", "https://support.10xgenomics.com/"
                         "single-cell-gene-expression/datasets/2.1.0/pbmc4k",
                         "10x Genomics, 4k PBMCs from a Healthy Donor"),
    "pbmc_small": ("homo_sapiens", "https://cran.r-project.org/package=SeuratObject",
                   "SeuratObject::pbmc_small, from 10x Genomics' 3k PBMCs"),
    "simulated": ("simulated", "", "benchmarks/datasets.py (simulate)"),
    "celltypist_sample": ("homo_sapiens", "https://pypi.org/project/celltypist/1.7.1/",
                          "CellTypist 1.7.1's sample data"),
    "pancreas_100": ("mus_musculus", "https://pypi.org/project/scvelo/0.3.4/",
                     "Bastidas-Ponce et al. 2019, Development (scvelo 0.3.4's test data)"),
    "mouse_10k_subset": ("mus_musculus", "https://pypi.org/project/scanpy/1.11.5/",
                         "10x Genomics (scanpy 1.11.5's test data)"),
}


def write_common_dataset(ds: D.Dataset, path: Path) -> None:
    """``ds`` in the task's common dataset format (src/api/file_common_dataset.yaml)."""
    import anndata as ad
    import pandas as pd

    counts = sp.csr_matrix(ds.counts, dtype=np.int32)
    if not np.array_equal(counts.data, ds.counts.data):
        raise ValueError(f"{ds.name}: the task needs raw integer counts")
    organism, url, reference = ORIGIN[ds.name]
    genes = ad.utils.make_index_unique(pd.Index(np.asarray(ds.genes, dtype=str)))
    adata = ad.AnnData(obs=pd.DataFrame(index=[f"cell{i}" for i in range(counts.shape[0])]),
                       var=pd.DataFrame(index=genes), layers={"counts": counts})
    adata.uns.update(dataset_id=ds.name, dataset_name=ds.name, dataset_url=url,
                     dataset_reference=reference, dataset_summary=ds.note,
                     dataset_description=ds.note, dataset_organism=organism)
    adata.write_h5ad(path)


# ------------------------------------------------------------------------------ scoring
def poisson_scores(test_path: Path, prediction_path: Path) -> dict:
    """Their Poisson loss with the arguments in order, and as they call it (swapped), from the
    same files and the same scaling as their script; sparse where the data are."""
    import anndata as ad

    test = ad.read_h5ad(test_path)
    y = sp.csr_matrix(test.layers["counts"], dtype=np.float64)
    pred = ad.read_h5ad(prediction_path).layers["denoised"]
    scale = y.sum() / float(test.uns["train_sum"])
    rows, cols = y.nonzero()
    y_nz = np.asarray(y[rows, cols]).ravel()
    if sp.issparse(pred):
        pred = sp.csr_matrix(pred, dtype=np.float64) * scale
        pred_nz = np.asarray(pred[rows, cols]).ravel()
    else:
        pred = np.asarray(pred, dtype=np.float64) * scale
        pred_nz = pred[rows, cols]
    n, pred_sum = y.shape[0] * y.shape[1], float(pred.sum())
    # mean(pred - y * log(pred + eps)): where y = 0 an entry adds only its prediction
    in_order = (pred_sum - (y_nz * np.log(pred_nz + EPS)).sum()) / n
    # swapped: mean(y - pred * log(y + eps)); where y = 0, log(eps)
    swapped = (y_nz.sum() - np.log(EPS) * pred_sum
               - (pred_nz * (np.log(y_nz + EPS) - np.log(EPS))).sum()) / n
    return {"poisson_in_order": float(in_order), "poisson_swapped_recomputed": float(swapped)}


def metric_value(path: Path) -> float:
    import anndata as ad

    return float(ad.read_h5ad(path).uns["metric_values"])


# -------------------------------------------------------------------------------- the run
def execute(comp: Component, par: dict, work: Path, a) -> dict:
    """Run one component in its own subprocess; its status, wall time, peak RSS and, when it
    fails, the end of its log."""
    script, values = prepare(comp, par, work, a.threads)
    python = sys.executable if comp.venv is None else str(venvs.python(comp.venv))
    log, rss = work / "run.log", work / "peak_rss_kb"
    code, wall, _ = run_worker([sys.executable, "-S", "-c", LAUNCHER, str(rss), str(a.timeout),
                                python, str(script)], work, a.timeout + 60, a.threads, log)
    rec = {"status": {0: "ok", 124: "timeout"}.get(code, "failed"), "wall_seconds": wall,
           "peak_rss_mb": int(rss.read_text()) / 1024 if rss.is_file() else None,
           "args": {k: v for k, v in values.items() if k not in FILES}}
    if code:
        rec["log_tail"] = log.read_text(errors="replace")[-2000:]
    return rec


def run_dataset(name: str, comps: list[Component], a, work: Path, save) -> list[dict]:
    import anndata as ad

    ds = D.load(name, quick=a.quick)
    work.mkdir()
    common, train, test = work / "dataset.h5ad", work / "train.h5ad", work / "test.h5ad"
    write_common_dataset(ds, common)
    split = execute(Component("process_dataset", TASK / "src/data_processors/process_dataset"),
                    {"input": str(common), "output_train": str(train), "output_test": str(test),
                     "train_frac": a.train_frac, "seed": a.seed}, work / "process_dataset", a)
    base = {"dataset": name, "cells": ds.shape[0], "genes": ds.shape[1]}
    if split["status"] != "ok":
        return [save({**base, "method_id": "process_dataset", **split})]
    base["train_genes"] = ad.read_h5ad(train, backed="r").n_vars
    records = []
    for comp in comps:
        out = work / f"{comp.method_id}.h5ad"
        par = {"input_train": str(train), "output": str(out)}
        if comp.control:
            par["input_test"] = str(test)
        if comp.venv is None:  # ZiPo: this run's seed, threads and epoch cap
            par.update(seed=a.seed, num_threads=a.threads, max_epochs=a.max_epochs)
        rec = {**base, "method_id": comp.method_id, "control": comp.control,
               **execute(comp, par, work / comp.method_id, a)}
        if rec["status"] == "ok":
            for metric in ("mse", "poisson"):
                score = work / f"{comp.method_id}.{metric}.h5ad"
                m = execute(Component(metric, TASK / "src/metrics" / metric),
                            {"input_test": str(test), "input_prediction": str(out),
                             "output": str(score)}, work / f"{comp.method_id}.{metric}", a)
                rec[metric] = metric_value(score) if m["status"] == "ok" else None
                if m["status"] != "ok":
                    rec.update(status=f"{metric} {m['status']}", log_tail=m.get("log_tail"))
            rec.update(poisson_scores(test, out))
            if rec["poisson"] is not None and not np.isclose(
                    rec["poisson_swapped_recomputed"], rec["poisson"], rtol=1e-6, atol=0):
                rec["status"] = "failed: the swapped Poisson recomputed here is not their score"
        records.append(save(rec))
    records.append(save({**base, "method_id": "alra", "control": False,
                         "status": ALRA_NOT_INSTALLABLE}))
    return records


# --------------------------------------------------------------------------------- report
COLUMNS = (("mse", "MSE"), ("poisson", "Poisson (their script)"),
           ("poisson_in_order", "Poisson, arguments in order"))


def report(results: dict) -> str:
    """Per dataset, one row per method: the three scores with their ranks among the methods
    (controls unranked; lower is better for all three), time and peak RSS."""
    m = results["meta"]
    out = [f"OpenProblems denoising task (openproblems-bio/task_denoising at {m['task_commit']}), "
           f"its scripts unmodified; seed {m['seed']}, train_frac {m['train_frac']}, "
           f"{m['threads']} thread(s) per process; {m['machine']}.", ""]
    by_dataset: dict[str, list[dict]] = {}
    notes: dict[str, str] = {}
    for r in results["records"]:
        by_dataset.setdefault(r["dataset"], []).append(r)
    for name, recs in by_dataset.items():
        first = recs[0]
        out += [f"### {name}: {first['cells']} cells x {first.get('train_genes', '?')} genes "
                "(after process_dataset)", "",
                "| method | " + " | ".join(label for _, label in COLUMNS)
                + " | time (s) | peak RSS (MB) |", "|---" * (len(COLUMNS) + 3) + "|"]
        ranked = [r for r in recs if r["status"] == "ok" and not r.get("control")]
        for r in recs:
            if r["status"] != "ok":
                notes.setdefault(r["method_id"], r["status"])
                out.append(f"| {r['method_id']} | {r['status'].split(':')[0]} |"
                           + " |" * (len(COLUMNS) + 1))
                continue
            cells = []
            for key, _ in COLUMNS:
                cell = f"{r[key]:.4f}"
                if r in ranked:
                    cell += f" ({1 + sum(o[key] < r[key] for o in ranked)})"
                cells.append(cell)
            name_cell = r["method_id"] + (" (control)" if r.get("control") else "")
            out.append(f"| {name_cell} | " + " | ".join(cells)
                       + f" | {r['wall_seconds']:.1f} | {r['peak_rss_mb']:.0f} |")
        out.append("")
    out.append("Ranks in brackets, among the methods (controls unranked), lower is better. Their "
               "Poisson passes the test counts as the prediction (`poisson_nll_loss(test_data, "
               "denoised_data)`, signature `(y_pred, y_true)`); the column after it is the same "
               "loss with the arguments in order, computed from the same files and scaling. "
               "Time and peak RSS: the method's own process, on a shared machine.")
    out += [""] + [f"{method}: {status}." for method, status in notes.items()]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setup", action="store_true", help="create the peer venv if missing")
    p.add_argument("--quick", action="store_true",
                   help="CI: pbmc_small only, ZiPo capped at 5 epochs")
    p.add_argument("--datasets", nargs="+", default=None,
                   choices=[*D.DATASETS, *D.EXTRA_DATASETS],
                   help="default: pbmc_small (quick), else pbmc4k pbmc_small simulated")
    ids = [c.method_id for c in components()]
    p.add_argument("--methods", nargs="+", default=ids, choices=ids)
    p.add_argument("--seed", type=int, default=0, help="process_dataset's and ZiPo's seed")
    p.add_argument("--train-frac", type=float, default=0.9, help="process_dataset's train_frac")
    p.add_argument("--max-epochs", type=int, default=None,
                   help="ZiPo's epoch cap (quick: 5; default: none, ZiPo's own rule)")
    p.add_argument("--threads", type=int, default=1, help="threads per process (default 1)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per process")
    p.add_argument("--out", type=Path, default=None,
                   help="default benchmarks/out/openproblems-{quick,full}")
    a = p.parse_args(argv)
    a.datasets = a.datasets or (["pbmc_small"] if a.quick else list(D.DATASETS))
    a.max_epochs = a.max_epochs or (5 if a.quick else None)
    a.timeout = a.timeout or (600.0 if a.quick else 3600.0)
    out = a.out or HERE / "out" / ("openproblems-quick" if a.quick else "openproblems-full")
    out.mkdir(parents=True, exist_ok=True)
    if a.setup:
        venvs.setup(out, [PEER])
    if not venvs.ready(PEER):
        print(f"the task's scripts need the peer venv {PEER!r}: run with --setup", flush=True)
        return 1
    from .run import machine, versions

    started = time.perf_counter()
    results = {"meta": {
        "command": "python -m benchmarks.openproblems " + " ".join(
            argv if argv is not None else sys.argv[1:]),
        "task_commit": TASK_COMMIT,
        "seed": a.seed, "train_frac": a.train_frac, "threads": a.threads,
        "zipo_max_epochs": a.max_epochs, "machine": machine(), "versions": versions(),
        "zipo_imported_from": subprocess.run(  # the source tree ZiPo's component runs
            [sys.executable, "-c", "import zipo; print(zipo.__file__)"],
            capture_output=True, text=True).stdout.strip(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}, "records": []}

    def save(rec: dict) -> dict:
        results["records"].append(rec)
        results["meta"]["wall_seconds"] = time.perf_counter() - started
        (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
        print(f"{time.perf_counter() - started:6.0f}s  {rec['dataset']} {rec['method_id']}: "
              f"{rec['status']}" + "".join(f"  {k} {rec[k]:.4f}" for k, _ in COLUMNS
                                           if rec.get(k) is not None), flush=True)
        return rec

    comps = components(a.methods)
    with tempfile.TemporaryDirectory(prefix="zipo-openproblems-") as tmp:
        for name in a.datasets:
            run_dataset(name, comps, a, Path(tmp) / name, save)
    md = report(results)
    (out / "results.md").write_text(md)
    print(md)
    bad = [r for r in results["records"]
           if r["status"] != "ok" and r["status"] != ALRA_NOT_INSTALLABLE]
    print(f"done in {time.perf_counter() - started:.0f} s: {len(results['records'])} records, "
          f"{len(bad)} failed; {out / 'results.json'}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
