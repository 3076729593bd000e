"""ZiPo against the denoisers people use today: accuracy, speed and memory, side by side.

    python -m benchmarks.run --setup --quick     # CI: create peer venvs if missing, small run
    python -m benchmarks.run --setup             # full run (3 seeds, each method to its own rule)
    python -m benchmarks.run --full --write-results   # ... and rewrite benchmarks/RESULTS.md

Every fit is one subprocess (so wall time and peak RSS are its own): ZiPo and the baselines in
this environment, scVI / MAGIC / CellMapper in their own virtualenvs (``--setup`` creates them from the
pinned ``benchmarks/requirements-*.txt``; a missing one is reported as skipped). Data travel
as .npz files in a temporary folder. See benchmarks/README.md for the protocols.
"""

# The splits and their scoring are in splits.py, the fits in runner.py; here: the command, the
# versions and machine it records, and RESULTS.md.
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from . import datasets as D
from . import venvs
from .runner import METHODS, Runner
from .splits import PROTOCOLS

HERE = Path(__file__).resolve().parent


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
                "scanpy": ("scanpy", "leidenalg", "igraph"),
                "cellmapper": ("cellmapper", "scanpy"),
                "openproblems": ("cellmapper", "magic-impute", "scprep", "scanpy")}[name]
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
    p.add_argument("--datasets", nargs="+", default=list(D.DATASETS),
                   choices=[*D.DATASETS, *D.EXTRA_DATASETS],
                   help="default: the shared PBMC data and the simulation; celltypist_sample "
                        "(real, outside shared/) is fetched from PyPI when named")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--protocols", nargs="+", default=PROTOCOLS, choices=PROTOCOLS)
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (full: 3, quick: 1)")
    p.add_argument("--max-epochs", type=int, default=None,
                   help="epoch cap for ZiPo and scVI (full: 400, i.e. none: each keeps its "
                        "own rule; quick: 3); see README")
    p.add_argument("--jobs", type=int, default=2, help="fits at a time (default 2)")
    p.add_argument("--threads", type=int, default=1, help="threads per fit (default 1)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per fit")
    p.add_argument("--batch", action=argparse.BooleanOptionalAction, default=None,
                   help="one worker process per method and dataset (default: quick only)")
    p.add_argument("--out", type=Path, default=None, help="default benchmarks/out/{quick,full}")
    p.add_argument("--resume", action="store_true",
                   help="keep the finished fits of OUT/results.json (and embeddings in "
                        "OUT/latents) and run only the others")
    p.add_argument("--write-results", action="store_true",
                   help="rewrite benchmarks/RESULTS.md and benchmarks/results.png")
    a = p.parse_args(argv)
    a.seeds = a.seeds or (1 if a.quick else 3)
    a.max_epochs = a.max_epochs or (3 if a.quick else 400)
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
