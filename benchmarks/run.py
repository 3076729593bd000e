"""ZiPo against the denoisers people use today: accuracy, speed and memory, side by side.

    python -m benchmarks.run --setup --quick     # CI: create peer venvs if missing, small run
    python -m benchmarks.run --setup             # full run (3 seeds, at most 60 epochs)
    python -m benchmarks.run --full --write-results   # ... and rewrite benchmarks/RESULTS.md

Every fit is one subprocess (so wall time and peak RSS are its own): ZiPo and the baselines in
this environment, scVI / MAGIC in their own virtualenvs (``--setup`` creates them from the
pinned ``benchmarks/requirements-*.txt``; a missing one is reported as skipped). Data travel
as .npz files in a temporary folder. See benchmarks/README.md for the protocols.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import datasets as D
from . import protocols as P
from . import venvs
from .clustering import latent_scores
from .workers.wio import load_output, save_input

HERE = Path(__file__).resolve().parent
WORKERS = HERE / "workers"


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    script: str
    venv: str | None  # None: this environment
    likelihood: bool  # takes part in the held-out-cell NLL
    kind: str  # "zipo", "peer" or "baseline"


METHODS = {m.key: m for m in [
    Method("zipo_zip", "ZiPo-ZIP", "main_worker.py", None, True, "zipo"),
    Method("zipo_zinb", "ZiPo-ZINB", "main_worker.py", None, True, "zipo"),
    Method("zipo_dca", "DCA (ZiPo preset)", "main_worker.py", None, True, "peer"),
    Method("scvi", "scVI", "scvi_worker.py", "scvi", True, "peer"),
    Method("magic", "MAGIC", "magic_worker.py", "magic", False, "peer"),
    Method("mean", "no denoising", "main_worker.py", None, True, "baseline"),
    Method("pca", "PCA low-rank", "main_worker.py", None, False, "baseline"),
]}

PROTOCOLS = ["mcv0.9", "mcv0.5", "masked", "heldout"]
# Expected cost of one fit, for scheduling the slowest first (relative units).
COST = {"zipo_zip": 10, "zipo_zinb": 10, "scvi": 4, "zipo_dca": 2, "magic": 1, "pca": 0.5,
        "mean": 0.1}
DATA_COST = {"pbmc4k": 10, "simulated": 5, "pbmc_small": 0.2}
ENV_THREADS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "NUMBA_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


# --------------------------------------------------------------------------- splits
@dataclass
class Split:
    """What one protocol gives the methods (``train``, optionally ``test``) and what it keeps
    to score them."""
    dataset: str
    seed: int
    protocol: str
    train: object  # CSR counts the methods see
    expressed: np.ndarray  # genes with counts in ``train`` (the methods are fitted on these)
    input_path: Path
    target: object = None  # X'' (MCV) or the original counts (masked)
    test: object = None  # held-out cells (heldout)
    rows: np.ndarray | None = None  # masked entries
    cols: np.ndarray | None = None
    cells_train: np.ndarray | None = None
    cells_test: np.ndarray | None = None
    p: float | None = None


def make_split(ds: D.Dataset, seed: int, protocol: str, workdir: Path) -> Split:
    # One stream per (seed, protocol) so adding a protocol never changes another's split.
    rng = np.random.default_rng([seed, PROTOCOLS.index(protocol), 7])
    path = workdir / f"{ds.name}-s{seed}-{protocol}.npz"
    x = ds.counts
    if protocol.startswith("mcv"):
        p = float(protocol[3:])
        x1, x2 = P.mcv_split(x, p, rng)
        s = Split(ds.name, seed, protocol, x1, P.expressed_genes(x1), path, target=x2, p=p)
    elif protocol == "masked":
        corrupted, rows, cols = P.mask_nonzeros(x, rng)
        s = Split(ds.name, seed, protocol, corrupted, P.expressed_genes(corrupted), path,
                  target=x, rows=rows, cols=cols)
    elif protocol == "heldout":
        tr, te = P.cell_split(x.shape[0], rng)
        s = Split(ds.name, seed, protocol, x[tr], P.expressed_genes(x[tr]), path, test=x[te],
                  cells_train=tr, cells_test=te)
    else:
        raise ValueError(protocol)
    save_input(path, s.train[:, s.expressed],
               s.test[:, s.expressed] if s.test is not None else None)
    return s


# --------------------------------------------------------------------------- one fit
def run_worker(cmd: list[str], cwd: Path, timeout: float, threads: int, log_path: Path
               ) -> tuple[int, float, float]:
    """Run one fit; returns (exit status, wall seconds, peak RSS in MB of that process)."""
    env = dict(os.environ)
    env.update({k: str(threads) for k in ENV_THREADS})
    env.setdefault("MPLBACKEND", "Agg")
    env["PYTHONWARNINGS"] = "ignore"
    started = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - started > timeout:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                status = -9
                break
            time.sleep(0.2)
        proc.returncode = 0  # reaped by wait4; keep Popen from waiting again
    code = os.waitstatus_to_exitcode(status) if status != -9 else 124
    return code, time.perf_counter() - started, usage.ru_maxrss / 1024.0


def fill(split: Split, pred_expressed: np.ndarray, library: np.ndarray) -> np.ndarray:
    """Full cells x genes prediction: the method's on the genes it was fitted on, the
    mean-proportion baseline on genes with no counts in its training matrix."""
    props = P.gene_proportions(split.train)
    full = P.mean_baseline(library, props)
    full[:, split.expressed] = pred_expressed
    return full


def score(split: Split, ds: D.Dataset, method: str, arrays: dict) -> dict:
    rec: dict = {}
    n_filled = int((~split.expressed).sum())
    rec["genes_filled_by_baseline"] = n_filled
    if split.protocol == "heldout":
        tt = P.dense(split.test)
        props = P.gene_proportions(split.train)
        rest = ~split.expressed
        base = P.poisson_nll_entries(tt[:, rest], np.outer(tt.sum(axis=1), props[rest])).sum()
        rec["heldout_nll"] = float((float(arrays["test_nll_sum"]) + base) / tt.size)
        return rec
    lib = np.asarray(split.train.sum(axis=1), dtype=np.float64).ravel()
    pred = fill(split, arrays["pred"], lib)
    mix = fill(split, arrays["pred_mix"], lib) if "pred_mix" in arrays else None
    if split.protocol.startswith("mcv"):
        rec.update(P.score_mcv(pred, split.target, split.p))
        if mix is not None:
            rec.update({f"{k}_mix": v for k, v in P.score_mcv(mix, split.target, split.p).items()})
        if split.protocol == "mcv0.9":
            rec.update(P.score_openproblems(pred, split.target))
            if "pred_lognorm" in arrays:
                rec.update(P.score_openproblems_lognorm(
                    arrays["pred_lognorm"], split.target, P.gene_proportions(split.train),
                    split.expressed))
        if ds.truth:
            rate = ds.truth["rate"]
            full = pred / split.p  # the method's estimate at the full data's depth
            rec["truth_sqrt_mse"] = float(np.mean((np.sqrt(np.maximum(full, 0)) - np.sqrt(rate)) ** 2))
            rec["truth_log1p_mse"] = float(np.mean((np.log1p(np.maximum(full, 0)) - np.log1p(rate)) ** 2))
    elif split.protocol == "masked":
        rec.update(P.score_masked(pred, split.target, split.rows, split.cols))
    return rec


def oracle_records(split: Split, ds: D.Dataset) -> dict:
    """The truth's own scores (simulated data): the floor every method is measured against."""
    rate, pi = ds.truth["rate"], ds.truth["pi"]
    if split.protocol.startswith("mcv"):
        pred = P.oracle_mcv_prediction(split.train, rate, pi[None, :], split.p)
        rec = P.score_mcv(pred, split.target, split.p)
        if split.protocol == "mcv0.9":
            rec.update(P.score_openproblems(pred, split.target))
        rec["truth_sqrt_mse"] = 0.0
        rec["truth_log1p_mse"] = 0.0
        return rec
    if split.protocol == "masked":
        return P.score_masked(rate, split.target, split.rows, split.cols)
    nll = P.zip_nll_entries(split.test, rate[split.cells_test], pi[None, :])
    return {"heldout_nll": float(nll.mean())}


