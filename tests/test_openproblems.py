"""The OpenProblems denoising task's integration (integrations/openproblems,
benchmarks/openproblems.py): the vendored scripts are byte-identical to the task's, the viash
block substitution changes nothing else, their process_dataset and no_denoising control and
ZiPo's component run through it here, and the Poisson loss computed here reproduces their
script's. Their metrics need the peer venv (scanpy, scprep); that test skips without it."""

from __future__ import annotations

import argparse
import hashlib
import resource
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import datasets as D  # noqa: E402
from benchmarks import openproblems as OP  # noqa: E402
from benchmarks import venvs  # noqa: E402

from conftest import PBMC_SMALL  # noqa: E402

RUN = argparse.Namespace(threads=1, timeout=300.0)
LISTED = {"README.md", "SHA256SUMS"}  # the folder's own files, not the task's


def _sums() -> dict[str, str]:
    lines = (OP.TASK / "SHA256SUMS").read_text().splitlines()
    return {path: digest for digest, path in (line.split(maxsplit=1) for line in lines)}


def test_vendored_files_are_the_tasks_byte_for_byte():
    sums = _sums()
    assert "LICENSE" in sums and "src/metrics/poisson/script.py" in sums
    for path, digest in sums.items():
        assert hashlib.sha256((OP.TASK / path).read_bytes()).hexdigest() == digest, path
    present = {p.relative_to(OP.TASK).as_posix() for p in OP.TASK.rglob("*") if p.is_file()}
    assert present - LISTED == set(sums), "a file in task_denoising/ is not in SHA256SUMS"
    assert OP.TASK_COMMIT in (OP.TASK / "README.md").read_text()
    assert (OP.TASK / "LICENSE").read_text().startswith("MIT License")


def test_substitution_replaces_the_viash_block_and_nothing_else():
    source = (OP.TASK / "src/control_methods/no_denoising/script.py").read_text()
    par, meta = {"input_train": "in.h5ad", "output": "out.h5ad", "t": 3, "x": None}, {"name": "m"}
    new = OP.substitute(source, par, meta)
    head, _, rest = source.partition("## VIASH START\n")
    _, _, tail = rest.partition("## VIASH END\n")
    assert new.startswith(head + "## VIASH START\n") and new.endswith("## VIASH END\n" + tail)
    block = new[len(head + "## VIASH START\n"):-len("## VIASH END\n" + tail)]
    scope: dict = {}
    exec(block, scope)
    assert scope["par"] == par and scope["meta"] == meta
    assert "resources_test" not in new  # their example paths are gone
    with pytest.raises(ValueError, match="VIASH START"):
        OP.substitute("print(1)\n", par, meta)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """pbmc_small (tests/data) in the task's common format, split by their process_dataset,
    run here in this environment (it needs numpy and anndata only)."""
    work = tmp_path_factory.mktemp("openproblems")
    a = ad.read_h5ad(PBMC_SMALL)
    ds = D.Dataset("pbmc_small", sp.csr_matrix(a.X, dtype=np.float32), np.asarray(a.var_names),
                   None)
    OP.write_common_dataset(ds, work / "dataset.h5ad")
    paths = {k: str(work / f"{k}.h5ad") for k in ("train", "test")}
    rec = OP.execute(OP.Component("process_dataset",
                                  OP.TASK / "src/data_processors/process_dataset", venv=None),
                     {"input": str(work / "dataset.h5ad"), "output_train": paths["train"],
                      "output_test": paths["test"], "train_frac": 0.9, "seed": 0},
                     work / "process_dataset", RUN)
    assert rec["status"] == "ok", rec.get("log_tail")
    return work, ds, paths


def test_their_process_dataset_splits_the_molecules(split):
    _, ds, paths = split
    train, test = ad.read_h5ad(paths["train"]), ad.read_h5ad(paths["test"])
    assert train.uns["dataset_id"] == "pbmc_small"
    assert test.uns["dataset_organism"] == "homo_sapiens"
    genes = np.isin(ds.genes, train.var_names)
    total = (train.layers["counts"] + test.layers["counts"]).toarray()
    assert np.array_equal(total, ds.counts[:, genes].toarray())
    assert test.uns["train_sum"] == train.layers["counts"].sum()
    assert 0.85 < train.layers["counts"].sum() / total.sum() < 0.95


