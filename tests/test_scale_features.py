"""Features for large data: the sparse first layer, backed (.h5ad on disk) training with shuffled
chunks, the prefetching loader, streamed denoising to an .h5ad file, and their CLI flags."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import zipo
from zipo.cli import main
from zipo.config import ModelConfig
from zipo.data.counts import CountMatrix
from zipo.data.loader import CellBatches, csr_to_torch
from zipo.nn.network import ZiPoNetwork
from zipo.nn.sparse import sparse_linear

from benchmarks.scale import choose_first_layer

from conftest import small_model

LOSSES = ["train_loss", "train_nll", "validation_loss", "validation_nll"]
LOADER = "zipo-batch-loader"


def _random_counts(n_cells, n_genes, density, seed=0, empty_row=None) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    x = sp.random(n_cells, n_genes, density=density, format="csr", random_state=rng,
                  data_rvs=lambda k: rng.integers(1, 30, k)).astype(np.float32)
    if empty_row is not None:
        x = x.tolil()
        x[empty_row, :] = 0
        x = x.tocsr()
        x.eliminate_zeros()
    return x


def _within(seconds: float, fn):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it takes longer."""
    result: dict = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as e:  # re-raised in the test's thread
            result["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"did not finish within {seconds} s (hang?)"
    if "error" in result:
        raise result["error"]
    return result.get("value")


def _loader_threads_gone(timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(t.name == LOADER and t.is_alive() for t in threading.enumerate()):
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def pbmc_small_file(pbmc_small, tmp_path):
    path = tmp_path / "pbmc_small.h5ad"
    pbmc_small.write_h5ad(path)
    return path


# --------------------------------------------------------------------------- sparse first layer
def test_sparse_linear_gradients_are_exact():
    """The hand-written backward of the sparse product agrees with finite differences."""
    torch.manual_seed(0)
    x = _random_counts(7, 12, 0.3, seed=1, empty_row=3).astype(np.float64)
    xs = csr_to_torch(x)
    w = torch.randn(5, 12, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(sparse_linear(xs, w, b),
                               torch.from_numpy(x.toarray()) @ w.t() + b)
    assert torch.autograd.gradcheck(lambda w_, b_: sparse_linear(xs, w_, b_), (w, b))
    assert torch.autograd.gradcheck(lambda w_: sparse_linear(xs, w_, None), (w,))


@pytest.mark.parametrize("transform", ["log1p", "normalize_log1p"])
@pytest.mark.parametrize("training", [True, False])
def test_sparse_encoder_equals_dense(transform, training):
    torch.manual_seed(0)
    net = ZiPoNetwork(300, 0, ModelConfig(encoder_dims=[32, 8], input_transform=transform))
    net.target_library.fill_(57.0)
    net.train(training)
    x = _random_counts(40, 300, 0.05, seed=2, empty_row=7).tolil()
    x[11, :] = 0
    x[11, 5] = 1  # a library of 1 (the normalisation's floor)
    x = x.tocsr()
    dense = torch.from_numpy(x.toarray())
    sparse = csr_to_torch(x)
    assert sparse.layout == torch.sparse_csr

    # the input transform keeps zeros zero and agrees on the non-zeros
    torch.testing.assert_close(net.transform_input(sparse).to_dense(), net.transform_input(dense))

    weights = torch.randn(40, 8, generator=torch.Generator().manual_seed(3))
    grads = {}
    for name, batch in (("dense", dense), ("sparse", sparse)):
        net.zero_grad(set_to_none=True)
        u = net.encode(batch)
        (u * weights).sum().backward()
        grads[name] = (u.detach(), {k: p.grad.clone() for k, p in net.named_parameters()
                                    if p.grad is not None})
    u_d, g_d = grads["dense"]
    u_s, g_s = grads["sparse"]
    torch.testing.assert_close(u_s, u_d, rtol=1e-5, atol=1e-5)
    assert g_s.keys() == g_d.keys() and "encoder.0.0.weight" in g_s and "encoder.0.0.bias" in g_s
    # Batch norm in training mode makes the first layer's bias gradient zero up to rounding,
    # so tolerances are scaled to the largest gradient of all, not each parameter's own.
    scale = max(float(g.abs().max()) for g in g_d.values())
    for k in g_d:
        torch.testing.assert_close(g_s[k], g_d[k], rtol=1e-4, atol=1e-5 * scale, msg=k)
    # the first layer's gradient is not trivially zero
    assert g_s["encoder.0.0.weight"].abs().max() > 0


def test_training_sparse_first_layer_matches_dense(pbmc_small):
    runs = {}
    for mode in ("sparse", "dense"):
        adata = pbmc_small.copy()
        model = small_model(adata, first_layer=mode, max_epochs=3, prefetch=0, seed=4).train()
        assert model.first_layer_mode == mode
        runs[mode] = (model, model.denoise(adata, zero_inflation=True, copy=True))
    (ms, ds), (md, dd) = runs["sparse"], runs["dense"]
    np.testing.assert_allclose(ms.history[LOSSES], md.history[LOSSES], rtol=1e-4)
    for key in ("zipo_denoised", "zipo_zero_prob"):
        np.testing.assert_allclose(ds.layers[key], dd.layers[key], rtol=2e-3, atol=1e-4)
    np.testing.assert_allclose(ds.obsm["X_zipo"], dd.obsm["X_zipo"], rtol=2e-3, atol=2e-4)

    # one model, read sparsely or densely at inference, gives the same numbers
    assert ms.cell_batches(pbmc_small).sparse and not md.cell_batches(pbmc_small).sparse
    ms.config.train.first_layer = "dense"
    again = ms.denoise(pbmc_small.copy(), zero_inflation=True, copy=True)
    np.testing.assert_allclose(again.layers["zipo_denoised"], ds.layers["zipo_denoised"],
                               rtol=1e-5, atol=1e-6)


def _very_sparse_adata(n_cells=64, n_genes=2000) -> ad.AnnData:
    """Every gene counted in exactly one cell (density 1/n_cells, under 2%)."""
    rng = np.random.default_rng(0)
    rows = np.arange(n_genes) % n_cells
    x = sp.csr_matrix((rng.integers(1, 6, n_genes).astype(np.float32),
                       (rows, np.arange(n_genes))), shape=(n_cells, n_genes))
    return ad.AnnData(x, obs=pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)]),
                      var=pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)]))


