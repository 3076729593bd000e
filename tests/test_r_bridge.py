"""R <-> Python: the zipo R package against the Python core, checked with rpy2 + anndata2ri.

These run in the Python environment the R package uses (NumPy < 2, since Debian's reticulate
1.28 refuses NumPy 2; CI makes it with zipo::install_zipo()). R code that calls the R package
runs in an Rscript subprocess whose reticulate uses this same interpreter, so nothing nests
Python inside R inside Python. anndata2ri (in-process R through rpy2) is the independent
reference for what an SCE looks like as an AnnData.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

DATA = Path(__file__).resolve().parent / "data"  # pbmc_small (tests/data/README.md)

if shutil.which("Rscript") is None:
    pytest.skip("R is not installed (scripts/install-r.sh installs it)", allow_module_level=True)
if int(np.__version__.split(".")[0]) >= 2:
    pytest.skip("the R bridge tests run in the NumPy < 2 environment that R's reticulate 1.28 "
                "can use (.venv-r, made by scripts/install-r.sh)", allow_module_level=True)
rpy2 = pytest.importorskip("rpy2", reason="rpy2 3.5.x is needed for the R bridge tests")
anndata2ri = pytest.importorskip("anndata2ri")
ro = pytest.importorskip("rpy2.robjects")
if not ro.r('isTRUE(requireNamespace("zipo", quietly = TRUE))')[0]:
    pytest.skip("the zipo R package is not installed (R CMD INSTALL rpkg)", allow_module_level=True)

from conftest import R_READ_PBMC_SMALL_SCE  # noqa: E402
from rpy2.robjects import globalenv  # noqa: E402

import zipo  # noqa: E402
from zipo.rbridge import (  # noqa: E402
    CsrAssembler, ResultReader, anndata_from_csc_parts, csr_parts, drop_results)

FAST = dict(max_epochs=4, seed=11, encoder_dims=[64, 16], batch_size=32, verbose=False)
FAST_R = "epochs = 4, seed = 11, encoder_dims = c(64, 16), batch_size = 32, verbose = FALSE"


def run_r(code: str, tmp_path: Path) -> str:
    """Run R code in Rscript with reticulate bound to this interpreter; return its stdout."""
    script = tmp_path / "script.R"
    script.write_text(R_READ_PBMC_SMALL_SCE + textwrap.dedent(code))
    env = dict(os.environ, RETICULATE_PYTHON=sys.executable, HOME=str(tmp_path))
    done = subprocess.run(["Rscript", str(script)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, f"R failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def r_sce():
    """The pbmc_small SCE built in this process through rpy2, and anndata2ri's AnnData of it."""
    ro.r(R_READ_PBMC_SMALL_SCE)
    with anndata2ri.converter.context():
        return globalenv["sce"]


def test_dgcmatrix_to_csr_and_back_is_exact():
    ro.r("""
        set.seed(3)
        m <- Matrix::rsparsematrix(300, 120, 0.05, rand.x = function(n) as.numeric(rpois(n, 4) + 1))
        m[, 7] <- 0; m[11, ] <- 0                    # an empty cell and an empty gene
        m <- Matrix::drop0(m)
        dimnames(m) <- list(paste0("g", 1:300), paste0("c", 1:120))
    """)
    x, i, p = (np.asarray(ro.r(f"m@{s}")) for s in ("x", "i", "p"))
    adata = anndata_from_csc_parts(x, i, p, 300, 120, list(ro.r("rownames(m)")),
                                   list(ro.r("colnames(m)")))
    with (ro.default_converter + anndata2ri.scipy2ri.converter).context():
        reference = globalenv["m"]  # anndata2ri's own conversion: genes x cells CSC
    assert sp.isspmatrix_csr(adata.X) and adata.X.dtype == np.float32
    assert adata.shape == (120, 300)
    assert (adata.X != reference.T.tocsr()).nnz == 0
    assert list(adata.var_names) == list(ro.r("rownames(m)"))

    parts = csr_parts(adata)
    globalenv["px"], globalenv["pi"], globalenv["pp"] = (
        ro.FloatVector(parts["x"]), ro.IntVector(parts["i"]), ro.IntVector(parts["p"]))
    same = ro.r("""
        back <- new("dgCMatrix", x = px, i = pi, p = pp, Dim = dim(m), Dimnames = dimnames(m))
        identical(back, m)
    """)
    assert same[0]