# --------------------------------------------------------------------------- the run
class Runner:
    def __init__(self, args, out: Path):
        self.a = args
        self.out = out
        self.records: list[dict] = []
        self.lock = threading.Lock()
        self.latents: dict[tuple[str, int], dict[str, np.ndarray]] = {}
        self.split_lock = threading.Lock()
        self.done = 0
        self.total = 0
        self.started = time.perf_counter()
        self.finished: set = set()

    def resume(self, path: Path) -> None:
        """Keep the finished records of an earlier run in ``path``; only the rest is run.
        (Latent scores of the kept fits are kept too; new fits get theirs.)"""
        old = json.loads(path.read_text())
        self.records = [r for r in old["records"] if r.get("status") == "ok"]
        self.finished = {(r["dataset"], r["seed"], r["protocol"], r["method"]) for r in self.records}
        self.meta["resumed_from"] = {k: old["meta"].get(k) for k in ("command", "started", "finished")}
        self.meta["kept_records"] = len(self.records)
        print(f"resume: keeping {len(self.records)} finished records of {path}", flush=True)

    def save(self) -> None:
        with self.lock:
            tmp = self.out / "results.json.tmp"
            tmp.write_text(json.dumps({"meta": self.meta, "records": self.records}, indent=1))
            os.replace(tmp, self.out / "results.json")

    def add(self, rec: dict) -> None:
        with self.lock:
            self.records.append(rec)
            self.done += 1
            done, total = self.done, self.total
        status = rec["status"]
        what = (f"{rec['dataset']:<10} s{rec['seed']} {rec['protocol']:<7} {rec['method']:<9} "
                f"{status}")
        if status == "ok" and rec.get("fit_seconds") is not None:
            what += f"  fit {rec['fit_seconds']:.1f}s"
            if rec.get("epochs"):
                what += f" ({rec['epochs']} epochs)"
            what += f"  rss {rec.get('peak_rss_mb', 0):.0f} MB"
        elif status != "ok":
            what += f"  {rec.get('error', '')}"
        print(f"[{done:>3}/{total}] {time.perf_counter() - self.started:6.0f}s  {what}", flush=True)
        self.save()

    def fit(self, m: Method, items: list[tuple[D.Dataset, Split]]) -> None:
        """Run the fits ``items`` of method ``m`` in one worker process and score them."""
        bases = [{"dataset": ds.name, "seed": s.seed, "protocol": s.protocol, "method": m.key}
                 for ds, s in items]
        if m.venv and not venvs.ready(m.venv):
            for b in bases:
                self.add({**b, "status": "skipped",
                          "error": f"skipped: peer venv missing, run with --setup ({m.venv})"})
            return
        py = str(venvs.python(m.venv)) if m.venv else sys.executable
        first = items[0][1]
        tag = f"{first.dataset}-s{first.seed}-{first.protocol}-{m.key}" + (
            f"-and-{len(items) - 1}-more" if len(items) > 1 else "")
        spec, outs = [], []
        for ds, s in items:
            out_path = s.input_path.with_name(f"{s.input_path.stem}-{m.key}.out.npz")
            outs.append(out_path)
            spec.append({"method": m.key, "task": "heldout" if s.protocol == "heldout" else "denoise",
                         "input": str(s.input_path), "output": str(out_path), "seed": s.seed,
                         "max_epochs": self.a.max_epochs, "threads": self.a.threads,
                         **({"depth": (1 - s.p) / s.p} if s.p is not None else {})})
        spec_path = self.tmp / f"{tag}.json"
        spec_path.write_text(json.dumps(spec))
        log_path = self.out / "logs" / f"{tag}.log"
        code, wall, rss = run_worker([py, str(WORKERS / m.script), str(spec_path)], self.tmp,
                                     self.a.timeout * len(items), self.a.threads, log_path)
        for (ds, s), b, out_path in zip(items, bases, outs):
            if not out_path.is_file():
                tail = log_path.read_text()[-400:].strip().replace("\n", " | ")
                self.add({**b, "status": "failed" if code != 124 else "timeout",
                          "error": f"exit {code}: {tail}"})
                continue
            info, arrays = load_output(out_path)
            out_path.unlink()
            try:
                rec = score(s, ds, m.key, arrays)
            except Exception as e:  # noqa: BLE001 - one bad score must not stop the run
                self.add({**b, "status": "failed", "error": f"scoring: {e!r}"})
                continue
            if s.protocol == "mcv0.9" and "latent" in arrays:
                with self.lock:
                    self.latents[(ds.name, s.seed, m.key)] = arrays["latent"]
            # The worker's own VmHWM (cumulative over the fits of a batched process).
            own = info.pop("peak_rss_mb", None)
            extra = {"peak_rss_mb": own if own is not None else rss, "process_fits": len(items)}
            if len(items) == 1:
                extra["wall_seconds"] = wall
            self.add({**b, "status": "ok", **rec, **info, **extra})

    def latent(self, data: dict[str, D.Dataset]) -> None:
        """k-means and Leiden ARI/NMI of every embedding (one Leiden process for all)."""
        embs = {k: v for k, v in self.latents.items() if data[k[0]].labels is not None}
        if not embs:
            return
        leiden = {}
        if venvs.ready("scanpy"):
            inp, outp = self.tmp / "embeddings.npz", self.tmp / "leiden.npz"
            np.savez(inp, **{f"{d}|{s}|{m}": e for (d, s, m), e in embs.items()})
            log = self.out / "logs" / "leiden.log"
            code, _, _ = run_worker([str(venvs.python("scanpy")), str(WORKERS / "leiden_worker.py"),
                                     str(inp), str(outp)], self.tmp, self.a.timeout,
                                    self.a.threads, log)
            if code == 0:
                z = np.load(outp)
                leiden = {tuple(k.split("|")): z[k] for k in z.files if not k.startswith("__")}
            else:
                print(f"leiden failed: see {log}", flush=True)
        else:
            print("leiden: skipped: peer venv missing, run with --setup (scanpy)", flush=True)
        for (d, seed, key), emb in sorted(embs.items()):
            if (d, seed, "latent", key) in self.finished:
                continue
            ds = data[d]
            rec = latent_scores(emb, ds.labels, seed=seed, leiden=leiden.get((d, str(seed), key)))
            self.add({"dataset": d, "seed": seed, "protocol": "latent", "method": key,
                      "status": "ok", "label_key": ds.label_key, **rec})

    def run(self, names: list[str], seeds: list[int], methods: list[str], protocols: list[str],
            tmp: Path):
        self.tmp = tmp
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        data = {n: D.load(n, quick=self.a.quick) for n in names}
        self.meta["datasets"] = {n: {"cells": d.shape[0], "genes": d.shape[1], "note": d.note,
                                     "labels": d.label_key} for n, d in data.items()}
        groups: dict = {}
        n_fits = 0
        for seed in seeds:
            for n, ds in data.items():
                for proto in protocols:
                    s = make_split(ds, seed, proto, tmp)
                    if ds.truth and (n, seed, proto, "oracle") not in self.finished:
                        self.records.append({"dataset": n, "seed": seed, "protocol": proto,
                                             "method": "oracle", "status": "ok",
                                             **oracle_records(s, ds)})
                    for key in methods:
                        m = METHODS[key]
                        if proto == "heldout" and not m.likelihood:
                            continue
                        if (n, seed, proto, key) in self.finished:  # --resume
                            continue
                        # Full run: one fit per process. Quick: one process per method and
                        # dataset (interpreter and import time dominate there).
                        gkey = (key, n) if self.a.batch else (key, n, seed, proto)
                        order = (0 if self.a.batch else seed, -COST[key] * DATA_COST.get(n, 1))
                        g = groups.setdefault(gkey, [order, m, []])
                        g[2].append((ds, s))
                        n_fits += 1
        jobs = sorted(groups.values(), key=lambda g: g[0])
        self.total = n_fits + sum(1 for g in jobs for _, s in g[2] if s.protocol == "mcv0.9"
                                  and g[1].key != "mean" and data[s.dataset].labels is not None)
        print(f"{n_fits} fits in {len(jobs)} processes, {self.a.jobs} at a time, "
              f"{self.a.threads} thread(s) each; results in {self.out}", flush=True)
        with ThreadPoolExecutor(self.a.jobs) as pool:
            list(pool.map(lambda g: self.fit(g[1], g[2]), jobs))
        self.latent(data)
        self.meta["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.meta["wall_seconds"] = time.perf_counter() - self.started
        self.save()


def versions() -> dict:
    v = {"python": platform.python_version()}
    commit = os.environ.get("ZIPO_GIT_COMMIT")
    if not commit:
        try:
            commit = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
                                    capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            commit = None
    v["zipo git commit"] = commit or None
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("zipo", "torch", "numpy", "scipy", "anndata"):
        try:
            v[dist] = version(dist)
        except PackageNotFoundError:
            v[dist] = None
    for name, (req, _) in venvs.PEER_VENVS.items():
        pins = {}
        for line in (HERE / req).read_text().splitlines():
            if "==" in line and not line.startswith("#"):
                k, val = line.split("==", 1)
                pins[k.strip().lower()] = val.strip()
        keep = {"scvi": ("scvi-tools", "torch", "lightning"), "magic": ("magic-impute", "scprep"),
                "scanpy": ("scanpy", "leidenalg", "igraph")}[name]
        v[f"venv:{name}"] = {k: pins.get(k) for k in keep}
    return v


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(open("/proc/meminfo").readline().split()[1])
        mem = f", {kb / 1024**2:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores ({cpu}){mem}"


def write_results(tables: str) -> None:
    """Put ``tables`` into RESULTS.md between "## Tables" and "## Closing note", keeping the
    hand-written introduction and closing note (which must then be checked against the new
    numbers); a RESULTS.md without those headings is replaced by the tables."""
    path = HERE / "RESULTS.md"
    old = path.read_text() if path.is_file() else ""
    start, end = old.find("## Tables\n"), old.find("\n## Closing note")
    if start >= 0 and end > start:
        text = old[:start] + "## Tables\n\n" + tables + "\n" + old[end:]
    else:
        text = "# Benchmark results\n\n## Tables\n\n" + tables
    path.write_text(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setup", action="store_true", help="create missing peer venvs first")
    p.add_argument("--setup-only", action="store_true", help="create peer venvs and stop")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="1 seed, small subsamples, 3 epochs (CI: shape and sanity only)")
    mode.add_argument("--full", action="store_true", help="the committed run (default)")
    p.add_argument("--datasets", nargs="+", default=list(D.DATASETS), choices=list(D.DATASETS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--protocols", nargs="+", default=PROTOCOLS, choices=PROTOCOLS)
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (full: 3, quick: 1)")
    p.add_argument("--max-epochs", type=int, default=None,
                   help="epoch cap for ZiPo and scVI (full: 60, quick: 3); see README")
    p.add_argument("--jobs", type=int, default=2, help="fits at a time (default 2)")
    p.add_argument("--threads", type=int, default=1, help="threads per fit (default 1)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per fit")
    p.add_argument("--batch", action=argparse.BooleanOptionalAction, default=None,
                   help="one worker process per method and dataset (default: quick only)")
    p.add_argument("--out", type=Path, default=None, help="default benchmarks/out/{quick,full}")
    p.add_argument("--resume", action="store_true",
                   help="keep the finished fits of OUT/results.json and run only the others")
    p.add_argument("--write-results", action="store_true",
                   help="rewrite benchmarks/RESULTS.md and benchmarks/results.png")
    a = p.parse_args(argv)
    a.seeds = a.seeds or (1 if a.quick else 3)
    a.max_epochs = a.max_epochs or (3 if a.quick else 60)
    a.batch = a.quick if a.batch is None else a.batch
    a.timeout = a.timeout or (300.0 if a.quick else 3600.0)
    out = a.out or HERE / "out" / ("quick" if a.quick else "full")
    out.mkdir(parents=True, exist_ok=True)
    setup_times = {}
    if a.setup or a.setup_only:
        setup_times = venvs.setup(out)
        if a.setup_only:
            return 0 if all(s == "ok" for _, s in setup_times.values()) else 1
    for name in sorted({METHODS[k].venv for k in a.methods if METHODS[k].venv} | {"scanpy"}):
        if not venvs.ready(name):
            print(f"{name}: skipped: peer venv missing, run with --setup", flush=True)
    runner = Runner(a, out)
    runner.meta = {
        "command": "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "mode": "quick" if a.quick else "full", "seeds": a.seeds, "max_epochs": a.max_epochs,
        "jobs": a.jobs, "threads": a.threads, "batch": a.batch, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(), "versions": versions(),
        "setup_seconds": {k: v[0] for k, v in setup_times.items()},
        "methods": {k: METHODS[k].label for k in a.methods},
    }
    if a.resume and (out / "results.json").is_file():
        runner.resume(out / "results.json")
    with tempfile.TemporaryDirectory(prefix="zipo-bench-") as tmp:
        runner.run(a.datasets, list(range(a.seeds)), a.methods, a.protocols, Path(tmp))
    from .report import write_report

    md = write_report(out / "results.json", out / "results.md", out / "results.png")
    if a.write_results:
        write_results(md)
        write_report(out / "results.json", out / "results.md", HERE / "results.png")
        print(f"wrote the tables of {HERE / 'RESULTS.md'} and {HERE / 'results.png'}")
    print(md)
    bad = [r for r in runner.records if r["status"] == "failed" or r["status"] == "timeout"]
    print(f"done in {runner.meta['wall_seconds']:.0f} s: {len(runner.records)} records, "
          f"{len(bad)} failed", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