def test_auto_first_layer_follows_density(pbmc_small):
    sparse_data = _very_sparse_adata()
    density = sparse_data.X.nnz / np.prod(sparse_data.shape)
    assert density < zipo.ZiPo.SPARSE_BELOW_DENSITY
    model = small_model(sparse_data, encoder_dims=[16, 4], max_epochs=1, prefetch=0).train()
    assert model.config.train.first_layer == "auto" and model.first_layer_mode == "sparse"
    assert np.isfinite(model.history[LOSSES].to_numpy()).all()

    assert pbmc_small.X.nnz / np.prod(pbmc_small.shape) > zipo.ZiPo.SPARSE_BELOW_DENSITY
    model = small_model(pbmc_small, max_epochs=1, prefetch=0).train()
    assert model.first_layer_mode == "dense"


def test_choose_first_layer_times_both_modes():
    torch.manual_seed(0)
    net = ZiPoNetwork(300, 0, ModelConfig(encoder_dims=[32, 8]))
    batch = csr_to_torch(_random_counts(64, 300, 0.05, seed=5))
    mode, seconds = choose_first_layer(net, batch, repeats=2)
    assert mode in {"sparse", "dense"}
    assert set(seconds) == {"sparse", "dense"}
    assert all(np.isfinite(s) and s > 0 for s in seconds.values())
    assert mode == min(seconds, key=seconds.get)
    # timing took gradients with autograd.grad: the parameters' .grad are left alone
    assert net.first_layer.weight.grad is None


# --------------------------------------------------------------------------- backed training
def _fake_backed(matrix: np.ndarray):
    """A CountMatrix over an on-disk-like source that records each slice it is asked for."""
    reads = []

    class Source:
        dtype, shape = matrix.dtype, matrix.shape

        def __getitem__(self, key):
            reads.append(key)
            return matrix[key]

    fake = SimpleNamespace(X=Source(), n_obs=matrix.shape[0], n_vars=matrix.shape[1], layers={})
    return CountMatrix(fake), reads


