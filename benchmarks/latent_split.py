"""Which coarse split k-means takes on each method's latents (issue 15's k-means ARI gap).

    python -m benchmarks.run --datasets pbmc4k --methods zipo scvi --protocols mcv0.9 \\
        --jobs 1 --threads 2 --out OUT
    python -m benchmarks.latent_split OUT

Reads the embeddings a run saved in ``OUT/latents`` (the MCV p = 0.9 fit's, the ones the
harness scores) of each labelled dataset, remakes that fit's split to know each cell's counts,
and prints per method and seed:

- k-means ARI and NMI exactly as the harness scores them (k = the number of labels), and the
  table of labels against clusters with each cluster's median library size;
- how much the latents follow the cell's log library size: R^2 of a linear fit of it from the
  latents, over all labelled cells and within each label, and the k-means ARI/NMI once the log
  library is regressed out of the latents;
- for the label that k-means divides (the one whose second-largest cluster holds the most of
  its cells), the genes whose log-normalised expression differs most between its two largest
  clusters, so a reader can tell a technical split from a biological one.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

import numpy as np

from . import datasets as D
from . import protocols as P
from .clustering import (_contingency, adjusted_rand_index, kmeans, latent_scores,
                         normalized_mutual_info, r_squared)
from .splits import make_split

LATENT_FILE = re.compile(r"(?P<dataset>.+)-s(?P<seed>\d+)-(?P<method>.+)\.npy$")
N_GENES_SHOWN = 8


def regress_out(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``z`` less its least-squares fit on ``y`` (the column means are kept)."""
    design = np.c_[y - y.mean(), np.ones(len(y))]
    coef, *_ = np.linalg.lstsq(design, z, rcond=None)
    return z - np.outer(y - y.mean(), coef[0])


def divided_label(truth: np.ndarray, clusters: np.ndarray) -> str:
    """The label whose second-largest cluster holds the most of its cells."""
    names = np.unique(truth)
    table = _contingency(truth, clusters)
    second = np.sort(table, axis=1)[:, -2] if table.shape[1] > 1 else np.zeros(len(names))
    return str(names[int(np.argmax(second))])


def marker_genes(counts, cells_a: np.ndarray, cells_b: np.ndarray, genes: np.ndarray
                 ) -> tuple[list[str], list[str]]:
    """The genes most up and most down in ``cells_a`` against ``cells_b`` (boolean masks),
    by the difference of mean log-normalised expression (10,000 counts per cell)."""
    def mean_lognorm(mask):
        return np.asarray(P.log_normalize(counts[mask]).mean(axis=0)).ravel()

    diff = mean_lognorm(cells_a) - mean_lognorm(cells_b)
    order = np.argsort(-diff)
    def show(i):
        return f"{genes[i]} {diff[i]:+.2f}"
    return ([show(i) for i in order[:N_GENES_SHOWN]],
            [show(i) for i in order[::-1][:N_GENES_SHOWN]])


def describe(method: str, seed: int, embedding: np.ndarray, ds: D.Dataset, counts, genes
             ) -> None:
    labelled = np.array([lab is not None for lab in ds.labels])
    truth = np.asarray(ds.labels[labelled]).astype(str)
    z = np.asarray(embedding, dtype=np.float64)[labelled]
    x = counts[labelled]
    log_library = np.log(np.maximum(np.asarray(x.sum(axis=1)).ravel(), 1))
    names = np.unique(truth)
    clusters = kmeans(z, len(names), seed=seed)  # as latent_scores clusters, kept for the table
    scores = {"kmeans_ari": adjusted_rand_index(truth, clusters),
              "kmeans_nmi": normalized_mutual_info(truth, clusters)}
    plain = latent_scores(regress_out(z, log_library), truth, seed=seed)
    print(f"\n### {ds.name}, {method}, seed {seed}: {z.shape[1]} latents")
    print(f"k-means ARI {scores['kmeans_ari']:.4f}, NMI {scores['kmeans_nmi']:.4f}; "
          f"log library regressed out: ARI {plain['kmeans_ari']:.4f}, "
          f"NMI {plain['kmeans_nmi']:.4f}")
    within = ", ".join(f"{n} {r_squared(z[truth == n], log_library[truth == n]):.2f}"
                       for n in names)
    print(f"R^2 of log library from the latents: {r_squared(z, log_library):.3f} "
          f"(within labels: {within})")
    table = _contingency(truth, clusters).astype(int)
    k = table.shape[1]
    print("| label | " + " | ".join(f"cluster {j}" for j in range(k)) + " |")
    print("| --- " * (k + 1) + "|")
    for name, row in zip(names, table):
        print(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    medians = [np.median(np.exp(log_library[clusters == j])) for j in range(k)]
    print("| median library | " + " | ".join(f"{m:.0f}" for m in medians) + " |")
    label = divided_label(truth, clusters)
    row = table[list(names).index(label)]
    big, small = np.argsort(-row)[:2]
    in_label = truth == label
    up, down = marker_genes(x, in_label & (clusters == small), in_label & (clusters == big), genes)
    print(f"{label} divided, {row[small]} cells in cluster {small} against {row[big]} in "
          f"cluster {big}. Up in the smaller: {', '.join(up)}; down: {', '.join(down)}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="a benchmarks.run output folder (OUT of --out)")
    args = ap.parse_args(argv)
    files = sorted((args.out / "latents").glob("*.npy"))
    if not files:
        raise SystemExit(f"no embeddings in {args.out / 'latents'}: run benchmarks.run with "
                         f"--out {args.out} first (see this module's help)")
    found: dict[str, list] = {}
    for path in files:
        m = LATENT_FILE.match(path.name)
        if m:
            found.setdefault(m["dataset"], []).append((int(m["seed"]), m["method"], path))
    with tempfile.TemporaryDirectory(prefix="zipo-latent-split-") as tmp:
        for name, entries in found.items():
            ds = D.load(name)
            if ds.labels is None:
                continue
            for seed in sorted({s for s, _, _ in entries}):
                split = make_split(ds, seed, "mcv0.9", Path(tmp))
                genes = np.asarray(ds.genes)[split.expressed]
                counts = split.train[:, split.expressed].tocsr()
                for s, method, path in sorted(entries):
                    if s == seed:
                        describe(method, seed, np.load(path), ds, counts, genes)


if __name__ == "__main__":
    main()
