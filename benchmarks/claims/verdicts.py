"""Mean +- lambda x SEM bars over seeds and the rules that turn two bars into a verdict."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..report import LAMBDA


@dataclass
class Stat:
    mean: float
    half: float  # lambda x SEM; nan with one value
    n: int
    values: list = field(default_factory=list)

    def fmt(self, digits: int = 4) -> str:
        if self.n == 0 or not math.isfinite(self.mean):
            return "n/a"
        s = _num(self.mean, digits)
        return s + (f" ± {_num(self.half, 2)}" if math.isfinite(self.half) else "")


def _num(v: float, digits: int) -> str:
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:.{max(digits - 1, 1)}e}"
    return f"{v:.{digits}g}"


def stat(values) -> Stat:
    a = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if not len(a):
        return Stat(float("nan"), float("nan"), 0, [])
    half = LAMBDA * a.std(ddof=1) / math.sqrt(len(a)) if len(a) > 1 else float("nan")
    return Stat(float(a.mean()), float(half), len(a), a.tolist())


def compare(a: Stat, b: Stat) -> str:
    """'<' (a's bar entirely below b's), '>' (above), '~' (bars overlap), '?' (no bars)."""
    if a.n < 2 or b.n < 2 or not (math.isfinite(a.half) and math.isfinite(b.half)):
        return "?"
    if a.mean + a.half < b.mean - b.half:
        return "<"
    if a.mean - a.half > b.mean + b.half:
        return ">"
    return "~"


HOLDS, AGAINST, NS, NOBARS = "holds", "contradicted", "not significant", "no error bars"


def part(cmp: str, want: str, overlap_holds: bool = False) -> str:
    """Outcome of a directional sub-claim 'a <want> b' from ``compare``."""
    if cmp == "?":
        return NOBARS
    if cmp == want:
        return HOLDS
    if cmp == "~":
        return HOLDS if overlap_holds else NS
    return AGAINST


def overall(parts: list[tuple[str, str]]) -> str:
    outcomes = [o for _, o in parts]
    if outcomes and all(o == HOLDS for o in outcomes):
        return "holds"
    if any(o == AGAINST for o in outcomes):
        return "does not hold"
    return "inconclusive"
