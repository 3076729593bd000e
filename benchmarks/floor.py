"""How close can any method come to the held-out molecules? Worlds with known parameters, where
the best possible prediction can be scored beside ZiPo's and CellMapper's (issue 39).

    python -m benchmarks.floor --world pbmc4k --p 0.9 --seeds 0 1 2 --threads 2
    python -m benchmarks.floor --world simulated --p 0.5 --seeds 0 1 2 --threads 2

A held-out count is a Poisson draw of its entry's rate, so even the true rate leaves a deviance;
and under the NB model each entry's rate scatters around what the cell's state predicts (the
Gamma noise), which no method can know beyond what the entry's own count in ``X'`` tells. So
the lowest expected deviance any method can reach from ``X'`` is that of the posterior given the
true state-level parameters, the *Bayes floor* (:func:`benchmarks.protocols.bayes_mcv_prediction`),
and a lead over a rival is bounded by the rival's distance from it.

Worlds (``--world``):

- a real dataset of the harness (``pbmc4k`` at ``--genes``, ``pancreas_100``, ...): ZiPo
  (``--world-options``, seed ``--world-seed``) is trained on all of its counts, and each cell's
  fitted ZINB parameters (mean m at the cell's library, dispersion theta, zero inflation pi)
  are the truth. Per seed, each entry's rate is drawn from Gamma(theta, theta / m) and its
  count from Poisson of the rate, then split as the harness splits (MCV at ``--p``). Data like
  the real set, in a world where ZiPo's model is exactly right: its lead there is the most it
  could have. The fit's zero inflation is not drawn: on real data the held-out molecules of
  the zeros it calls dropouts follow the rate (imputing them predicts them better on nine
  of ten real dataset splits, ``benchmarks.headroom``'s "dropout zeros kept"), where a
  structural zero would hold none; with
  ``--structural-zeros`` each count is also set to 0 with probability pi, as in the simulation.
- ``simulated``: the harness's simulation, whose state-level parameters are the cell type's
  mean at the cell's library, each gene's theta and pi (``datasets.simulate``'s truth), split
  as ``benchmarks.run`` splits it (so its rows match RESULTS.md's).

Rows, scored as the harness scores (MCV Poisson deviance):

- ``oracle``: each entry's true rate (the harness's oracle: it knows the Gamma noise, which no
  method can);
- ``Bayes floor``: the posterior given the true m, theta and pi;
- ``ZiPo``: ZiPo (``--options``) trained on ``X'``, its posterior output as the harness scores
  it (genes without counts in ``X'`` at the no-denoising baseline);
- ``Bayes, ZiPo's m, theta, pi``: the Bayes formula with ZiPo's fitted parameters (the first
  fit's), and with one of them true: ``true theta, pi`` (what ZiPo's m costs) and ``true m``
  (what its theta and pi cost);
- ``CellMapper``: run as the harness runs it (skipped without its venv);
- ``no denoising``: each cell's library times the gene's share of ``X'``.
"""

from __future__ import annotations

import json

import numpy as np

from .headroom import cellmapper_output, print_means, split_arguments
from .mcv_variants import counts_anndata, parse_variant

ROWS = ("oracle", "Bayes floor", "ZiPo", "Bayes, ZiPo's m, theta, pi",
        "Bayes, ZiPo's m, true theta, pi", "Bayes, true m, ZiPo's theta, pi", "CellMapper",
        "no denoising")


def zinb_parameters(model, adata) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(m, theta, pi) of ``model``'s first fit for each cell of ``adata`` and each model gene,
    m at the cell's library (cells x genes, float64)."""
    import torch

    from zipo.nn.sparse import as_dense

    net = model.network
    net.eval()
    parts: list[list] = [[], [], []]
    with torch.no_grad():
        for x, c, _ in model.cell_batches(adata):
            o = net(as_dense(x).float(), c)
            for part, value in zip(parts, (o.log_mean.exp(), o.log_theta.exp(),
                                           torch.sigmoid(o.logit_z))):
                part.append(value.double())
    m, theta, pi = (torch.cat(part).numpy() for part in parts)
    return m, theta, pi


def fitted_world(dataset: str, genes: int, options: dict, seed: int,
                 structural_zeros: bool = False):
    """(m, theta, pi) of ZiPo trained on all counts of ``dataset``: the world's truth (pi 0
    unless ``structural_zeros``)."""
    import zipo

    from . import datasets as D

    ds = D.pbmc4k(genes or None) if dataset == "pbmc4k" else D.load(dataset)
    adata = counts_anndata(ds.counts)
    model = zipo.ZiPo(adata, seed=seed, verbose=False, **{"device": "cpu", **options}).train()
    m, theta, pi = zinb_parameters(model, adata)
    return m, theta, pi if structural_zeros else np.zeros_like(pi)


