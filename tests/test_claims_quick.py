"""benchmarks/claims.py in quick mode (pbmc_small, 2 seeds, 3 epochs): a report with a section,
finite numbers and a verdict for every claim, and a resumed run that refits nothing. Shape and
sanity only; the real numbers are in benchmarks/CLAIMS.md (full mode)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ZIPO_SHARED_DATA", ROOT.parent / "shared" / "data"))
VERDICT = re.compile(r"\*\*Verdict: (holds|does not hold|inconclusive)\.\*\*")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def _run(args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "benchmarks.claims", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_claims_quick_report(tmp_path):
    if not (DATA / "pbmc_small.h5ad").is_file():
        pytest.skip(f"shared data not found at {DATA}")
    out = tmp_path / "CLAIMS.md"
    proc = _run(["--quick", "--out", str(out)], ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = out.read_text()
    assert "Command: `python -m benchmarks.claims --quick" in md
    assert "torch" in md and "numpy" in md and "Machine:" in md
    sections = re.split(r"^## Claim (\d)\b", md, flags=re.M)
    numbers = dict(zip(sections[1::2], sections[2::2]))
    assert sorted(numbers) == [str(i) for i in range(1, 8)]
    for claim, body in numbers.items():
        assert "**Paper.**" in body, claim
        assert len(VERDICT.findall(body)) == 1, claim  # one dataset in quick mode
        rows = [line for line in body.splitlines()
                if line.startswith("| ") and not line.startswith("| ---")][1:]  # skip the header
        assert rows, claim
        values = [float(v) for line in rows for cell in line.split("|")[2:]
                  for v in NUMBER.findall(cell)]
        assert values and all(v == v and abs(v) != float("inf") for v in values), claim
        assert not re.search(r"\b(nan|inf)\b", "\n".join(rows), flags=re.I), claim
    # Every variant trained: no failed fits, and the summary has a verdict per claim.
    assert "error" not in md.split("## Summary", 1)[1].split("## Claim 1", 1)[0]
    assert not re.search(r"\berror \d", md)
    summary = md.split("## Summary", 1)[1].split("## Claim 1", 1)[0]
    assert len(re.findall(r"\| (holds|does not hold|inconclusive) \|", summary)) == 7
    # Claim 4 reports zero inflation and claim 7 a slope; claim 5 pruning or why not.
    assert "mean z" in numbers["4"] and "log-log slope" in numbers["7"]
    assert "pruned fraction" in numbers["5"]
    # The cache makes a second run a resume that fits nothing again.
    cache = tmp_path / ".claims_cache" / "quick.jsonl"
    assert cache.is_file() and len(cache.read_text().splitlines()) >= 20
    again = _run(["--quick", "--resume", "--out", str(out)], ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "(0 to run)" in again.stderr and out.read_text().count("**Verdict:") == 7