def test_backed_reads_are_runs_put_back_in_order():
    matrix = np.arange(40 * 6, dtype=np.float32).reshape(40, 6)
    counts, reads = _fake_backed(matrix)
    assert counts.on_disk
    idx = np.array([12, 13, 14, 15, 3, 4, 5, 30, 22, 21, 20, 39])  # unsorted runs, no duplicates
    np.testing.assert_array_equal(counts.rows(idx), matrix[idx])
    # one contiguous read per run of consecutive cells: 3-5, 12-15, 20-22, 30, 39
    assert reads == [slice(3, 6), slice(12, 16), slice(20, 23), slice(30, 31), slice(39, 40)]
    reads.clear()
    block = counts.rows_csr(idx)
    np.testing.assert_array_equal(block.toarray(), matrix[idx])
    assert block.dtype == np.float32 and block.has_sorted_indices


@pytest.mark.parametrize("storage", ["csr", "dense"])
def test_backed_rows_equal_in_memory_rows(pbmc_small, tmp_path, storage):
    if storage == "dense":
        pbmc_small.X = pbmc_small.X.toarray()
    path = tmp_path / "x.h5ad"
    pbmc_small.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        on_disk, in_memory = CountMatrix(backed), CountMatrix(pbmc_small)
        assert on_disk.on_disk and not in_memory.on_disk
        idx = np.random.default_rng(0).permutation(80)[:37]
        idx = np.concatenate([idx[idx > 40], [40, 39, 38], idx[idx < 38]])  # runs, reversed
        assert len(set(idx)) == len(idx)
        want = pbmc_small.X[idx]
        want = want.toarray() if sp.issparse(want) else want
        got = on_disk.rows(idx)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(in_memory.rows(idx), want)
        csr = on_disk.rows_csr(idx)
        assert sp.issparse(csr) and csr.format == "csr" and csr.dtype == np.float32
        assert csr.has_sorted_indices
        np.testing.assert_array_equal(csr.toarray(), want)
    finally:
        backed.file.close()


def test_backed_empty_share_reads_nothing(pbmc_small_file):
    """With 2 processes, a last validation batch of 1 cell leaves one process an empty share."""
    backed = ad.read_h5ad(pbmc_small_file, backed="r")
    try:
        counts = CountMatrix(backed)
        assert counts.rows(np.array([], dtype=int)).shape == (0, 230)
        assert counts.rows_csr(np.array([], dtype=int)).shape == (0, 230)
        b = CellBatches(counts, np.zeros((80, 0), np.float32), np.arange(73, 80), 6, shard=(0, 2))
        assert [len(idx) for _, _, idx, _ in b.batches()] == [3, 0]
    finally:
        backed.file.close()


@pytest.mark.parametrize("prefetch", [0, 2])
def test_backed_training_equals_in_memory(pbmc_small, pbmc_small_file, prefetch):
    options = dict(shuffle_chunk=1, max_epochs=3, seed=2)
    memory = small_model(pbmc_small.copy(), prefetch=0, **options).train()
    backed = ad.read_h5ad(pbmc_small_file, backed="r")
    try:
        model = small_model(backed, prefetch=prefetch, **options).train()
        assert backed.isbacked
        np.testing.assert_allclose(model.history[LOSSES], memory.history[LOSSES], rtol=1e-6)
        assert (model.history["data_wait_seconds"] >= 0).all()
        for (k, a), b in zip(model.network.state_dict().items(),
                             memory.network.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)

        # chunked shuffling (the default on disk is batch_size / 8) visits other orders
        chunked = small_model(backed, prefetch=prefetch, **{**options, "shuffle_chunk": 8})
        chunked.train()
        assert np.isfinite(chunked.history[LOSSES].to_numpy()).all()
        assert not np.allclose(chunked.history["train_loss"], memory.history["train_loss"])
    finally:
        backed.file.close()