def test_sce_to_python_and_back_keeps_everything(tmp_path):
    h5ad = tmp_path / "from_r.h5ad"
    out = run_r(f"""
        a <- zipo::sce_to_anndata(sce)
        back <- zipo::anndata_to_sce(a)
        a$write_h5ad("{h5ad}")  # after: writing turns string columns into categoricals in place
        cat("counts", identical(counts(back), counts(sce)), "\\n")
        cat("dimnames", identical(dimnames(back), dimnames(sce)), "\\n")
        cat("colData", identical(as.data.frame(colData(back)), as.data.frame(colData(sce))), "\\n")
    """, tmp_path)
    assert "counts TRUE" in out and "dimnames TRUE" in out and "colData TRUE" in out, out

    import anndata as ad

    ours = ad.read_h5ad(h5ad)
    reference = r_sce()
    assert list(ours.obs_names) == list(reference.obs_names)
    assert list(ours.var_names) == list(reference.var_names)
    assert (sp.csr_matrix(ours.X) != sp.csr_matrix(reference.X)).nnz == 0
    for col in reference.obs.columns:
        assert list(ours.obs[col].astype(str)) == list(reference.obs[col].astype(str)), col
    # And the h5ad of the same data (tests/data) holds the same counts.
    h5ad_copy = ad.read_h5ad(DATA / "pbmc_small.h5ad")
    assert list(h5ad_copy.obs_names) == list(ours.obs_names)
    assert (h5ad_copy.X != ours.X).nnz == 0


