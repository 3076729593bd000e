"""Property-based tests (hypothesis): likelihood normalisation and monotonicity, and the
sparse index-array conversions the R bridge relies on."""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zipo.distributions import log_prob
from zipo.rbridge import anndata_from_csc_parts, csr_parts

means = st.floats(min_value=1e-3, max_value=200.0)
thetas = st.floats(min_value=0.05, max_value=1e4)
logits = st.floats(min_value=-8.0, max_value=8.0)


def total_probability(m: float, r: float | None, theta: float | None) -> float:
    """sum_x P(x) over x = 0..bound, with the bound far in the upper tail."""
    sd = math.sqrt(m + (m * m / theta if theta else 0.0))
    bound = int(m + 60 * sd + 200)
    x = torch.arange(bound + 1, dtype=torch.float64)
    log_m = torch.full_like(x, math.log(m))
    logit_z = None if r is None else torch.full_like(x, r)
    log_theta = None if theta is None else torch.full_like(x, math.log(theta))
    return float(torch.exp(log_prob(x, log_m, logit_z, log_theta)).sum())


@settings(max_examples=60, deadline=None)
@given(m=means, r=logits)
def test_zip_pmf_sums_to_one(m, r):
    assert abs(total_probability(m, r, None) - 1) < 1e-9


@settings(max_examples=60, deadline=None)
@given(m=means, r=logits, theta=thetas)
def test_zinb_pmf_sums_to_one(m, r, theta):
    assert abs(total_probability(m, r, theta) - 1) < 1e-7


@settings(max_examples=40, deadline=None)
@given(m=means, theta=st.one_of(st.none(), thetas))
def test_plain_pmf_sums_to_one(m, theta):
    assert abs(total_probability(m, None, theta) - 1) < 1e-7


@settings(max_examples=60, deadline=None)
@given(m=means, theta=st.one_of(st.none(), thetas), r1=logits, r2=logits,
       x=st.integers(min_value=0, max_value=500))
def test_more_zero_inflation_raises_p0_and_lowers_positive_counts(m, theta, r1, r2, x):
    lo, hi = sorted((r1, r2))
    if hi - lo < 1e-3:
        return

    def lp(r):
        t = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
        return float(log_prob(t(x), t(math.log(m)), t(r), None if theta is None else t(math.log(theta))))

    if x == 0:
        assert lp(hi) >= lp(lo) - 1e-12  # P(0) = z + (1 - z) f(0) grows with z
    else:
        assert lp(hi) < lp(lo)  # every positive count loses mass to the zero spike


@st.composite
def sparse_counts(draw):
    n_genes = draw(st.integers(min_value=1, max_value=40))
    n_cells = draw(st.integers(min_value=1, max_value=40))
    density = draw(st.floats(min_value=0.0, max_value=1.0))
    seed = draw(st.integers(min_value=0, max_value=2**31 - 1))
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_genes, n_cells)) < density) * rng.integers(1, 10**6, (n_genes, n_cells))
    return sp.csc_matrix(dense.astype(np.float64))  # genes x cells, like R's dgCMatrix


@settings(max_examples=80, deadline=None)
@given(m=sparse_counts())
def test_csc_parts_to_anndata_and_back_keep_every_value(m):
    """The dgCMatrix slots (x, i, p) become a cells x genes CSR and come back unchanged."""
    m.sort_indices()
    genes = [f"g{k}" for k in range(m.shape[0])]
    cells = [f"c{k}" for k in range(m.shape[1])]
    adata = anndata_from_csc_parts(m.data, m.indices, m.indptr, m.shape[0], m.shape[1], genes, cells)
    assert adata.shape == (m.shape[1], m.shape[0])
    assert (adata.X != m.T.tocsr().astype(np.float32)).nnz == 0
    parts = csr_parts(adata)
    np.testing.assert_array_equal(parts["i"], m.indices)
    np.testing.assert_array_equal(parts["p"], m.indptr)
    np.testing.assert_array_equal(parts["x"], m.data.astype(np.float32))  # counts < 2^24 exact
    assert (parts["n_genes"], parts["n_cells"]) == m.shape
