"""The run: every fit in a worker subprocess of its own (or one per method and dataset in quick
mode), in a pool of threads, each result scored and saved to ``results.json`` as it comes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import datasets as D
from . import venvs
from .clustering import latent_scores
from .splits import Split, make_split, oracle_records, score
from .workers.wio import load_output

WORKERS = Path(__file__).resolve().parent / "workers"


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    script: str
    venv: str | None  # None: this environment
    likelihood: bool  # takes part in the held-out-cell NLL
    kind: str  # "zipo", "peer" or "baseline"


METHODS = {m.key: m for m in [
    Method("zipo", "ZiPo", "main_worker.py", None, True, "zipo"),
    Method("zipo_paper", "ZiPo (paper)", "main_worker.py", None, True, "zipo"),
    Method("zipo_dca", "DCA (ZiPo preset)", "main_worker.py", None, True, "peer"),
    Method("scvi", "scVI", "scvi_worker.py", "scvi", True, "peer"),
    Method("magic", "MAGIC", "magic_worker.py", "magic", False, "peer"),
    Method("cellmapper", "CellMapper", "cellmapper_worker.py", "cellmapper", False, "peer"),
    Method("mean", "no denoising", "main_worker.py", None, True, "baseline"),
    Method("pca", "PCA low-rank", "main_worker.py", None, False, "baseline"),
]}

# Expected cost of one fit, for scheduling the slowest first (relative units).
COST = {"zipo": 4, "zipo_paper": 10, "scvi": 4, "zipo_dca": 2, "magic": 1, "cellmapper": 1, "pca": 0.5,
        "mean": 0.1}
DATA_COST = {"pbmc4k": 10, "simulated": 5, "pbmc_small": 0.2}
ENV_THREADS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "NUMBA_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


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


def wants_latent(ds: D.Dataset, protocol: str, key: str) -> bool:
    """The latent step scores each method's embedding of the labelled data's MCV p = 0.9 fit."""
    return protocol == "mcv0.9" and key != "mean" and ds.labels is not None


# --------------------------------------------------------------------------- the run
class Runner:
    def __init__(self, args, out: Path):
        self.a = args
        self.out = out
        self.records: list[dict] = []
        self.lock = threading.Lock()
        self.latents: dict[tuple[str, int, str], np.ndarray] = {}
        self.split_lock = threading.Lock()
        self.done = 0
        self.total = 0
        self.started = time.perf_counter()
        self.finished: set = set()
        # The datasets of a resumed run, so a resume that names fewer still reports them all.
        self.kept_datasets: dict = {}

    def resume(self, path: Path) -> None:
        """Keep the finished records of an earlier run in ``path``; only the rest is run.
        A kept fit's embedding comes from ``latents/`` when its latent scores are not yet
        recorded; a kept fit with neither is run again (``run``)."""
        old = json.loads(path.read_text())
        self.records = [r for r in old["records"] if r.get("status") == "ok"]
        self.finished = {(r["dataset"], r["seed"], r["protocol"], r["method"]) for r in self.records}
        self.meta["resumed_from"] = {k: old["meta"].get(k)
                                     for k in ("command", "started", "finished", "machine", "versions")}
        self.meta["kept_records"] = len(self.records)
        self.kept_datasets = old["meta"].get("datasets", {})
        print(f"resume: keeping {len(self.records)} finished records of {path}", flush=True)

    def latent_path(self, dataset: str, seed: int, key: str) -> Path:
        return self.out / "latents" / f"{dataset}-s{seed}-{key}.npy"

    def save_latent(self, dataset: str, seed: int, key: str, emb: np.ndarray) -> None:
        """Kept on disk as it comes, so an interrupted run's resume still scores it."""
        path = self.latent_path(dataset, seed, key)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            np.save(f, emb)
        os.replace(tmp, path)
        with self.lock:
            self.latents[(dataset, seed, key)] = emb

    def kept(self, ds: D.Dataset, seed: int, proto: str, key: str) -> bool:
        """Whether a resumed run keeps this fit: it finished, and its embedding is scored or
        saved where the latent step needs one."""
        if (ds.name, seed, proto, key) not in self.finished:
            return False
        if not wants_latent(ds, proto, key) or (ds.name, seed, "latent", key) in self.finished:
            return True
        path = self.latent_path(ds.name, seed, key)
        if path.is_file():
            self.latents[(ds.name, seed, key)] = np.load(path)
            return True
        self.records = [r for r in self.records
                        if (r["dataset"], r["seed"], r["protocol"], r["method"])
                        != (ds.name, seed, proto, key)]
        return False

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
            if wants_latent(ds, s.protocol, m.key) and "latent" in arrays:
                self.save_latent(ds.name, s.seed, m.key, arrays["latent"])
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
        (self.out / "latents").mkdir(exist_ok=True)
        data = {n: D.load(n, quick=self.a.quick) for n in names}
        self.meta["datasets"] = {**self.kept_datasets, **{
            n: {"cells": d.shape[0], "genes": d.shape[1], "note": d.note, "labels": d.label_key}
            for n, d in data.items()}}
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
                        if self.kept(ds, seed, proto, key):  # --resume
                            continue
                        # Full run: one fit per process. Quick: one process per method and
                        # dataset (interpreter and import time dominate there).
                        gkey = (key, n) if self.a.batch else (key, n, seed, proto)
                        order = (0 if self.a.batch else seed, -COST[key] * DATA_COST.get(n, 1))
                        g = groups.setdefault(gkey, [order, m, []])
                        g[2].append((ds, s))
                        n_fits += 1
        jobs = sorted(groups.values(), key=lambda g: g[0])
        self.total = n_fits + sum(1 for g in jobs for ds, s in g[2]
                                  if wants_latent(ds, s.protocol, g[1].key))
        print(f"{n_fits} fits in {len(jobs)} processes, {self.a.jobs} at a time, "
              f"{self.a.threads} thread(s) each; results in {self.out}", flush=True)
        with ThreadPoolExecutor(self.a.jobs) as pool:
            list(pool.map(lambda g: self.fit(g[1], g[2]), jobs))
        self.latent(data)
        self.meta["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.meta["wall_seconds"] = time.perf_counter() - self.started
        self.save()
