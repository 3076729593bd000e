"""Atlases as they come: a .zarr store with its counts on disk, and several files with the same
genes read as one dataset (zipo.data.atlas), train as the same data in memory does, read only
the cells a batch asks for, and are refused with the fix when their genes differ."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from conftest import small_model

import zipo
from zipo import cli
from zipo.data.atlas import ConcatenatedRows, read_cells
from zipo.data.counts import CountMatrix
from zipo.data.loader import CellBatches

# pbmc_small's 80 cells in three files of 30, 25 and 25 cells
SPLITS = [(0, 30), (30, 55), (55, 80)]
# A plain permutation (shuffle_chunk=1) draws the same batches from any storage.
OPTIONS = dict(shuffle_chunk=1, max_epochs=2, seed=3, device="cpu")


@pytest.fixture(autouse=True)
def _quiet_zarr_format_warning():
    with warnings.catch_warnings():
        # anndata 0.12 announces its next default zarr format on every write_zarr
        warnings.filterwarnings("ignore", message="Writing zarr v2", category=UserWarning)
        yield


@pytest.fixture
def atlas_files(pbmc_small, tmp_path):
    """pbmc_small as one .zarr store and as three .h5ad files (the last also as .zarr)."""
    pbmc_small.write_zarr(tmp_path / "all.zarr")
    parts = []
    for k, (lo, hi) in enumerate(SPLITS):
        parts.append(tmp_path / f"part{k}.h5ad")
        pbmc_small[lo:hi].write_h5ad(parts[-1])
    pbmc_small[SPLITS[-1][0]:].write_zarr(tmp_path / "part2.zarr")
    return {"zarr": tmp_path / "all.zarr", "h5ad": parts,
            "mixed": [parts[0], pbmc_small[30:55].copy(), tmp_path / "part2.zarr"]}


@pytest.mark.parametrize("source", ["zarr", "h5ad", "mixed"])
def test_zarr_and_collections_train_as_the_data_in_memory(pbmc_small, atlas_files, source):
    memory = small_model(pbmc_small, **OPTIONS).train()
    model = small_model(atlas_files[source] if source == "zarr" else atlas_files[source],
                        **OPTIONS).train()
    X = model.adata.X
    assert isinstance(X, ad.abc.CSRDataset) and not sp.issparse(X)  # stayed on disk
    assert model.adata.n_obs == 80
    np.testing.assert_array_equal(model.adata.obs_names, pbmc_small.obs_names)
    for col in ("train_loss", "validation_loss"):
        np.testing.assert_allclose(model.history[col], memory.history[col], rtol=1e-6)
    for name, value in memory.network.state_dict().items():
        torch.testing.assert_close(model.network.state_dict()[name], value, msg=name)
    # and it denoises as the model trained in memory does
    np.testing.assert_allclose(model.get_latent(), memory.get_latent(pbmc_small), rtol=1e-5,
                               atol=1e-6)


def test_collection_reads_only_the_cells_asked_for(pbmc_small):
    """Every read goes to the file holding the cells, for those cells only."""
    reads = []

    class Recorded:
        def __init__(self, k, matrix):
            self.k, self.matrix, self.shape, self.dtype = k, matrix, matrix.shape, matrix.dtype

        def __getitem__(self, rows):
            if isinstance(rows, slice):
                reads.append((self.k, rows.stop - rows.start))
            else:  # the sorted rows of a batch, in one read
                assert np.all(np.diff(rows) > 0)
                reads.append((self.k, len(rows)))
            return self.matrix[rows]

    dense = pbmc_small.X.toarray()
    rows = ConcatenatedRows([Recorded(k, pbmc_small.X[lo:hi]) for k, (lo, hi) in enumerate(SPLITS)])
    assert rows.shape == pbmc_small.shape and list(rows.starts) == [0, 30, 55]
    np.testing.assert_array_equal(rows[25:40].toarray(), dense[25:40])
    assert reads == [(0, 5), (1, 10)]  # one read in each file the range falls in
    reads.clear()
    counts = CountMatrix(ad.AnnData(X=rows, obs=pbmc_small.obs, var=pbmc_small.var))
    assert counts.on_disk
    idx = np.array([70, 3, 4, 5, 31, 29, 28])
    np.testing.assert_array_equal(counts.rows(idx), dense[idx])
    assert sorted(reads) == [(0, 5), (1, 1), (2, 1)]  # one read in each file, its rows only
    assert sum(n for _, n in reads) == len(idx)


def test_concatenated_rows_index_as_a_sparse_matrix(pbmc_small):
    X = pbmc_small.X
    rows = ConcatenatedRows([X[lo:hi] for lo, hi in SPLITS[:2]] + [X[55:].toarray()])
    dense = X.toarray()

    def expected(index):
        rows, cols = index if isinstance(index, tuple) else (index, slice(None))
        return dense[np.arange(80)[rows]][:, cols]

    for index in (slice(None), slice(10, 70, 3), np.array([79, 0, 30, 30, -1]),
                  np.arange(80) % 3 == 0, (slice(20, 60), slice(5, 9)),
                  (np.array([56, 2]), np.array([4, 0, 229]))):
        got = rows[index]
        assert sp.isspmatrix_csr(got) and got.dtype == X.dtype
        np.testing.assert_array_equal(got.toarray(), expected(index))
    np.testing.assert_array_equal(rows.to_memory().toarray(), dense)
    assert rows[40:40].shape == (0, X.shape[1])
    # an AnnData holds it as X; a view reads its cells
    adata = ad.AnnData(X=rows, obs=pbmc_small.obs, var=pbmc_small.var)
    np.testing.assert_array_equal(adata[[3, 60]].X.toarray(), dense[[3, 60]])


def test_shuffled_chunks_never_cross_files(pbmc_small, atlas_files):
    collection = read_cells(atlas_files["h5ad"])
    counts = CountMatrix(collection)
    indices = np.delete(np.arange(80), [1, 29, 30, 54])  # a training split
    cov = np.zeros((80, 0), dtype=np.float32)
    batches = CellBatches(counts, cov, indices, 16, shuffle=True, rng=np.random.default_rng(0),
                          chunk_size=8, file_starts=counts.source.starts)
    bounds = batches.chunk_bounds()
    file_of = np.searchsorted([30, 55], indices, side="right")
    for a, b in zip(bounds[:-1], bounds[1:]):
        assert 0 < b - a <= 8 and len(set(file_of[a:b])) == 1
    order = batches.order()
    assert sorted(order) == list(indices)
    # without files the chunks are the plain ones: every 8 cells
    plain = CellBatches(counts, cov, indices, 16, shuffle=True, rng=np.random.default_rng(0),
                        chunk_size=8)
    np.testing.assert_array_equal(plain.chunk_bounds(), [*range(0, 76, 8), 76])
    # training takes the files from the counts
    model = small_model(atlas_files["h5ad"], max_epochs=1, shuffle_chunk=8, seed=0)
    model.train()
    assert np.isfinite(model.history["train_loss"]).all()


def test_collection_obs_and_label(pbmc_small, atlas_files, tmp_path):
    extra = pbmc_small[30:55].copy()
    extra.obs["only_here"] = 1.0
    extra.obs["groups"] = extra.obs["groups"].cat.rename_categories({"g1": "gX"})
    collection = read_cells([atlas_files["h5ad"][0], extra, atlas_files["h5ad"][2]], label="file")
    assert "only_here" not in collection.obs  # the columns every member has
    groups = collection.obs["groups"]
    assert isinstance(groups.dtype, pd.CategoricalDtype)
    assert set(groups.cat.categories) == {"g1", "g2", "gX"}
    np.testing.assert_array_equal(groups.astype(str)[:30], pbmc_small.obs["groups"].astype(str)[:30])
    assert collection.obs["file"].value_counts().to_dict() == {"part0.h5ad": 30, "1": 25,
                                                               "part2.h5ad": 25}
    # the label is a covariate like any other
    model = small_model(collection, covariates=["file"], max_epochs=1)
    assert model.covariate_encoder.width == 3
    # all in memory: anndata.concat, an ordinary AnnData
    in_memory = read_cells(atlas_files["h5ad"], backed=False)
    assert sp.issparse(in_memory.X)
    np.testing.assert_array_equal(in_memory.X.toarray(), pbmc_small.X.toarray())


def test_collections_with_other_genes_are_refused_with_the_fix(pbmc_small, atlas_files):
    reordered = pbmc_small[:20, pbmc_small.var_names[::-1]].copy()
    with pytest.raises(ValueError, match=r"1 does not have the genes of part0.h5ad: the same "
                                         r"genes in another order.*same order in every file"):
        zipo.ZiPo([atlas_files["h5ad"][0], reordered])
    fewer = pbmc_small[:20, 5:].copy()
    with pytest.raises(ValueError, match=r"5 of part0.h5ad's genes are missing \(.*adata\[:, "
                                         r"genes\].*anndata.concat"):
        read_cells([atlas_files["h5ad"][0], fewer])
    with pytest.raises(ValueError, match="does not exist"):
        read_cells([atlas_files["h5ad"][0], "no_such.h5ad"])


def test_unreadable_input_is_refused(tmp_path):
    bad = tmp_path / "notes.h5ad"
    bad.write_text("not an AnnData")
    with pytest.raises(ValueError, match=r"could not be read as an .h5ad file"):
        read_cells(bad)
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(ValueError, match=r"could not be read as an .zarr store"):
        read_cells(tmp_path / "empty.zarr")


def test_cli_trains_on_several_files_and_streams_their_denoised_counts(pbmc_small, atlas_files,
                                                                       tmp_path, capsys):
    parts = [str(p) for p in atlas_files["h5ad"][:2]] + [str(tmp_path / "part2.zarr")]
    out = tmp_path / "model"
    assert cli.main(["train", *parts, "--backed", "--out", str(out), "--max-epochs", "2",
                     "--encoder-dims", "16", "8", "--seed", "3", "--quiet",
                     "--set", "train.shuffle_chunk=1", "--device", "cpu"]) == 0
    assert "on 80 cells x 230 genes" in capsys.readouterr().out
    model = zipo.ZiPo.load(out)
    memory = zipo.ZiPo(pbmc_small, encoder_dims=[16, 8], max_epochs=2, seed=3, verbose=False,
                       shuffle_chunk=1, device="cpu").train()
    np.testing.assert_allclose(model.history["train_loss"], memory.history["train_loss"],
                               rtol=1e-6)
    streamed = tmp_path / "denoised.h5ad"
    assert cli.main(["denoise", str(out), *parts, "--stream", "--out", str(streamed)]) == 0
    in_memory = tmp_path / "denoised_in_memory.h5ad"
    assert cli.main(["denoise", str(out), *parts, "--out", str(in_memory)]) == 0
    a, b = ad.read_h5ad(streamed), ad.read_h5ad(in_memory)
    assert a.n_obs == b.n_obs == 80
    np.testing.assert_array_equal(a.obs_names, pbmc_small.obs_names)
    np.testing.assert_allclose(np.asarray(a.X), b.layers["zipo_denoised"], rtol=1e-5)
    np.testing.assert_allclose(a.obsm["X_zipo"], memory.get_latent(pbmc_small), rtol=1e-4,
                               atol=1e-5)
