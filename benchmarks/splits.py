"""A dataset split by one protocol (what the methods see, what is kept to score them) and the
scoring of a method's output on it; the arithmetic itself is in :mod:`benchmarks.protocols`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import datasets as D
from . import protocols as P
from .workers.wio import save_input

PROTOCOLS = ["mcv0.9", "mcv0.5", "masked", "heldout"]


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
