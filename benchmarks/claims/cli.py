"""``python -m benchmarks.claims``: plan the fits, run the missing ones (in parallel worker
processes, timings one at a time afterwards), and write CLAIMS.md from the cache."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path

from . import __doc__ as USAGE
from .cache import Cache
from .fit import now, one_thread, prune_available, run_spec
from .header import header
from .plan import MODES, Mode, plan, spec_key
from .report import CLAIMS, Report

BENCHMARKS = Path(__file__).resolve().parents[1]


def _git_commit() -> str | None:
    import subprocess

    try:
        return subprocess.run(["git", "-C", str(BENCHMARKS), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.claims", description=USAGE,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="pbmc_small, 2 seeds, 3 epochs (default)")
    g.add_argument("--full", action="store_true", help="PBMC 4k, 3 seeds, <= 60 epochs")
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--datasets", nargs="+", default=None, choices=["pbmc4k", "pbmc_small"])
    p.add_argument("--max-epochs", type=int, default=None)
    p.add_argument("--genes", type=int, default=None, help="PBMC 4k: most-detected genes kept")
    p.add_argument("--jobs", type=int, default=None, help="fits at a time (1 thread each)")
    p.add_argument("--out", type=Path, default=None,
                   help="default: benchmarks/CLAIMS.md (full), benchmarks/out/claims-quick/CLAIMS.md (quick)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="default: .claims_cache beside --out")
    p.add_argument("--resume", action="store_true", help="reuse finished fits from the cache")
    p.add_argument("--report-only", action="store_true", help="write CLAIMS.md from the cache")
    p.add_argument("--claims", type=int, nargs="+", default=sorted(CLAIMS), choices=sorted(CLAIMS),
                   help="only these claims (default: 1-7)")
    a = p.parse_args(argv)
    a.command = "python -m benchmarks.claims " + " ".join(shlex.quote(x) for x in argv)
    mode = MODES["full" if a.full else "quick"]
    mode = Mode(**{**asdict(mode), **{k: v for k, v in {
        "max_epochs": a.max_epochs, "genes": a.genes, "jobs": a.jobs}.items() if v is not None}})
    a.jobs = mode.jobs
    if a.out is None:
        a.out = BENCHMARKS / "CLAIMS.md" if mode.name == "full" else BENCHMARKS / "out" / "claims-quick" / "CLAIMS.md"
    seeds = a.seeds or mode.seeds
    names = a.datasets or mode.datasets
    one_thread()
    os.environ["ZIPO_GIT_COMMIT"] = os.environ.get("ZIPO_GIT_COMMIT") or (_git_commit() or "")
    commit = os.environ["ZIPO_GIT_COMMIT"] or None
    cache_dir = a.cache_dir or a.out.resolve().parent / ".claims_cache"
    # One file per mode; records are keyed by everything that defines a fit (settings and
    # seed), so runs with other options or more seeds share it safely.
    cache = Cache(cache_dir / f"{mode.name}.jsonl", resume=a.resume or a.report_only)
    fits, times, layout = plan(mode, names, seeds, a.claims)
    needs_prune = {spec_key({**b, "seed": s}) for n in names for _, b in layout.get((n, 5), [])
                   for s in range(seeds)}
    todo = [s for s in fits if not cache.done(s, spec_key(s) in needs_prune)]
    todo_t = [s for s in times if not cache.done(s, False)]
    started, t0 = now(), time.perf_counter()
    _log(f"claims: {mode.name}, {len(fits)} fits ({len(todo)} to run) + {len(times)} timings "
         f"({len(todo_t)} to run), cache {cache.path}; ZiPo.prune "
         f"{'available' if prune_available() else 'NOT available (claim 5 reported as such)'}")
    if not a.report_only:
        done = 0

        def finish(rec):
            nonlocal done
            done += 1
            rec["zipo_commit"] = commit
            cache.add(rec)
            what = (f"{rec['n_cells']} cells" if rec["kind"] == "time" else
                    f"{rec['model']['likelihood']} enc={rec['model']['encoder_dims']} "
                    f"res={rec['model']['residuals']} dec={rec['model']['decoder_dims']} "
                    f"{rec['model']['activation']} bn={rec['model']['batch_norm']} "
                    f"az={rec['model']['alpha_z']:g}")
            _log(f"[{done}/{len(todo) + len(todo_t)}] {rec['dataset']} s{rec['seed']} {what}: "
                 f"{rec['status']} nll={rec.get('nll')} epochs={rec.get('epochs')} "
                 f"{rec.get('seconds', 0) or 0:.1f}s" + (f" ({rec['error']})" if rec.get("error") else ""))

        if mode.jobs > 1 and len(todo) > 1:
            import multiprocessing as mp

            with ProcessPoolExecutor(mode.jobs, mp_context=mp.get_context("spawn"),
                                     initializer=one_thread) as pool:
                futures = {pool.submit(run_spec, s): s for s in todo}
                for f in as_completed(futures):
                    try:
                        rec = f.result()
                    except Exception as e:  # noqa: BLE001 - e.g. a worker killed for memory
                        s = futures[f]
                        rec = {"key": spec_key(s), "kind": "fit", **s, "status": "error",
                               "error": f"{type(e).__name__}: {e}"}
                    finish(rec)
        else:
            for s in todo:
                finish(run_spec(s))
        for s in todo_t:  # one at a time, after the fits: timings of their own
            finish(run_spec(s))
    wall = time.perf_counter() - t0
    report = Report(cache.records, layout, mode, seeds, names, a.claims)
    text = report.write(header(a, mode, seeds, names, cache.records, started, wall,
                               len(fits), len(times)))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    _log(f"wrote {a.out} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
