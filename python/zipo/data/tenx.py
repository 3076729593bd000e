"""Cell Ranger's count matrices as AnnData: a ``filtered_feature_bc_matrix`` folder
(MatrixMarket, genes x cells, with its features and barcodes) or the ``.h5`` file of the same
name, so that ``zipo train`` and :func:`zipo.data.atlas.read_cells` take what a 10x run writes
without a conversion step.

The counts stay sparse: the genes x cells CSC matrix of the ``.h5`` file is the cells x genes
CSR matrix an AnnData holds, without a copy. As ``scanpy.read_10x_h5`` and ``read_10x_mtx``
do, genes are named by symbol (made unique with ``-1``, ``-2``...; the IDs go to
``var["gene_ids"]``), and only "Gene Expression" features are kept: antibody or CRISPR
capture counts are not counts of genes.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata.utils import make_index_unique

MATRIX_FILES = ("matrix.mtx.gz", "matrix.mtx")
FEATURE_FILES = ("features.tsv.gz", "features.tsv", "genes.tsv.gz", "genes.tsv")
BARCODE_FILES = ("barcodes.tsv.gz", "barcodes.tsv")
GENE_EXPRESSION = "Gene Expression"


def is_10x(path: Path) -> bool:
    """Whether ``path`` is a Cell Ranger matrix folder or ``.h5`` file."""
    if path.is_dir():
        return any((path / name).is_file() for name in MATRIX_FILES)
    return path.suffix == ".h5" and _h5_group(path) is not None


def read_10x(path: Path) -> ad.AnnData:
    """The cells x genes counts of a Cell Ranger matrix folder or ``.h5`` file (float32)."""
    if path.is_dir():
        return _read_folder(path)
    import h5py

    with h5py.File(path, "r") as f:
        g = f[_h5_group(path)]
        n_genes, n_cells = (int(n) for n in g["shape"][:])
        x = sp.csr_matrix((g["data"][:].astype(np.float32), g["indices"][:], g["indptr"][:]),
                          shape=(n_cells, n_genes))
        if "features" in g:  # Cell Ranger 3 and later
            features = {"gene_ids": g["features/id"][:], "name": g["features/name"][:],
                        "feature_types": g["features/feature_type"][:]}
        else:  # Cell Ranger 2
            features = {"gene_ids": g["genes"][:], "name": g["gene_names"][:]}
        barcodes = g["barcodes"][:]
    features = pd.DataFrame({k: _text(v) for k, v in features.items()})
    return _anndata(x, features, _text(barcodes), path)


def _h5_group(path: Path) -> str | None:
    """The group of a Cell Ranger ``.h5`` file holding the matrix (``matrix``, or the genome's
    in Cell Ranger 2); None for any other file."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            for name in ("matrix", *f.keys()):
                if name in f and isinstance(f[name], h5py.Group) and "barcodes" in f[name]:
                    return name
    except OSError:  # not HDF5
        return None
    return None


def _read_folder(path: Path) -> ad.AnnData:
    from scipy.io import mmread

    files = {}
    for kind, names in (("matrix", MATRIX_FILES), ("features", FEATURE_FILES),
                        ("barcodes", BARCODE_FILES)):
        found = [path / n for n in names if (path / n).is_file()]
        if not found:
            raise ValueError(f"{str(path)!r} looks like a Cell Ranger matrix folder but has no "
                             f"{' or '.join(names)}")
        files[kind] = found[0]
    x = sp.csr_matrix(mmread(files["matrix"]).T, dtype=np.float32)  # genes x cells on disk
    table = pd.read_csv(files["features"], sep="\t", header=None, dtype=str)
    columns = ["gene_ids", "name", "feature_types"][:table.shape[1]]
    features = table.iloc[:, :len(columns)].set_axis(columns, axis=1)
    if features.shape[1] == 1:  # symbols only
        features["name"] = features["gene_ids"]
    barcodes = pd.read_csv(files["barcodes"], sep="\t", header=None, dtype=str)[0].to_numpy()
    return _anndata(x, features, barcodes, path)


def _anndata(x: sp.csr_matrix, features: pd.DataFrame, barcodes: np.ndarray,
             path: Path) -> ad.AnnData:
    if x.shape != (len(barcodes), len(features)):
        raise ValueError(f"{str(path)!r}: the matrix is {x.shape[1]} genes x {x.shape[0]} cells, "
                         f"but there are {len(features)} features and {len(barcodes)} barcodes")
    if "feature_types" in features and (features["feature_types"] != GENE_EXPRESSION).any():
        keep = (features["feature_types"] == GENE_EXPRESSION).to_numpy()
        x, features = x[:, keep], features[keep]
    names = make_index_unique(pd.Index(features["name"].to_numpy()))
    var = features.drop(columns="name").set_index(names)
    return ad.AnnData(x, obs=pd.DataFrame(index=pd.Index(barcodes)), var=var)


def _text(values) -> np.ndarray:
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values],
                    dtype=object)
