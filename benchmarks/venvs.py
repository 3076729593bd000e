"""Peer virtualenvs: created by ``python -m benchmarks.run --setup`` from the pinned
requirement files beside this module, in ``benchmarks/.venvs/NAME`` (git-ignored).

torch is installed first (``torch==2.13.0``, the CPU wheel) in every venv that needs it, and is
pinned in its requirement file too, so a peer's install cannot replace it; the torch version is
checked afterwards. A venv is ready when its marker file holds the hash of its requirement file.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENVS = HERE / ".venvs"
TORCH = "torch==2.13.0"

# name: (requirement file, needs torch first)
PEER_VENVS = {
    "scvi": ("requirements-scvi.txt", True),
    "magic": ("requirements-magic.txt", False),
    "scanpy": ("requirements-scanpy.txt", False),
    "cellmapper": ("requirements-cellmapper.txt", False),
    "openproblems": ("requirements-openproblems.txt", False),  # benchmarks/openproblems.py
}


def python(name: str) -> Path:
    return VENVS / name / "bin" / "python"


def _digest(name: str) -> str:
    return hashlib.sha256((HERE / PEER_VENVS[name][0]).read_bytes()).hexdigest()


def _marker(name: str) -> Path:
    return VENVS / name / ".benchmarks-ready"


def ready(name: str) -> bool:
    m = _marker(name)
    return python(name).is_file() and m.is_file() and m.read_text().strip() == _digest(name)


def _run(cmd: list, log) -> None:
    log.write("$ " + " ".join(map(str, cmd)) + "\n")
    log.flush()
    subprocess.run([str(c) for c in cmd], stdout=log, stderr=subprocess.STDOUT, check=True)


def create(name: str, log_dir: Path) -> tuple[str, float, str]:
    """Create (or recreate) one venv; returns (name, seconds, 'ok' or the error)."""
    started = time.perf_counter()
    req, needs_torch = PEER_VENVS[name]
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"setup-{name}.log"
    try:
        with open(log_path, "w") as log:
            target = VENVS / name
            _run([sys.executable, "-m", "venv", "--clear", target], log)
            pip = [python(name), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
            if needs_torch:
                _run([*pip, TORCH], log)
            _run([*pip, "-r", HERE / req], log)
            if needs_torch:
                out = subprocess.run([str(python(name)), "-c", "import torch; print(torch.__version__)"],
                                     capture_output=True, text=True, check=True).stdout.strip()
                if not out.startswith("2.13.0"):
                    raise RuntimeError(f"the install replaced torch 2.13.0 with {out}")
            _marker(name).write_text(_digest(name))
        return name, time.perf_counter() - started, "ok"
    except Exception as e:  # noqa: BLE001 - reported, never fatal: the harness skips the peer
        return name, time.perf_counter() - started, f"failed ({e}); see {log_path}"


def setup(log_dir: Path, names=None, force: bool = False) -> dict[str, tuple[float, str]]:
    """Create the missing venvs in parallel (downloads dominate); print and return timings."""
    names = list(names or PEER_VENVS)
    todo = [n for n in names if force or not ready(n)]
    for n in names:
        if n not in todo:
            print(f"setup: venv {n} is ready ({VENVS / n})", flush=True)
    if not todo:
        return {}
    print(f"setup: creating {', '.join(todo)} in {VENVS} (logs in {log_dir})", flush=True)
    started = time.perf_counter()
    with ThreadPoolExecutor(len(todo)) as pool:
        results = list(pool.map(lambda n: create(n, log_dir), todo))
    for name, seconds, status in results:
        print(f"setup: {name}: {status} in {seconds:.0f} s", flush=True)
    print(f"setup: took {time.perf_counter() - started:.0f} s", flush=True)
    return {name: (seconds, status) for name, seconds, status in results}