def test_r_denoise_agrees_with_python_and_seurat(tmp_path):
    out_dir = tmp_path / "r"
    out_dir.mkdir()
    run_r(f"""
        put <- function(x, name) writeBin(as.vector(x), file.path("{out_dir}", name), size = 8)
        sce <- zipo::denoise(sce, {FAST_R})
        put(assay(sce, "denoised"), "sce_denoised.bin")
        put(reducedDim(sce, "ZIPO"), "sce_latent.bin")
        put(sce$zipo_library_size, "sce_library.bin")
        so <- SeuratObject::CreateSeuratObject(counts = counts(sce),
                                              meta.data = as.data.frame(colData(sce))[, 1:3])
        so <- zipo::denoise(so, {FAST_R})
        stopifnot("denoised" %in% SeuratObject::Assays(so))
        put(as.matrix(SeuratObject::GetAssayData(so, slot = "data", assay = "denoised")), "seurat_denoised.bin")
        put(SeuratObject::Embeddings(so, "ZIPO"), "seurat_latent.bin")
    """, tmp_path)

    import anndata as ad

    adata = ad.read_h5ad(DATA / "pbmc_small.h5ad")
    zipo.denoise(adata, **FAST)
    py_denoised = adata.layers["zipo_denoised"]  # cells x genes
    n, g = adata.shape

    def load(name, shape):  # R wrote column-major genes x cells / cells x latents
        return np.fromfile(out_dir / name, dtype=np.float64).reshape(shape, order="F")

    for prefix in ("sce", "seurat"):
        r_denoised = load(f"{prefix}_denoised.bin", (g, n)).T
        rel = np.max(np.abs(r_denoised - py_denoised) / np.maximum(np.abs(py_denoised), 1e-12))
        print(f"R ({prefix}) vs Python denoised: max relative difference {rel:.3g}")
        assert rel < 1e-5
        latent = load(f"{prefix}_latent.bin", (n, 16))
        np.testing.assert_allclose(latent, adata.obsm["X_zipo"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(load("sce_library.bin", (n,)), adata.obs["zipo_library_size"],
                               rtol=1e-5)


def test_r_denoise_covers_undetected_genes_and_speaks_r(tmp_path):
    """An SCE with genes that have no counts (as every 10x matrix has): the denoised assay has
    the object's dimensions, 0 for those genes and Python's values for the others; the notice
    arrives as an R message and errors name R's objects."""
    import anndata as ad
    import pandas as pd

    out = run_r(f"""
        z <- Matrix::Matrix(0, 4, ncol(sce), sparse = TRUE,
                            dimnames = list(paste0("ZERO", 1:4), colnames(sce)))
        full <- SingleCellExperiment(list(counts = rbind(z[1:2, ], counts(sce), z[3:4, ])),
                                     colData = colData(sce))
        full <- withCallingHandlers(zipo::denoise(full, {FAST_R}),
                                    message = function(m) cat("MESSAGE", conditionMessage(m)))
        den <- assay(full, "denoised")
        cat("dims", dim(den), identical(dimnames(den), dimnames(full)), "\n")
        writeBin(as.vector(den), file.path("{tmp_path}", "den.bin"), size = 8)
        model <- zipo::train(sce[-(1:3), ], {FAST_R})
        cat("ERROR", tryCatch(zipo::denoise(sce, model = model), error = conditionMessage), "\n")
    """, tmp_path)
    assert ("MESSAGE 4 of 234 genes have no counts in any cell (ZERO1, ZERO2, ZERO3, ... (4 in "
            "all)): training on the 230 detected genes; the others' denoised values are 0") in out
    assert "dims 234 80 TRUE" in out, out
    error = out.split("ERROR ", 1)[1]
    assert error.startswith("the genes of the object do not match the trained model: 3 genes "
                            "are not in the model and have counts here"), error
    assert "Drop them with x[rownames(model), ]" in error
    assert "adata" not in error and "var_names" not in error and "Traceback" not in error

    adata = ad.read_h5ad(DATA / "pbmc_small.h5ad")
    zero = sp.csr_matrix((adata.n_obs, 2), dtype=np.float32)
    full = ad.AnnData(sp.hstack([zero, adata.X, zero], format="csr"), obs=adata.obs,
                      var=pd.DataFrame(index=[f"ZERO{k}" for k in (1, 2)]
                                       + list(adata.var_names) + [f"ZERO{k}" for k in (3, 4)]))
    with pytest.warns(UserWarning, match="4 of 234 genes have no counts"):
        zipo.denoise(full, **FAST)
    r_denoised = np.fromfile(tmp_path / "den.bin", dtype=np.float64).reshape((234, 80),
                                                                             order="F").T
    assert np.all(r_denoised[:, [0, 1, 232, 233]] == 0)
    expected = full.layers["zipo_denoised"]
    assert np.max(np.abs(r_denoised - expected) / np.maximum(np.abs(expected), 1e-12)) < 1e-5


# Two on-disk layouts: a dense chunked dataset written by HDF5Array, read as dense blocks, and
# 10x Genomics' sparse one (as Cell Ranger writes it; here by the benchmark's writer, since
# Debian's HDF5Array 1.26 cannot write it), read by TENxMatrix as sparse blocks.
HDF5_COUNTS = {
    "dense": ('HDF5Array::writeHDF5Array(counts(sce), "{path}", "counts")', "HDF5ArraySeed"),
    "tenx": ('HDF5Array::TENxMatrix("{path}", "matrix")', "TENxMatrixSeed"),
}


@pytest.mark.parametrize("layout", sorted(HDF5_COUNTS))
def test_r_hdf5_counts_in_and_h5ad_out_agree_with_python(tmp_path, layout):
    """HDF5-backed counts, read by R a block of cells at a time, and denoise(out=): the .h5ad
    holds what Python's own denoising of the same counts gives, and R's HDF5-backed assay reads
    it genes x cells."""
    if not ro.r('isTRUE(requireNamespace("HDF5Array", quietly = TRUE))')[0]:
        pytest.skip("the R package HDF5Array is not installed (apt-get install r-bioc-hdf5array)")
    import anndata as ad

    adata = ad.read_h5ad(DATA / "pbmc_small.h5ad")
    counts_h5 = tmp_path / "counts.h5"
    if layout == "tenx":
        from benchmarks.r_hdf5_memory import write_hdf5

        write_hdf5(sp.csr_matrix(adata.X).astype(np.int32), adata.var_names, counts_h5, "tenx")
    open_counts, seed_class = HDF5_COUNTS[layout]
    h5ad = tmp_path / "denoised.h5ad"
    out = run_r(f"""
        h5 <- {open_counts.format(path=counts_h5)}
        stopifnot(identical(dim(h5), dim(sce)))
        counts(sce, withDimnames = FALSE) <- h5
        invisible(DelayedArray::setAutoBlockSize(8 * nrow(sce) * 30))  # several blocks
        sce <- zipo::denoise(sce, {FAST_R}, out = "{h5ad}")
        den <- assay(sce, "denoised")
        cat("classes", class(counts(sce)), class(DelayedArray::seed(counts(sce))),
            class(DelayedArray::seed(den)), "\n")
        writeBin(as.vector(as.matrix(den[, 1:7])), file.path("{tmp_path}", "den.bin"), size = 8)
    """, tmp_path)
    assert f"classes DelayedMatrix {seed_class} HDF5ArraySeed" in out, out
    assert adata.n_obs > 60  # more than two blocks of 30 cells
    zipo.denoise(adata, **FAST)
    written = ad.read_h5ad(h5ad)
    assert list(written.obs_names) == list(adata.obs_names)
    assert list(written.var_names) == list(adata.var_names)
    expected = adata.layers["zipo_denoised"]
    rel = np.max(np.abs(written.X - expected) / np.maximum(np.abs(expected), 1e-12))
    assert rel < 1e-5
    np.testing.assert_allclose(written.obsm["X_zipo"], adata.obsm["X_zipo"], rtol=1e-5, atol=1e-6)
    r_first = np.fromfile(tmp_path / "den.bin", dtype=np.float64).reshape((adata.n_vars, 7),
                                                                          order="F")
    np.testing.assert_array_equal(r_first, written.X[:7].T.astype(np.float64))


def test_csr_assembler_blocks_give_the_one_matrix_conversion():
    """Blocks of cells (a genes x cells CSC's columns) assemble into exactly the matrix that
    anndata_from_csc_parts makes from the whole; bad blocks are refused."""
    m = sp.random(30, 23, density=0.2, format="csc", random_state=4, dtype=np.float64)
    m.data = np.ceil(m.data * 5)
    m.sort_indices()
    assembler = CsrAssembler(30)
    for start in range(0, 23, 10):
        block = m[:, start:start + 10]
        assembler.add(block.data, block.indices, block.indptr)
    whole = anndata_from_csc_parts(m.data, m.indices, m.indptr, 30, 23, None, None)
    built = assembler.anndata(None, None)
    assert (built.X != whole.X).nnz == 0 and built.X.dtype == whole.X.dtype
    assert built.X.indptr.dtype == whole.X.indptr.dtype
    assert list(built.obs_names) == list(whole.obs_names) and assembler.n_cells == 0
    with pytest.raises(ValueError, match="row indices outside 0..29"):
        assembler.add([1.0], [30], [0, 1])
    with pytest.raises(ValueError, match="inconsistent block"):
        assembler.add([1.0, 2.0], [0], [0, 2])


def test_result_reader_blocks_rebuild_each_result_in_r_layout():
    """R fills its genes x cells matrix from these blocks: Fortran-ordered float64, every value,
    from a layer (all genes) or an obsm table (genes=), and the results can then be dropped."""
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(0)
    adata = ad.AnnData(sp.csr_matrix((50, 7), dtype=np.float32))
    layer = rng.random((50, 7), dtype=np.float32)
    adata.layers["zipo_denoised"] = layer
    adata.obsm["zipo_zero_prob"] = pd.DataFrame(layer[:, [4, 1]], index=adata.obs_names,
                                                columns=["4", "1"])
    for what, expected in (("denoised", layer), ("zero_prob", layer[:, [4, 1]])):
        reader = ResultReader(adata, what, block_values=3 * expected.shape[1])
        assert (reader.n_cells, reader.n_genes, reader.block_cells) == (50, expected.shape[1], 3)
        blocks = []
        for start in range(0, 50, 3):
            block = reader.block(start, min(50, start + 3))["block"]
            assert block.dtype == np.float64 and block.flags.f_contiguous
            blocks.append(block.copy())  # the next block reuses the buffer
        np.testing.assert_array_equal(np.hstack(blocks), expected.T.astype(np.float64))
        with pytest.raises(ValueError, match="not a block of at most 3"):
            reader.block(0, 4)
    drop_results(adata)
    assert "zipo_denoised" not in adata.layers and "zipo_zero_prob" not in adata.obsm


from hypothesis import given, settings  # noqa: E402

from test_properties import sparse_counts  # noqa: E402


@settings(max_examples=15, deadline=None)
@given(m=sparse_counts())
def test_random_matrices_survive_r_and_python_index_arrays(m):
    """A dgCMatrix built in R from random slots goes to Python and back with every value."""
    m.sort_indices()
    globalenv["gx"], globalenv["gi"], globalenv["gp"] = (
        ro.FloatVector(m.data), ro.IntVector(m.indices), ro.IntVector(m.indptr))
    globalenv["gdim"] = ro.IntVector(m.shape)
    ro.r('suppressPackageStartupMessages(library(Matrix)); '
         'rm_ <- new("dgCMatrix", x = gx, i = gi, p = gp, Dim = gdim)')  # R validates it
    x, i, p = (np.asarray(ro.r(f"rm_@{s}")) for s in ("x", "i", "p"))
    adata = anndata_from_csc_parts(x, i, p, m.shape[0], m.shape[1], None, None)
    parts = csr_parts(adata)
    globalenv["px"], globalenv["pi"], globalenv["pp"] = (
        ro.FloatVector(parts["x"]), ro.IntVector(parts["i"]), ro.IntVector(parts["p"]))
    assert ro.r('identical(new("dgCMatrix", x = px, i = pi, p = pp, Dim = gdim), rm_)')[0]
