"""Cell Ranger's outputs read as they come (zipo.data.tenx): matrix folders and .h5 files of
Cell Ranger 2 and 3, written here from pbmc_small the way Cell Ranger lays them out."""

from __future__ import annotations

import gzip
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp

import zipo
from zipo.cli import main
from zipo.data.atlas import read_cells

ANTIBODY = "CD3_TotalSeqB"


def _features(adata, antibody: bool):
    ids = [f"ENSG{i:011d}" for i in range(adata.n_vars)]
    names = list(adata.var_names)
    names[1] = names[0]  # a symbol two genes share, as in real references
    types = ["Gene Expression"] * adata.n_vars
    if antibody:
        ids, names, types = ids + [ANTIBODY], names + [ANTIBODY], types + ["Antibody Capture"]
    return ids, names, types


def _genes_x_cells(adata, antibody: bool) -> sp.csc_matrix:
    x = sp.csr_matrix(adata.X, dtype=np.int32)
    if antibody:  # the antibody's counts, which must not reach the model
        x = sp.hstack([x, sp.csr_matrix(np.full((adata.n_obs, 1), 7, np.int32))], format="csr")
    return sp.csc_matrix(x.T)


def write_folder(adata, folder: Path, version: int) -> Path:
    folder.mkdir()
    m = _genes_x_cells(adata, antibody=version == 3)
    ids, names, types = _features(adata, antibody=version == 3)
    suffix = ".gz" if version == 3 else ""
    opener = gzip.open if version == 3 else open
    with opener(folder / f"matrix.mtx{suffix}", "wb") as fh:
        scipy.io.mmwrite(fh, sp.coo_matrix(m), field="integer")
    rows = [f"{i}\t{n}\t{t}" if version == 3 else f"{i}\t{n}" for i, n, t in zip(ids, names, types)]
    with opener(folder / ("features.tsv.gz" if version == 3 else "genes.tsv"), "wt") as fh:
        fh.write("\n".join(rows) + "\n")
    with opener(folder / f"barcodes.tsv{suffix}", "wt") as fh:
        fh.write("\n".join(adata.obs_names) + "\n")
    return folder


def write_h5(adata, path: Path, version: int) -> Path:
    m = _genes_x_cells(adata, antibody=version == 3)
    ids, names, types = _features(adata, antibody=version == 3)
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix" if version == 3 else "GRCh38")
        for key, value in (("data", m.data), ("indices", m.indices), ("indptr", m.indptr),
                           ("shape", np.array(m.shape, dtype=np.int32)),
                           ("barcodes", np.array(adata.obs_names, dtype="S"))):
            g.create_dataset(key, data=value)
        if version == 3:
            for key, value in (("id", ids), ("name", names), ("feature_type", types)):
                g.create_dataset(f"features/{key}", data=np.array(value, dtype="S"))
        else:
            g.create_dataset("genes", data=np.array(ids, dtype="S"))
            g.create_dataset("gene_names", data=np.array(names, dtype="S"))
    return path


WRITERS = {"folder": write_folder, "h5": write_h5}


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("kind", list(WRITERS))
def test_cell_ranger_outputs_read_as_the_anndata(pbmc_small, tmp_path, kind, version):
    path = WRITERS[kind](pbmc_small, tmp_path / ("out" if kind == "folder" else "out.h5"), version)
    adata = read_cells(path)
    assert adata.shape == pbmc_small.shape  # the antibody feature is left out
    assert ANTIBODY not in adata.var_names
    assert list(adata.obs_names) == list(pbmc_small.obs_names)
    # symbols as names, made unique as scanpy does; the IDs kept beside them
    assert adata.var_names[1] == f"{pbmc_small.var_names[0]}-1"
    assert list(adata.var_names[2:]) == list(pbmc_small.var_names[2:])
    assert adata.var["gene_ids"].iloc[3] == "ENSG00000000003"
    assert sp.issparse(adata.X) and adata.X.dtype == np.float32
    assert (adata.X != pbmc_small.X).nnz == 0


def test_zipo_train_and_denoise_take_a_cell_ranger_folder(pbmc_small, tmp_path, capsys):
    x = pbmc_small.X.toarray()
    x[:, 5] = 0  # a gene never detected, as Cell Ranger's matrices have thousands
    pbmc_small.X = sp.csr_matrix(x)
    folder = write_folder(pbmc_small, tmp_path / "filtered_feature_bc_matrix", 3)
    model, out = tmp_path / "model", tmp_path / "denoised.h5ad"
    tiny = ["--max-epochs", "1", "--encoder-dims", "32", "8", "--batch-size", "32", "--quiet"]
    with pytest.warns(UserWarning, match=r"1 of 230 genes have no counts in any cell"):
        assert main(["train", str(folder), "--out", str(model), *tiny]) == 0
    capsys.readouterr()
    with pytest.warns(UserWarning, match=r"1 of the 230 genes denoised are not in the model"):
        assert main(["denoise", str(model), str(folder), "--out", str(out)]) == 0
    # every gene of the data is written (the undetected one as 0), and the summary says so
    assert f"Denoised 80 cells x {pbmc_small.n_vars} genes into" in capsys.readouterr().out
    import anndata as ad

    denoised = ad.read_h5ad(out)
    assert denoised.shape == pbmc_small.shape
    assert zipo.ZiPo.load(model).var_names.size == pbmc_small.n_vars - 1


def test_not_a_matrix_names_what_is_read(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("x", data=np.arange(3))
    with pytest.raises(ValueError, match=r"could not be read as an \.h5ad file.*Cell Ranger's "
                                         r"matrix folders and \.h5 files"):
        read_cells(other)
    folder = tmp_path / "partial"
    folder.mkdir()
    (folder / "matrix.mtx").write_text("%%MatrixMarket matrix coordinate integer general\n1 1 0\n")
    with pytest.raises(ValueError, match=r"looks like a Cell Ranger matrix folder but has no "
                                         r"features\.tsv\.gz or"):
        read_cells(folder)