def _run(comp, split, **par):
    work, _, paths = split
    out = work / f"{comp.method_id}.h5ad"
    rec = OP.execute(comp, {"input_train": paths["train"], "output": str(out), **par},
                     work / comp.method_id, RUN)
    assert rec["status"] == "ok", rec.get("log_tail")
    assert rec["wall_seconds"] > 0 and rec["peak_rss_mb"] > 0
    return out, rec


def test_poisson_both_ways_from_the_files(split):
    """no_denoising (their control, run here): the loss with the arguments in order and as
    their script calls it, against the dense formulas."""
    comp = OP.Component("no_denoising", OP.TASK / "src/control_methods/no_denoising", venv=None)
    out, rec = _run(comp, split)
    # its own peak (anndata only), not this process's (which holds torch) carried over the fork
    assert rec["peak_rss_mb"] < resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    _, _, paths = split
    test = ad.read_h5ad(paths["test"])
    y = test.layers["counts"].toarray().astype(np.float64)
    pred = ad.read_h5ad(out).layers["denoised"].toarray() * y.sum() / test.uns["train_sum"]
    scores = OP.poisson_scores(Path(paths["test"]), out)
    assert np.isclose(scores["poisson_in_order"], (pred - y * np.log(pred + 1e-6)).mean())
    assert np.isclose(scores["poisson_swapped_recomputed"], (y - pred * np.log(y + 1e-6)).mean())
    assert scores["poisson_in_order"] != pytest.approx(scores["poisson_swapped_recomputed"])


def test_zipo_component_writes_counts_like_denoised_layer(split):
    comp = next(c for c in OP.components(["zipo_lognorm"]))
    out, _ = _run(comp, split, max_epochs=2, seed=0, num_threads=1)
    _, _, paths = split
    train, pred = ad.read_h5ad(paths["train"]), ad.read_h5ad(out)
    assert pred.uns["method_id"] == "zipo_lognorm" and pred.uns["dataset_id"] == "pbmc_small"
    assert list(pred.obs_names) == list(train.obs_names)
    assert list(pred.var_names) == list(train.var_names)
    d = np.asarray(pred.layers["denoised"])
    assert d.shape == train.shape and np.all(np.isfinite(d)) and d.min() >= 0
    # counts-like, from E[log1p(1e4 X / l)] < log1p(1e4 E[X] / l): each cell sums to less than
    # its library (far less at pbmc_small's 40-800 UMIs a cell, where most rates are < 1)
    library = np.asarray(train.layers["counts"].sum(axis=1)).ravel()
    assert np.all(d.sum(axis=1) < library) and np.all(d.sum(axis=1) > 0)


@pytest.mark.skipif(not venvs.ready(OP.PEER),
                    reason="their mse and poisson scripts need scanpy and scprep, in the peer "
                           "venv benchmarks/.venvs/openproblems (python -m benchmarks.openproblems "
                           "--setup creates it); missing here")
def test_their_metrics_match_the_scores_computed_here(split):
    work, _, paths = split
    comp = OP.Component("perfect_denoising", OP.TASK / "src/control_methods/perfect_denoising",
                        control=True)
    out, _ = _run(comp, split, input_test=paths["test"])
    values = {}
    for metric in ("mse", "poisson"):
        score = work / f"{metric}.h5ad"
        rec = OP.execute(OP.Component(metric, OP.TASK / "src/metrics" / metric),
                         {"input_test": paths["test"], "input_prediction": str(out),
                          "output": str(score)}, work / metric, RUN)
        assert rec["status"] == "ok", rec.get("log_tail")
        values[metric] = OP.metric_value(score)
    assert values["mse"] == pytest.approx(0.0, abs=1e-12)  # the test counts themselves
    scores = OP.poisson_scores(Path(paths["test"]), out)
    assert values["poisson"] == pytest.approx(scores["poisson_swapped_recomputed"], rel=1e-9)
