"""The record of finished fits, so ``--resume`` and ``--report-only`` reuse them."""

from __future__ import annotations

import json
from pathlib import Path

from .fit import prune_available
from .plan import spec_key


class Cache:
    """Append-only JSON lines, one per finished fit; the last line of a key wins."""

    def __init__(self, path: Path, resume: bool):
        self.path = path
        self.records: dict[str, dict] = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume and path.is_file():  # else: start afresh, still appending to the file
            for line in path.read_text().splitlines():
                try:
                    r = json.loads(line)
                    self.records[r["key"]] = r
                except (json.JSONDecodeError, KeyError):
                    continue  # a line cut off by a kill

    def done(self, spec: dict, needs_prune: bool) -> bool:
        r = self.records.get(spec_key(spec))
        if r is None or r.get("status") == "error":
            return False
        # A fit made before ZiPo.prune existed is redone for claim 5 once it does.
        return not (needs_prune and not r.get("prune_available") and prune_available())

    def add(self, rec: dict) -> None:
        self.records[rec["key"]] = rec
        with open(self.path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
