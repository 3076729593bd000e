"""A pass over a large sparse matrix never densifies the whole matrix.

200,000 cells x 20,000 genes at 2% density is 80 M non-zeros (640 MB as CSR), while a dense
float32 copy would need 16 GB. In a fresh subprocess (so ru_maxrss only sees this work) the
counts are checked, a tiny model is trained on a few cells, and the encoder is run over all
200k cells; the peak RSS may only grow by batch-sized buffers beyond the matrix itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

N_CELLS, N_GENES, PER_ROW = 200_000, 20_000, 400
DENSE_BYTES = N_CELLS * N_GENES * 4  # 16 GB
ALLOWED_GROWTH = 2 * 1024**3  # 2 GB, one eighth of a dense copy

SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, time

    import anndata as ad
    import numpy as np
    import scipy.sparse as sp

    import zipo
    from zipo.data.counts import CountMatrix, check_counts

    n_cells, n_genes, per_row = (int(a) for a in sys.argv[1:4])

    def rss_now():
        # current resident set size (Linux); ru_maxrss is only the peak
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * resource.getpagesize()

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux

    t0 = time.perf_counter()
    # 400 distinct, sorted columns per row: one in each block of n_genes / per_row columns.
    rng = np.random.default_rng(0)
    step = n_genes // per_row
    indices = np.empty(n_cells * per_row, dtype=np.int32)
    base = np.arange(per_row, dtype=np.int32) * step
    chunk = 10_000
    for start in range(0, n_cells, chunk):
        stop = min(start + chunk, n_cells)
        block = rng.integers(0, step, size=(stop - start, per_row), dtype=np.int32) + base
        indices[start * per_row:stop * per_row] = block.ravel()
    indptr = np.arange(0, (n_cells + 1) * per_row, per_row, dtype=np.int64)
    data = np.ones(n_cells * per_row, dtype=np.float32)
    X = sp.csr_matrix((data, indices, indptr), shape=(n_cells, n_genes))
    adata = ad.AnnData(X)
    assert adata.X is X or adata.X.data is data  # wrapped, not copied
    rss_built, peak_built = rss_now(), peak()
    t_build = time.perf_counter() - t0

    # 1. the one-pass count validation over all cells
    t0 = time.perf_counter()
    summary = check_counts(CountMatrix(adata), adata.obs_names)
    assert np.all(summary.library_size == per_row)
    assert summary.gene_total.sum() == n_cells * per_row
    t_check = time.perf_counter() - t0

    # 2. a tiny model trained for one epoch on a few cells (every gene is expressed there)
    t0 = time.perf_counter()
    small = adata[:1000].copy()
    model = zipo.ZiPo(small, encoder_dims=[16, 8], max_epochs=1, batch_size=256,
                      verbose=False, seed=0, device="cpu").train()
    t_train = time.perf_counter() - t0

    # 3. the encoder over all 200k cells (this also re-checks every count)
    t0 = time.perf_counter()
    latent = model.get_latent(adata, batch_size=1024)
    t_latent = time.perf_counter() - t0
    assert latent.shape == (n_cells, 8) and np.isfinite(latent).all()

    print(json.dumps({
        "rss_built": rss_built, "peak_built": peak_built, "peak_end": peak(),
        "nnz": int(X.nnz), "t_build": t_build, "t_check": t_check, "t_train": t_train,
        "t_latent": t_latent,
    }))
    """
)


@pytest.mark.slow
def test_large_sparse_pass_is_not_densified(tmp_path):
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "2")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(N_CELLS), str(N_GENES), str(PER_ROW)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["nnz"] == N_CELLS * PER_ROW
    growth = r["peak_end"] - r["rss_built"]
    gib = 1024**3
    report = (
        f"matrix built: RSS {r['rss_built'] / gib:.2f} GiB (peak {r['peak_built'] / gib:.2f}); "
        f"peak after check + train + encode: {r['peak_end'] / gib:.2f} GiB; growth "
        f"{growth / gib:.2f} GiB vs {DENSE_BYTES / gib:.1f} GiB for a dense copy; seconds: "
        f"build {r['t_build']:.1f}, check {r['t_check']:.1f}, train {r['t_train']:.1f}, "
        f"encode {r['t_latent']:.1f}"
    )
    print(report)
    assert growth < ALLOWED_GROWTH, report
