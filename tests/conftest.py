"""Shared fixtures: the real PBMC data, a small trained model, and a sandboxed HOME.

Every data set the tests read is inside the repository (tests/data/README.md): Seurat's
pbmc_small in tests/data, and the PBMC 4k sample shipped with the package
(``zipo.datasets.pbmc4k_demo``). A fresh clone runs the suite without anything beside it.

HOME and MPLCONFIGDIR point into a temporary folder before anything imports matplotlib, so the
suite never writes to the real home directory; MPLBACKEND=Agg keeps plotting headless.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

_SANDBOX = Path(tempfile.mkdtemp(prefix="zipo-tests-home-"))
os.environ["HOME"] = str(_SANDBOX)
os.environ["MPLCONFIGDIR"] = str(_SANDBOX / "mpl")
os.environ["MPLBACKEND"] = "Agg"
os.environ.setdefault("XDG_CACHE_HOME", str(_SANDBOX / "cache"))

import anndata as ad  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

DATA_DIR = Path(__file__).resolve().parent / "data"
PBMC_SMALL = DATA_DIR / "pbmc_small.h5ad"

# R code that reads the pbmc_small MatrixMarket files into `sce` (counts, and colData from
# obs.csv), for the tests that drive the R package.
R_READ_PBMC_SMALL_SCE = f"""
suppressPackageStartupMessages(library(SingleCellExperiment))
d <- "{DATA_DIR / 'pbmc_small_mtx'}"
m <- as(Matrix::readMM(file.path(d, "matrix.mtx.gz")), "CsparseMatrix")
rownames(m) <- readLines(file.path(d, "genes.tsv.gz"))
colnames(m) <- readLines(file.path(d, "barcodes.tsv.gz"))
obs <- read.csv(file.path(d, "obs.csv.gz"), row.names = 1)[colnames(m), ]
sce <- SingleCellExperiment(assays = list(counts = m), colData = obs)
"""

# Small network for everything that only needs "a trained model".
SMALL_ENCODER = [64, 16]


def small_model(adata, **options):
    """An untrained ZiPo with the small network, 2 epochs, batches of 32 and one fit (whose
    outputs are its network's; tests/test_fits.py covers the average of several);
    ``options`` override."""
    import zipo

    kw = dict(encoder_dims=SMALL_ENCODER, max_epochs=2, batch_size=32, verbose=False, n_fits=1)
    kw.update(options)
    return zipo.ZiPo(adata, **kw)


def validation_scores(model, network=None) -> tuple[float, float]:
    """(loss, NLL) per entry of the counts a trained model validated on (its validation cells'
    kept molecules under the default ``validation_holdout = "molecules"``, their counts under
    ``"cells"``), as the history's ``validation_loss`` and ``validation_nll`` score them, with
    ``network`` (default: the model's own)."""
    from zipo.train.evaluate import evaluate

    return evaluate(network or model.network, model.validation_batches(), model.config.model)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SANDBOX, ignore_errors=True)


# The suite's figures are CPU figures (bit-identical save/load round trips, reloads on the CPU):
# on a machine with CUDA, device="auto" would train every test's model on the GPU. CUDA stays
# hidden in this process, except from tests/test_gpu.py, which covers it (`_real_cuda`).
REAL_CUDA_IS_AVAILABLE = torch.cuda.is_available


@pytest.fixture(scope="session", autouse=True)
def _cpu_suite():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cuda, "is_available", lambda: False)
        yield


@pytest.fixture(scope="session")
def pbmc_small_path() -> Path:
    return PBMC_SMALL


@pytest.fixture(scope="session")
def _pbmc_small(pbmc_small_path):
    return ad.read_h5ad(pbmc_small_path)


@pytest.fixture
def pbmc_small(_pbmc_small):
    """Seurat's pbmc_small (80 cells x 230 genes, raw UMIs in CSR float32); a fresh copy per
    test, so tests may modify it."""
    return _pbmc_small.copy()


@pytest.fixture(scope="session")
def pbmc4k_demo_data():
    """The PBMC 4k sample shipped with zipo (2,170 cells x 1,009 genes: the 1,000 detected in
    the most cells plus 9 markers; obs["cell_type"]), a fresh copy per call of the returned
    function."""
    from zipo.datasets import pbmc4k_demo

    adata = pbmc4k_demo()
    return adata.copy


@pytest.fixture(scope="session")
def trained_model(_pbmc_small):
    """A ZIP model with the paper's predicted library (so its rate is what every expectation
    builds on: the posterior equals it), trained 3 epochs on pbmc_small with the default
    training, one fit (its outputs are its network's; tests/test_fits.py covers the average
    of several). Tests must not train it further."""
    import zipo

    model = zipo.ZiPo(
        _pbmc_small.copy(), encoder_dims=SMALL_ENCODER, max_epochs=3, batch_size=32, seed=0,
        verbose=False, likelihood="zip", library="predicted", n_fits=1,
    )
    return model.train()


@pytest.fixture
def shipped_data(monkeypatch):
    """The benchmark datasets' folder (``benchmarks.datasets.SHARED_DATA``) pointed at
    tests/data (its pbmc_small.h5ad): a user's clone has no ../shared beside it."""
    import sys

    if str(DATA_DIR.parents[1]) not in sys.path:  # the repository root: benchmarks/
        sys.path.insert(0, str(DATA_DIR.parents[1]))
    from benchmarks import datasets

    monkeypatch.setattr(datasets, "SHARED_DATA", DATA_DIR)
