"""Known covariates as batch correction, on PBMC 4k with a simulated batch effect.

    python -m benchmarks.batch_correction                 # 3 seeds, 1,500 genes, 80 epochs
    python -m benchmarks.batch_correction --quick         # 1 seed, 400 cells x 300 genes, 5 epochs
    python -m benchmarks.batch_correction --alpha-mmd 0   # without the alpha_mmd model

CPU time with 1 thread: ~100 s per seed (~65 s with --alpha-mmd 0); --quick ~5 s.

What it found (3 seeds): with ``covariates=["batch"]`` alone the latents stay split by batch
(kNN mixing 0.007, the same as without covariates) and denoising every cell at batch A leaves
almost all of the effect (|LFC| of affected genes 1.34 vs 1.44 at own batch, 1.48 raw): the
encoder sees the batch-affected counts and nothing pushes batch out of the latents. With
``alpha_mmd=1`` (zipo's latent batch-mixing penalty) the latents mix (0.999, kBET-like 0.97,
batch ARI 0) with the same cell-type purity (0.80), and denoising at batch A removes the effect
(|LFC| 0.04, r = 0.99 between the learned and the true fold changes), at +0.02 validation NLL.
Again with the defaults of 2026-12-06 (validation on molecules of cells that train): mixing
1.00, kBET-like 0.96, |LFC| at batch A 0.045, but cell-type purity 0.70 against 0.83 without
the penalty (0.71 against 0.82 with the validation cells held out whole).

The data: the most-detected genes of PBMC 4k (2,170 cells, cell-type labels). Cells are split at
random into batches A and B (half each). In B a random 30% of genes get a gene-specific fold
change f_g = 2^(+-s), s ~ U(1, 2) (2-4x, up or down at random), applied so counts stay integer:
down by binomial thinning x ~ Bin(x, f_g), up by a Poisson top-up x + Pois((f_g - 1) L_c p_tg),
where L_c p_tg is the cell's library size times the gene's mean proportion in its cell type
(a smooth rate, so genes are also newly detected in cells where they were zero).

Each seed draws a new split and new affected genes, then trains ZiPo twice with the same
settings: without covariates and with ``covariates=["batch"]``. Figures (mean +- 1.64 SEM over
seeds, the paper's error bars):

- latent batch mixing (obsm X_zipo, the encoder's output, which never sees the covariate):
  ARI of k-means clusters (k = number of cell types) against the batch label (0 = no batch
  structure); kNN mixing = mean fraction of each cell's 30 nearest neighbours from the other
  batch divided by that batch's share of the other cells (1 = perfectly mixed, 0 = separate);
  kBET-like acceptance = fraction of cells whose 30-neighbour batch counts pass a binomial test
  at 5% (about 0.95 when mixed).
- cell-type separation in the latents: k-means ARI against the cell types and kNN label purity
  (fraction of the 30 neighbours of the same type), over labelled cells.
- batch effect left in expression: per affected gene and cell type, |log2 fold change| of the
  mean normalised expression between batches B and A (each cell scaled to 10k over the
  unaffected genes, so that the affected genes do not shift all others' proportions), averaged
  over pairs with a mean of at least 0.5 UMI per cell in A. "raw" is the counts; "denoised" is ``denoise()`` with
  ``covariate_values=None`` (each cell at its own batch) and, for the covariate model, with
  ``{"batch": "A"}`` (every cell predicted as batch A). Unaffected genes are shown as a control
  (their |LFC| is sampling noise).
- ``--alpha-mmd BETA`` (default 1; 0 skips it) adds a third model: the covariate model trained
  with ``alpha_mmd=BETA``, i.e. BETA x the multi-scale RBF MMD^2 between the latents of each
  batch's cells and the other cells in each mini-batch (``zipo.train.loss.mmd2``).
- recovered effect: for the covariate model, Pearson correlation over affected genes between the
  true log2 f_g and the model's log2( mean mu(batch B) / mean mu(batch A) ) over all cells.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.spatial import cKDTree
from scipy.stats import binom

from benchmarks.clustering import adjusted_rand_index, kmeans

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pbmc4k_2170.h5ad"
K_NEIGHBOURS = 30
MIN_MEAN = 0.5  # UMI per cell in batch A for a (gene, cell type) pair to enter the LFC figures


# ----------------------------------------------------------------------------- data
def load_pbmc(n_genes: int, n_cells: int | None = None, seed: int = 0):
    import anndata as ad

    if not DATA.is_file():
        raise SystemExit(f"{DATA} not found: the shared data folder must sit beside the repo")
    adata = ad.read_h5ad(DATA)
    if n_cells is not None and n_cells < adata.n_obs:
        cells = np.sort(np.random.default_rng(seed).choice(adata.n_obs, n_cells, replace=False))
        adata = adata[cells].copy()
    detected = np.asarray((adata.X > 0).sum(axis=0)).ravel()
    keep = np.sort(np.argsort(-detected, kind="stable")[:n_genes])
    adata = adata[:, keep].copy()
    adata.obs["cell_type"] = adata.obs["cell_type"].astype(str)
    return adata


def add_batch_effect(adata, seed: int, fraction: float = 0.3, label_key: str = "cell_type"):
    """Copy of ``adata`` with obs["batch"] (A/B at random) and a gene-specific fold change in B
    on a random ``fraction`` of genes; returns (adata, log2 fold change per gene, 0 if none)."""
    rng = np.random.default_rng(seed)
    x = sp.csr_matrix(adata.X, dtype=np.float64).toarray()
    n, g = x.shape
    in_b = rng.permutation(n) < n // 2
    affected = rng.permutation(g) < int(round(fraction * g))
    log2f = np.zeros(g)
    log2f[affected] = rng.uniform(1.0, 2.0, affected.sum()) * rng.choice([-1.0, 1.0], affected.sum())
    f = 2.0 ** log2f

    # Smooth rates L_c p_tg (library size x the gene's mean proportion in the cell's type).
    library = x.sum(axis=1)
    labels = adata.obs[label_key].astype(str).to_numpy()
    rate = np.empty_like(x)
    for t in np.unique(labels):
        rows = labels == t
        p = x[rows].sum(axis=0) / x[rows].sum()
        rate[rows] = library[rows, None] * p[None, :]

    b = np.flatnonzero(in_b)
    down = affected & (f < 1)
    up = affected & (f > 1)
    xb = x[b]
    xb[:, down] = rng.binomial(xb[:, down].astype(np.int64), f[down][None, :])
    xb[:, up] = xb[:, up] + rng.poisson((f[up] - 1)[None, :] * rate[np.ix_(b, np.flatnonzero(up))])
    x[b] = xb
    out = adata.copy()
    out.X = sp.csr_matrix(x.astype(np.float32))
    out.obs["batch"] = pd.Categorical(np.where(in_b, "B", "A"), categories=["A", "B"])
    keep_cells = np.asarray(out.X.sum(axis=1)).ravel() > 0
    return out[keep_cells].copy(), log2f


# ----------------------------------------------------------------------------- metrics
def knn_indices(embedding: np.ndarray, k: int = K_NEIGHBOURS) -> np.ndarray:
    _, idx = cKDTree(embedding).query(embedding, k=k + 1)
    return idx[:, 1:]  # drop the cell itself


def batch_mixing(nn: np.ndarray, batch: np.ndarray) -> dict[str, float]:
    """kNN mixing ratio and kBET-like acceptance rate (two-sided binomial test, 5%)."""
    batch = np.asarray(batch)
    n, k = nn.shape
    levels, counts = np.unique(batch, return_counts=True)
    size = dict(zip(levels, counts))
    expected = np.array([(n - size[b]) / (n - 1) for b in batch])  # other batch's share
    frac_other = (batch[nn] != batch[:, None]).mean(axis=1)
    mixing = float(frac_other.mean() / expected.mean())
    is_b = batch == levels[0]
    # kBET-like: is the count of batch-`b` neighbours consistent with the global share?
    p = is_b.mean()
    count = is_b[nn].sum(axis=1)
    lo = binom.cdf(count, k, p)
    hi = binom.sf(count - 1, k, p)
    pvalue = np.minimum(1.0, 2 * np.minimum(lo, hi))
    return {"knn_mixing": mixing, "kbet_accept": float((pvalue >= 0.05).mean())}


def label_purity(nn: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> float:
    labels = np.asarray(labels)
    same = labels[nn] == labels[:, None]
    return float(same[mask].mean())


def mean_abs_lfc(expr: np.ndarray, raw: np.ndarray, batch: np.ndarray, labels: np.ndarray,
                 genes: np.ndarray) -> float:
    """Mean over (gene in ``genes``, cell type) of |log2(mean B / mean A)| of ``expr`` (cells x
    genes, per-10k normalised), over pairs whose raw mean in A is >= MIN_MEAN."""
    vals = []
    for t in np.unique(labels):
        if t == "?":
            continue
        a = (labels == t) & (batch == "A")
        b = (labels == t) & (batch == "B")
        if a.sum() < 10 or b.sum() < 10:
            continue
        ok = genes & (raw[a].mean(axis=0) >= MIN_MEAN)
        ma, mb = expr[a][:, ok].mean(axis=0), expr[b][:, ok].mean(axis=0)
        vals.append(np.abs(np.log2((mb + 0.1) / (ma + 0.1))))
    return float(np.mean(np.concatenate(vals)))


def per10k(m: np.ndarray, control: np.ndarray) -> np.ndarray:
    """``m`` scaled per cell to 10k in total over the ``control`` (unaffected) genes, so the
    affected genes' shift does not move every other gene's proportion."""
    return m / m[:, control].sum(axis=1, keepdims=True) * 1e4


# ----------------------------------------------------------------------------- one seed
def run_seed(base, seed: int, epochs: int, encoder: list[int], verbose: bool = False,
             alpha_mmd: float = 1.0) -> list[dict]:
    import zipo

    adata, log2f = add_batch_effect(base, seed)
    affected = log2f != 0
    raw = sp.csr_matrix(adata.X).toarray().astype(np.float64)
    batch = adata.obs["batch"].astype(str).to_numpy()
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    labelled = labels != "?"
    n_types = len(np.unique(labels[labelled]))
    rows = []
    raw_row = {"model": "raw counts", "seed": seed,
               "lfc_affected": mean_abs_lfc(per10k(raw, ~affected), raw, batch, labels, affected),
               "lfc_control": mean_abs_lfc(per10k(raw, ~affected), raw, batch, labels, ~affected)}
    rows.append(raw_row)
    variants = [("ZiPo", None, 0.0), ("ZiPo + batch covariate", ["batch"], 0.0)]
    if alpha_mmd > 0:
        variants.append((f"ZiPo + batch covariate + alpha_mmd={alpha_mmd:g}", ["batch"], alpha_mmd))
    for name, covariates, beta in variants:
        started = time.perf_counter()
        model = zipo.ZiPo(adata, covariates=covariates, encoder_dims=encoder, max_epochs=epochs,
                          seed=seed, verbose=verbose, alpha_mmd=beta)
        model.train()
        seconds = time.perf_counter() - started
        own = model.denoise(adata, copy=True)
        latent = own.obsm["X_zipo"]
        nn = knn_indices(latent)
        km = kmeans(latent, n_types, seed=seed)
        row = {"model": name, "seed": seed, "epochs": len(model.history), "seconds": seconds,
               "val_nll": float(model.history["validation_nll"].min()),
               "batch_ari": adjusted_rand_index(batch, km),
               **batch_mixing(nn, batch),
               "type_ari": adjusted_rand_index(labels[labelled], km[labelled]),
               "type_purity": label_purity(nn, labels, labelled)}
        den = per10k(own.layers["zipo_denoised"].astype(np.float64), ~affected)
        row["lfc_affected"] = mean_abs_lfc(den, raw, batch, labels, affected)
        row["lfc_control"] = mean_abs_lfc(den, raw, batch, labels, ~affected)
        rows.append(row)
        if covariates:
            ref = model.denoise(adata, copy=True, covariate_values={"batch": "A"})
            assert np.allclose(ref.obsm["X_zipo"], latent)  # latents ignore covariates
            den_a = per10k(ref.layers["zipo_denoised"].astype(np.float64), ~affected)
            rows.append({"model": name + ', at batch "A"', "seed": seed,
                         "lfc_affected": mean_abs_lfc(den_a, raw, batch, labels, affected),
                         "lfc_control": mean_abs_lfc(den_a, raw, batch, labels, ~affected)})
            at_b = model.denoise(adata, copy=True, covariate_values={"batch": "B"})
            mu_b = per10k(at_b.layers["zipo_denoised"].astype(np.float64), ~affected).mean(axis=0)
            est = np.log2(mu_b / den_a.mean(axis=0))
            row["effect_r"] = float(np.corrcoef(est[affected], log2f[affected])[0, 1])
    return rows


# ----------------------------------------------------------------------------- table
COLUMNS = [
    ("batch_ari", "batch ARI (k-means) ↓"), ("knn_mixing", "kNN mixing ↑"),
    ("kbet_accept", "kBET-like accept ↑"), ("type_ari", "cell-type ARI ↑"),
    ("type_purity", "cell-type kNN purity ↑"), ("lfc_affected", "abs LFC B/A, affected genes ↓"),
    ("lfc_control", "abs LFC B/A, other genes"), ("effect_r", "r(est., true log2 f)"),
    ("val_nll", "val NLL/entry"), ("epochs", "epochs"), ("seconds", "s"),
]


def summarise(rows: list[dict]) -> str:
    df = pd.DataFrame(rows)
    models = list(dict.fromkeys(df["model"]))
    n_seeds = df["seed"].nunique()
    head = "| model | " + " | ".join(label for _, label in COLUMNS) + " |"
    lines = [head, "|" + " --- |" * (len(COLUMNS) + 1)]
    for m in models:
        sub = df[df["model"] == m]
        cells = []
        for key, _ in COLUMNS:
            v = sub[key].dropna().to_numpy(dtype=float) if key in sub else np.array([])
            if not len(v):
                cells.append("")
            elif key in ("epochs", "seconds"):
                cells.append(f"{v.mean():.0f}")
            elif len(v) > 1:
                cells.append(f"{v.mean():.3f} ± {1.64 * v.std(ddof=1) / np.sqrt(len(v)):.3f}")
            else:
                cells.append(f"{v.mean():.3f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\n({n_seeds} seed{'s' if n_seeds > 1 else ''}; ± 1.64 SEM)"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 seed, 400 cells x 300 genes, 5 epochs")
    p.add_argument("--seeds", type=int, default=None, help="default 3 (quick: 1)")
    p.add_argument("--genes", type=int, default=None, help="most-detected genes (default 1500)")
    p.add_argument("--max-epochs", type=int, default=None, help="default 80 (quick: 5)")
    p.add_argument("--encoder-dims", type=int, nargs="+", default=[512, 256, 128])
    p.add_argument("--alpha-mmd", "--mmd", type=float, default=1.0, metavar="BETA",
                   help="also train the covariate model with alpha_mmd=BETA, the latent "
                        "batch-mixing penalty (default 1; 0 skips it)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    seeds = args.seeds or (1 if args.quick else 3)
    genes = args.genes or (300 if args.quick else 1500)
    epochs = args.max_epochs or (5 if args.quick else 80)
    base = load_pbmc(genes, n_cells=400 if args.quick else None)
    rows = []
    for seed in range(seeds):
        rows += run_seed(base, seed, epochs, args.encoder_dims, args.verbose, args.alpha_mmd)
    print(f"PBMC 4k, {base.n_obs} cells x {base.n_vars} genes, batch B = random half of the "
          f"cells, 30% of genes x 2^(+-U(1,2)) in B; ZiPo ZIP {args.encoder_dims}, up to "
          f"{epochs} epochs (early stopping 30), torch threads {torch.get_num_threads()}\n")
    print(summarise(rows))


if __name__ == "__main__":
    main()
