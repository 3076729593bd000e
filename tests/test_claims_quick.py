"""benchmarks/claims/ in quick mode (pbmc_small from tests/data, 2 seeds, 3 epochs): a report
with a section, finite numbers and a verdict for every claim, verdicts that follow their rule from
the listed sub-claims, the verdict the quick data make certain (claim 5: 3 epochs cannot prune 98%
of the first layer), and a resumed run that refits nothing. The rest of the numbers say nothing
about the paper; the real ones are in benchmarks/CLAIMS.md (full mode)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.claims import verdicts as V  # noqa: E402

# The quick mode reads pbmc_small.h5ad from the folder ZIPO_SHARED_DATA names: the copy in the
# repository, so the test needs nothing beside it.
DATA = ROOT / "tests" / "data"
VERDICT = re.compile(r"\*\*Verdict: (holds|does not hold|inconclusive)\.\*\*")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")
OUTCOMES = (V.HOLDS, V.AGAINST, V.NS, V.NOBARS)
PART = re.compile(r"^- (.*): (" + "|".join(OUTCOMES) + r")$", flags=re.M)


def _run(args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "ZIPO_SHARED_DATA": str(DATA)}
    return subprocess.run([sys.executable, "-m", "benchmarks.claims", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_verdict_rules():
    """compare/part/overall, the rules every verdict is made from, on bars whose outcome is
    known."""
    low, high = V.stat([1.0, 1.1, 0.9]), V.stat([2.0, 2.1, 1.9])
    wide = V.stat([0.0, 3.0, 1.5])
    assert (V.compare(low, high), V.compare(high, low), V.compare(low, wide)) == ("<", ">", "~")
    assert V.compare(V.stat([1.0]), high) == "?"  # one seed: no bar
    assert V.part("<", "<") == V.HOLDS and V.part(">", "<") == V.AGAINST
    assert V.part("~", "<") == V.NS and V.part("~", ">", overlap_holds=True) == V.HOLDS
    assert V.part("?", "<") == V.NOBARS
    assert V.overall([("a", V.HOLDS), ("b", V.HOLDS)]) == "holds"
    assert V.overall([("a", V.HOLDS), ("b", V.AGAINST), ("c", V.NS)]) == "does not hold"
    assert V.overall([("a", V.HOLDS), ("b", V.NS)]) == "inconclusive"
    assert V.overall([("a", V.NOBARS)]) == V.overall([]) == "inconclusive"


def test_claims_quick_report(tmp_path):
    assert (DATA / "pbmc_small.h5ad").is_file()
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
        # The verdict follows its rule from the sub-claims listed under it.
        parts = [(desc, outcome) for desc, outcome in PART.findall(body)]
        assert parts, claim
        assert VERDICT.search(body).group(1) == V.overall(parts), (claim, parts)
    # Every variant trained: no failed fits, and the summary has a verdict per claim.
    assert "error" not in md.split("## Summary", 1)[1].split("## Claim 1", 1)[0]
    assert not re.search(r"\berror \d", md)
    summary = md.split("## Summary", 1)[1].split("## Claim 1", 1)[0]
    row_verdicts = re.findall(r"^\| (\d)\. .* \| (holds|does not hold|inconclusive) \|$", summary,
                              flags=re.M)
    assert row_verdicts == [(c, VERDICT.search(numbers[c]).group(1)) for c in sorted(numbers)]
    # Certain on the quick data: 3 epochs at learning rate 0.001 leave the first layer near its
    # random start, far from 98% prunable, so claim 5 is contradicted; pruning ran on every fit.
    claim5 = dict((desc.split(":")[0], outcome) for desc, outcome in PART.findall(numbers["5"]))
    assert claim5["ZIP prunes ~98%"] == V.AGAINST, numbers["5"]
    assert VERDICT.search(numbers["5"]).group(1) == "does not hold"
    # Claim 4 reports zero inflation and claim 7 a slope; claim 5 pruning or why not.
    assert "mean z" in numbers["4"] and "log-log slope" in numbers["7"]
    assert "pruned fraction" in numbers["5"]
    # The cache makes a second run a resume that fits nothing again.
    cache = tmp_path / ".claims_cache" / "quick.jsonl"
    assert cache.is_file() and len(cache.read_text().splitlines()) >= 20
    again = _run(["--quick", "--resume", "--out", str(out)], ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "(0 to run)" in again.stderr and out.read_text().count("**Verdict:") == 7