def draw(m: np.ndarray, theta: np.ndarray, pi: np.ndarray, rng: np.random.Generator):
    """(counts as CSR, each entry's rate) of one draw of the world, made as
    ``datasets.simulate`` makes the simulation: the rate from Gamma(theta, theta / m), its
    Poisson count set to 0 with probability ``pi`` (a structural zero; ``pi`` may be per
    gene)."""
    import scipy.sparse as sp

    rate = m * rng.gamma(theta, 1.0 / theta)
    counts = rng.poisson(rate) * (rng.random(m.shape) >= pi)
    return sp.csr_matrix(counts.astype(np.float32)), rate


def world_split(world: str, p: float, seed: int, truth: tuple | None):
    """(X', X'', true rate, m, theta, pi) of ``seed``'s split: drawn from the fitted ``truth``,
    or the harness's split of the simulation."""
    from . import protocols as P
    from .mcv_variants import mcv_split
    from .splits import PROTOCOLS

    if world == "simulated":
        ds, x1, x2 = mcv_split("simulated", 0, p, seed)
        t = ds.truth
        return x1, x2, t["rate"], t["mean"], t["theta"][None, :], t["pi"][None, :]
    m, theta, pi = truth
    rng = np.random.default_rng([seed, PROTOCOLS.index(f"mcv{p}"), 11])
    counts, rate = draw(m, theta, pi, rng)
    x1, x2 = P.mcv_split(counts, p, rng)
    return x1, x2, rate, m, theta, pi


def scores(world: str, p: float, seed: int, truth: tuple | None, options: dict,
           threads: int) -> dict:
    """One seed's MCV deviance of each of ``ROWS``."""
    import zipo

    from . import protocols as P

    x1, x2, rate, m, theta, pi = world_split(world, p, seed, truth)
    expressed = P.expressed_genes(x1)
    base = P.mean_baseline(np.asarray(x1.sum(axis=1)).ravel(), P.gene_proportions(x1))

    def deviance(pred: np.ndarray) -> float:
        return P.score_mcv(pred, x2, p)["poisson_deviance"]

    def bayes(m_, theta_, pi_) -> float:
        return deviance(P.bayes_mcv_prediction(x1, m_, theta_, pi_, p))

    rec = {"oracle": deviance(P.oracle_mcv_prediction(x1, rate, pi, p)),
           "Bayes floor": bayes(m, theta, pi), "no denoising": deviance(base)}
    adata = counts_anndata(x1[:, expressed])
    model = zipo.ZiPo(adata, seed=seed, verbose=False, **{"device": "cpu", **options}).train()
    full = base.copy()
    full[:, expressed] = model.denoise(adata, expectation="posterior",
                                       copy=True).layers["zipo_denoised"]
    rec["ZiPo"] = deviance(full)
    # ZiPo's parameters at X''s depth, taken back to the whole depth of m (genes without
    # counts in X': the true ones)
    fitted = [np.broadcast_to(v, m.shape).copy() for v in (m, theta, pi)]
    for whole, part, scale in zip(fitted, zinb_parameters(model, adata), (1 / p, 1, 1)):
        whole[:, expressed] = part * scale
    rec["Bayes, ZiPo's m, theta, pi"] = bayes(*fitted)
    rec["Bayes, ZiPo's m, true theta, pi"] = bayes(fitted[0], theta, pi)
    rec["Bayes, true m, ZiPo's theta, pi"] = bayes(m, fitted[1], fitted[2])
    rival = cellmapper_output(x1, seed, threads)
    if rival is not None:
        rec["CellMapper"] = deviance(rival)
    return {"epochs": len(model.history), **rec}


def main(argv=None) -> list[dict]:
    ap = split_arguments(__doc__, "--world")
    ap.add_argument("--world-seed", type=int, default=100, help="seed of the fit the world is")
    ap.add_argument("--world-options", nargs="*", default=[], metavar="KEY=VALUE",
                    help="zipo options of the fit the world is")
    ap.add_argument("--structural-zeros", action="store_true",
                    help="a fitted world also draws the fit's zero inflation")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    options = parse_variant(["options", *args.options])[1]
    truth = None
    if args.world != "simulated":
        truth = fitted_world(args.world, args.genes,
                             parse_variant(["world", *args.world_options])[1], args.world_seed,
                             args.structural_zeros)
    recs = []
    for seed in args.seeds:
        rec = scores(args.world, args.p, seed, truth, options, args.threads)
        print(json.dumps({"seed": seed, **rec}), flush=True)
        recs.append(rec)
    print_means(recs, ROWS, "Bayes floor",
                f"world {args.world}, MCV p = {args.p}, seeds {args.seeds}: MCV Poisson deviance "
                "(mean over seeds), and its distance from the Bayes floor", "prediction",
                "above the floor", 4)
    return recs

if __name__ == "__main__":
    main()
