"""What the claims need fitted: the modes, the variants per claim, and the plan of fits and
timings (each fit keyed by everything that defines it, so a variant shared by claims runs once)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

DEEP = [2048, 1024, 512, 256, 128]
PAPER_DEFAULT = {  # zipo's defaults = the paper's best model; every variant overrides some keys
    "likelihood": "zip", "encoder_dims": DEEP, "residuals": True, "decoder_dims": [],
    "activation": "sigmoid", "batch_norm": True, "alpha_z": 0.1, "alpha_w": 0.1,
}


@dataclass
class Mode:
    name: str
    datasets: list[str]
    seeds: int
    max_epochs: int
    patience: int  # early stopping (paper: 30)
    plateau_patience: int  # reduce-on-plateau (paper: 15)
    genes: int  # pbmc4k: most-detected genes kept
    time_sizes: dict[str, list[int]]
    time_epochs: int
    jobs: int
    subset: bool  # quick: fewer variants per claim


MODES = {
    "quick": Mode("quick", ["pbmc_small"], 2, 3, 3, 2, 300,
                  {"pbmc_small": [20, 40, 80, 160], "pbmc4k": [100, 200, 400]}, 2, 1, True),
    "full": Mode("full", ["pbmc4k"], 3, 60, 10, 5, 2000,
                 {"pbmc4k": [250, 500, 1000, 2170, 4340, 8680],
                  "pbmc_small": [20, 40, 80, 160, 320, 640]}, 4, 2, False),
}


def variants(subset: bool) -> dict[int, list[tuple[str, dict]]]:
    """claim -> [(label, overrides of PAPER_DEFAULT)]."""
    if subset:
        depths = [[128], [512, 128]]
        decoders = [[], [128]]
        alphas = [0.0, 0.1, 1e4]
    else:
        depths = [[128], [512, 128], [1024, 512, 256, 128], DEEP]
        decoders = [[], [128], [256, 128]]
        alphas = [0.0, 0.01, 0.1, 1.0, 100.0, 1e4]
    c1 = []
    for enc in depths:
        for res in ([False] if len(enc) == 1 else [True, False]):
            lab = "-".join(map(str, enc)) + ("" if len(enc) == 1 else
                                             (", residuals" if res else ", no residuals"))
            c1.append((lab, {"encoder_dims": enc, "residuals": res}))
    c2 = [("linear (paper)" if not d else "hidden " + "-".join(map(str, d)), {"decoder_dims": d})
          for d in decoders]
    c3 = [(f"{act}, {'batch norm' if bn else 'no batch norm'}", {"activation": act, "batch_norm": bn})
          for act in ("sigmoid", "gelu") for bn in (True, False)]
    c4 = [(f"alpha_z = {a:g}", {"alpha_z": a}) for a in alphas]
    c56 = [("ZIP", {"likelihood": "zip"}), ("ZINB", {"likelihood": "zinb"})]
    return {1: c1, 2: c2, 3: c3, 4: c4, 5: c56, 6: c56}


def model_options(overrides: dict) -> dict:
    opts = {k: (list(v) if isinstance(v, list) else v) for k, v in PAPER_DEFAULT.items()}
    opts.update(overrides)
    if len(opts["encoder_dims"]) == 1:
        opts["residuals"] = False  # one layer: nothing to connect, same network either way
    return opts


def spec_key(spec: dict) -> str:
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def plan(mode: Mode, datasets: list[str], seeds: int, claims=tuple(range(1, 8))
         ) -> tuple[list[dict], list[dict], dict]:
    """(fit specs, time specs, {(dataset, claim): [(label, fit-spec-without-seed)]})."""
    train = {"max_epochs": mode.max_epochs, "early_stopping_patience": mode.patience,
             "plateau_patience": mode.plateau_patience}
    fits, times, layout, seen = [], [], {}, set()
    for name in datasets:
        genes = mode.genes if name == "pbmc4k" else 0
        for claim, vs in variants(mode.subset).items():
            if claim not in claims:
                continue
            layout[(name, claim)] = []
            for label, overrides in vs:
                base = {"dataset": name, "genes": genes, "model": model_options(overrides),
                        "train": train}
                layout[(name, claim)].append((label, base))
                for seed in range(seeds):
                    spec = {**base, "seed": seed}
                    k = spec_key(spec)
                    if k not in seen:
                        seen.add(k)
                        fits.append(spec)
        for n in (mode.time_sizes[name] if 7 in claims else []):
            for seed in range(seeds):
                times.append({"dataset": name, "genes": genes, "model": model_options({}),
                              "n_cells": n, "epochs": mode.time_epochs, "seed": seed})
    # The costly first: a deep encoder costs ~2 s/epoch on PBMC 4k, a 128-wide one ~0.3 s.
    fits.sort(key=lambda s: -sum(s["model"]["encoder_dims"]) * (2 if s["model"]["likelihood"] == "zinb" else 1))
    return fits, times, layout