def _chunk_numbers(order: np.ndarray, indices: np.ndarray, chunk: int) -> list[int]:
    """Which chunk (indices[k*chunk:(k+1)*chunk]) each stretch of ``order`` is; fails unless
    ``order`` is made of whole chunks."""
    ks, i = [], 0
    while i < len(order):
        pos = int(np.searchsorted(indices, order[i]))
        assert indices[pos] == order[i] and pos % chunk == 0, "a chunk was split"
        block = indices[pos:pos + chunk]
        np.testing.assert_array_equal(order[i:i + len(block)], block)
        ks.append(pos // chunk)
        i += len(block)
    return ks


def test_chunked_order_is_a_permutation_of_whole_chunks(pbmc_small):
    counts = CountMatrix(pbmc_small)
    cov = np.zeros((80, 0), dtype=np.float32)
    indices = np.sort(np.random.default_rng(1).choice(80, 70, replace=False))
    batches = CellBatches(counts, cov, indices, 16, shuffle=True,
                          rng=np.random.default_rng(0), chunk_size=8)
    orders = [batches.order() for _ in range(3)]
    n_chunks = -(-70 // 8)
    for order in orders:
        assert len(order) == len(indices)
        np.testing.assert_array_equal(np.sort(order), indices)
        assert sorted(_chunk_numbers(order, indices, 8)) == list(range(n_chunks))
    assert not all(np.array_equal(orders[0], o) for o in orders[1:])  # reshuffled per pass

    # an epoch's batches visit every cell once, in that order
    rng_state = batches.rng.bit_generator.state
    expected = batches.order()
    batches.rng.bit_generator.state = rng_state
    seen = np.concatenate([idx for _, _, idx in batches])
    np.testing.assert_array_equal(seen, expected)

    # chunk_size=1 is a plain permutation
    plain = CellBatches(counts, cov, indices, 16, shuffle=True, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(plain.order(), np.random.default_rng(0).permutation(indices))
    # no shuffling: the indices as given
    fixed = CellBatches(counts, cov, indices, 16, chunk_size=8)
    np.testing.assert_array_equal(fixed.order(), indices)


# --------------------------------------------------------------------------- prefetching
def _epoch(batches: CellBatches) -> list:
    return [(x.to_dense() if x.layout == torch.sparse_csr else x, c.clone(), idx.copy(), n)
            for x, c, idx, n in batches.batches()]


@pytest.mark.parametrize("sparse", [False, True])
def test_prefetch_yields_the_same_batches(pbmc_small, sparse):
    counts = CountMatrix(pbmc_small)
    cov = np.random.default_rng(0).normal(size=(80, 3)).astype(np.float32)
    made = {}
    for prefetch in (0, 2):
        b = CellBatches(counts, cov, np.arange(5, 80), 16, shuffle=True,
                        rng=np.random.default_rng(7), sparse=sparse, prefetch=prefetch,
                        chunk_size=3)
        made[prefetch] = (_within(30, lambda: _epoch(b) + _epoch(b)), b.wait_seconds)  # 2 passes
    (plain, wait0), (ahead, wait2) = made[0], made[2]
    assert len(plain) == len(ahead) == 10
    for (x0, c0, i0, n0), (x2, c2, i2, n2) in zip(plain, ahead):
        np.testing.assert_array_equal(i0, i2)
        assert n0 == n2 == len(i0)
        torch.testing.assert_close(x2, x0, rtol=0, atol=0)
        torch.testing.assert_close(c2, c0, rtol=0, atol=0)
        torch.testing.assert_close(x0, torch.from_numpy(pbmc_small.X[i0].toarray()))
    assert wait0 > 0 and wait2 >= 0
    assert _loader_threads_gone()


def test_a_pass_of_one_batch_starts_no_loader_thread(pbmc_small, monkeypatch):
    # nothing to overlap the read with: the thread would only cost its start and hand-over
    started = []
    start = threading.Thread.start

    def recording_start(thread):
        started.append(thread.name)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", recording_start)
    counts, cov = CountMatrix(pbmc_small), np.zeros((80, 0), np.float32)
    one = _epoch(CellBatches(counts, cov, np.arange(80), 128, prefetch=2))
    assert len(one) == 1 and "zipo-batch-loader" not in started
    torch.testing.assert_close(one[0][0], torch.from_numpy(pbmc_small.X.toarray()))
    two = _epoch(CellBatches(counts, cov, np.arange(80), 40, prefetch=2))
    assert len(two) == 2 and started.count("zipo-batch-loader") == 1
    assert _loader_threads_gone()


def test_kept_batches_are_read_once(pbmc_small):
    counts, cov = CountMatrix(pbmc_small), np.zeros((80, 0), np.float32)
    reads, rows = [], counts.rows
    counts.rows = lambda idx: (reads.append(len(idx)), rows(idx))[1]
    b = CellBatches(counts, cov, np.arange(80), 32, prefetch=2, keep_loaded=True)
    gen = b.batches()
    next(gen)
    gen.close()  # a pass left early keeps nothing
    early = len(reads)
    first, second = _epoch(b), _epoch(b)
    assert reads[early:] == [32, 32, 16]  # one whole pass read, the second from memory
    assert len(first) == len(second) == 3
    for (x1, _, i1, _), (x2, _, i2, _) in zip(first, second):
        np.testing.assert_array_equal(i1, i2)
        torch.testing.assert_close(x1, x2, rtol=0, atol=0)
    with pytest.raises(ValueError, match="shuffle=False"):
        CellBatches(counts, cov, np.arange(80), 32, shuffle=True, rng=np.random.default_rng(0),
                    keep_loaded=True)


def test_validation_batches_stay_loaded_when_small(pbmc_small, monkeypatch):
    from zipo.config import TrainConfig
    from zipo.data import loader

    counts, cov = CountMatrix(pbmc_small), np.zeros((80, 0), np.float32)
    made = lambda: loader.training_batches(  # noqa: E731
        counts, cov, np.arange(70), np.arange(70, 80), TrainConfig(), np.random.default_rng(0),
        torch.device("cpu"), sparse=False, shard=(0, 1))
    train, val = made()
    assert val.keep_loaded and not train.keep_loaded  # 10 cells x 230 genes
    monkeypatch.setattr(loader, "KEEP_LOADED_ENTRIES", 10 * 230 - 1)
    assert not made()[1].keep_loaded


def _flaky_counts(pbmc_small, fail_on: int):
    counts = CountMatrix(pbmc_small)
    calls = {"n": 0}
    rows = counts.rows

    def flaky(idx):
        calls["n"] += 1
        if calls["n"] == fail_on:
            raise OSError(f"read {fail_on} failed")
        return rows(idx)

    counts.rows = flaky
    return counts


@pytest.mark.parametrize("fail_on", [1, 2])
def test_prefetch_error_reaches_the_consumer(pbmc_small, fail_on):
    counts = _flaky_counts(pbmc_small, fail_on)
    b = CellBatches(counts, np.zeros((80, 0), np.float32), np.arange(80), 16, prefetch=2)
    got = []

    def consume():
        for x, _, idx in b:
            got.append(idx)

    with pytest.raises(OSError, match=f"read {fail_on} failed"):
        _within(30, consume)
    assert len(got) == fail_on - 1  # the batches before the failure arrived
    assert _loader_threads_gone()


def test_breaking_out_early_does_not_hang(pbmc_small):
    counts = CountMatrix(pbmc_small)
    cov = np.zeros((80, 0), np.float32)

    def take_one_then_break():
        # prefetch=1 and 10 batches: the loader is left blocked on a full queue
        b = CellBatches(counts, cov, np.arange(80), 8, prefetch=1)
        for x, _, _ in b:
            break
        return x.shape

    assert _within(30, take_one_then_break) == (8, 230)
    assert _loader_threads_gone()

    def close_explicitly():
        gen = CellBatches(counts, cov, np.arange(80), 8, prefetch=2).batches()
        next(gen)
        gen.close()

    _within(30, close_explicitly)
    assert _loader_threads_gone()


def test_training_with_prefetch_records_data_wait(pbmc_small):
    model = small_model(pbmc_small, prefetch=2, max_epochs=2).train()
    assert "data_wait_seconds" in model.history
    waits = model.history["data_wait_seconds"].to_numpy()
    assert np.isfinite(waits).all() and (waits >= 0).all()
    assert (waits <= model.history["seconds"].to_numpy()).all()
    assert _loader_threads_gone()


# --------------------------------------------------------------------------- streamed output
@pytest.fixture(scope="module")
def reference(trained_model, _pbmc_small):
    return trained_model.denoise(_pbmc_small.copy(), zero_inflation=True, copy=True)


def _read(result) -> ad.AnnData:
    """A backed result's file closed and read again in memory."""
    assert result.isbacked
    path = result.filename
    result.file.close()
    return ad.read_h5ad(path)


def test_streamed_result_keeps_the_denoised_counts_on_disk(trained_model, pbmc_small, tmp_path):
    result = trained_model.denoise(pbmc_small, out=tmp_path / "x.h5ad")
    try:
        assert result.isbacked and len(result.layers.keys()) == 0
        assert not isinstance(result.X, np.ndarray)  # an on-disk dataset, read on demand
        assert result.X[:5].shape == (5, pbmc_small.n_vars)
    finally:
        result.file.close()


def test_streamed_denoise_equals_in_memory(trained_model, pbmc_small, reference, tmp_path):
    out = tmp_path / "x.h5ad"
    result = trained_model.denoise(pbmc_small, zero_inflation=True, out=out)
    assert isinstance(result, ad.AnnData) and result.isbacked
    assert "zipo_denoised" not in pbmc_small.layers and "X_zipo" not in pbmc_small.obsm
    got = _read(result)
    assert list(got.obs_names) == list(pbmc_small.obs_names)
    assert list(got.var_names) == list(pbmc_small.var_names)
    pd.testing.assert_frame_equal(got.var, pbmc_small.var, check_names=False)
    assert (got.obs["groups"].astype(str) == pbmc_small.obs["groups"].astype(str)).all()
    assert got.X.dtype == np.float32 and got.layers["zipo_zero_prob"].dtype == np.float32
    np.testing.assert_allclose(got.X, reference.layers["zipo_denoised"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.layers["zipo_zero_prob"], reference.layers["zipo_zero_prob"],
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.obsm["X_zipo"], reference.obsm["X_zipo"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.obs["zipo_library_size"], reference.obs["zipo_library_size"],
                               rtol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.h5ad"]  # no temporary left


def test_streamed_denoise_of_backed_input(trained_model, pbmc_small_file, reference, tmp_path):
    backed = ad.read_h5ad(pbmc_small_file, backed="r")
    try:
        with pytest.raises(ValueError, match="out="):
            trained_model.denoise(backed)
        got = _read(trained_model.denoise(backed, out=tmp_path / "o.h5ad", batch_size=24))
        np.testing.assert_allclose(got.X, reference.layers["zipo_denoised"],
                                   rtol=1e-5, atol=1e-7)
        with pytest.raises(ValueError, match="pass one"):
            trained_model.denoise(backed, out=tmp_path / "p.h5ad", copy=True)
        copied = trained_model.denoise(backed, copy=True)  # in memory, the input stays open
        assert not copied.isbacked and backed.file.is_open
        np.testing.assert_allclose(copied.layers["zipo_denoised"],
                                   reference.layers["zipo_denoised"], rtol=1e-5, atol=1e-7)
    finally:
        backed.file.close()


def test_denoise_gene_subset(trained_model, pbmc_small, reference, tmp_path):
    genes = [pbmc_small.var_names[17], pbmc_small.var_names[3], pbmc_small.var_names[200]]
    cols = [17, 3, 200]
    trained_model.denoise(pbmc_small, genes=genes, zero_inflation=True)
    assert "zipo_denoised" not in pbmc_small.layers
    for key in ("zipo_denoised", "zipo_zero_prob"):
        frame = pbmc_small.obsm[key]
        assert isinstance(frame, pd.DataFrame) and list(frame.columns) == genes
        assert list(frame.index) == list(pbmc_small.obs_names)
        np.testing.assert_allclose(frame.to_numpy(), reference.layers[key][:, cols],
                                   rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(pbmc_small.obsm["X_zipo"], reference.obsm["X_zipo"], rtol=1e-6)

    got = _read(trained_model.denoise(pbmc_small.copy(), genes=genes, out=tmp_path / "g.h5ad"))
    assert list(got.var_names) == genes and got.shape == (80, 3)
    assert list(got.var["gene_symbol"]) == list(pbmc_small.var.loc[genes, "gene_symbol"])
    assert len(got.layers.keys()) == 0
    np.testing.assert_allclose(got.X, reference.layers["zipo_denoised"][:, cols],
                               rtol=1e-5, atol=1e-7)


def test_streamed_denoise_keeps_the_input_gene_order(trained_model, pbmc_small, reference,
                                                     tmp_path):
    order = np.random.default_rng(0).permutation(pbmc_small.n_vars)
    shuffled = pbmc_small[:, order].copy()
    got = _read(trained_model.denoise(shuffled, out=tmp_path / "s.h5ad"))
    assert list(got.var_names) == list(shuffled.var_names)
    np.testing.assert_allclose(got.X, reference.layers["zipo_denoised"][:, order],
                               rtol=1e-5, atol=1e-7)


def test_denoised_false_keeps_latents_and_library_only(trained_model, pbmc_small, reference,
                                                       tmp_path):
    with pytest.raises(ValueError, match="nothing large to stream"):
        trained_model.denoise(pbmc_small, denoised=False, out=tmp_path / "l.h5ad")
    assert list(tmp_path.iterdir()) == []
    trained_model.denoise(pbmc_small, denoised=False)
    assert "zipo_denoised" not in pbmc_small.layers and "zipo_denoised" not in pbmc_small.obsm
    np.testing.assert_allclose(pbmc_small.obsm["X_zipo"], reference.obsm["X_zipo"], rtol=1e-6)
    assert "zipo_library_size" in pbmc_small.obs


def test_existing_output_is_refused_and_untouched(trained_model, pbmc_small, tmp_path):
    out = tmp_path / "x.h5ad"
    out.write_bytes(b"precious")
    with pytest.raises(ValueError, match="already exists"):
        trained_model.denoise(pbmc_small, out=out)
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.h5ad"]
    got = _read(trained_model.denoise(pbmc_small, out=out, overwrite=True))
    assert got.X.shape == pbmc_small.shape


def test_error_mid_stream_leaves_no_file(trained_model, pbmc_small, tmp_path, monkeypatch):
    forward = trained_model.network.forward
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("out of memory, say")
        return forward(*args, **kwargs)

    monkeypatch.setattr(trained_model.network, "forward", failing)
    folder = tmp_path / "outputs"
    folder.mkdir()
    with pytest.raises(RuntimeError, match="out of memory, say"):
        trained_model.denoise(pbmc_small, out=folder / "x.h5ad", batch_size=16, zero_inflation=True)
    assert calls["n"] == 2
    assert list(folder.iterdir()) == []


def test_streamed_output_argument_errors(trained_model, pbmc_small, tmp_path):
    with pytest.raises(ValueError, match=r"must end in \.h5ad"):
        trained_model.denoise(pbmc_small, out=tmp_path / "x.zarr")
    with pytest.raises(ValueError, match="does not exist"):
        trained_model.denoise(pbmc_small, out=tmp_path / "no" / "x.h5ad")
    with pytest.raises(ValueError, match="NOT_A_GENE.*not genes of the model"):
        trained_model.denoise(pbmc_small, genes=["NOT_A_GENE", pbmc_small.var_names[0]])
    with pytest.raises(ValueError, match="more than once"):
        trained_model.denoise(pbmc_small, genes=[pbmc_small.var_names[0]] * 2)
    assert list(tmp_path.iterdir()) == []
    assert "zipo_denoised" not in pbmc_small.obsm and "X_zipo" not in pbmc_small.obsm


# --------------------------------------------------------------------------- command line
def test_cli_backed_train_then_streamed_gene_denoise(pbmc_small, pbmc_small_file, tmp_path,
                                                     capsys):
    model_dir = tmp_path / "model"
    assert main(["train", str(pbmc_small_file), "--backed", "--out", str(model_dir),
                 "--max-epochs", "2", "--encoder-dims", "32", "8", "--batch-size", "32",
                 "--covariates", "groups", "--set", "train.prefetch=2", "--quiet"]) == 0
    assert "Trained 2 epochs" in capsys.readouterr().out
    genes = [str(pbmc_small.var_names[5]), str(pbmc_small.var_names[42])]
    out = tmp_path / "o.h5ad"
    assert main(["denoise", str(model_dir), str(pbmc_small_file), "--out", str(out), "--stream",
                 "--genes", *genes, "--zero-inflation", "--covariate-value", "groups=g2"]) == 0
    assert "into" in capsys.readouterr().out
    got = ad.read_h5ad(out)
    assert list(got.var_names) == genes and got.shape == (80, 2)
    assert got.X.shape == (80, 2)
    assert got.obsm["X_zipo"].shape == (80, 8)
    model = zipo.ZiPo.load(model_dir)
    want = model.denoise(pbmc_small, genes=genes, zero_inflation=True, copy=True,
                         covariate_values={"groups": "g2"})
    np.testing.assert_allclose(got.X, want.obsm["zipo_denoised"].to_numpy(),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.layers["zipo_zero_prob"], want.obsm["zipo_zero_prob"].to_numpy(),
                               rtol=1e-5, atol=1e-7)

    # an existing --out is refused (exit code 2), a missing gene too, and nothing else is written
    assert main(["denoise", str(model_dir), str(pbmc_small_file), "--out", str(out),
                 "--stream"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["denoise", str(model_dir), str(pbmc_small_file), "--out",
                 str(tmp_path / "p.h5ad"), "--stream", "--genes", "NOPE"]) == 2
    assert "NOPE" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "o.h5ad", "pbmc_small.h5ad"]
