"""How much of the defaults' held-out deviance could recalibrating or combining their output
remove? Bounds in hindsight (issue 39).

    python -m benchmarks.headroom --dataset pbmc4k --p 0.9 --seeds 0 1 2 --threads 2

ZiPo (with ``--options``) is trained on the harness's MCV split of each seed, as
``benchmarks.mcv_variants`` trains it, and its posterior output is changed after training in
ways a default could take up. Each is scored against the test molecules ``X''`` as the
harness scores (MCV Poisson deviance, genes without counts in ``X'`` at the no-denoising
baseline), and where a change has a free parameter the best value *for the test molecules*
is taken, so every row except ``own count hidden`` is an upper bound on what the change could
gain, never a candidate (no default may be chosen on these molecules):

- ``default``: the posterior output (with the model's neighbour pooling and fits);
- ``own count hidden (zero)``, ``(expected)``: each gene's rate, dispersion and zero
  inflation from the encoder given the cell's counts with that gene's hidden (the genes in
  ``--groups`` random groups, one pass each; hidden as 0, or as the count the model expected
  from the full input). The network's rate saw the count that the posterior then adds again;
  does it count it twice?
- ``dispersion x c, best``: theta scaled by the best c of ``DISPERSION_SCALES`` for all genes;
- ``dispersion per gene, best``: each gene scaled by its own best c (the most any per-gene
  recalibration of the shrinkage could gain);
- ``dropout zeros kept``: not a bound: the posterior with each zero the model calls a dropout
  taken as a structural zero, whose held-out molecules are 0 too (the rate given a zero
  weighted by the chance that it is not a dropout), where the default imputes the rate;
- ``borrowing and dispersion, validation's choice``: not a bound but a candidate: the
  borrowing (k, w) and a dispersion scale c chosen together on the validation cells'
  held-out molecules, what ``train.dispersion_choice = "auto"`` chooses
  (``zipo.neighbours.choose_pooling``; the model's own choice on a tie);
- ``+ CellMapper, best mix``: ``(1 - a) ZiPo + a CellMapper`` at the best a of ``MIX``, with
  CellMapper run as the harness runs it (its venv, ``python -m benchmarks.run --setup``):
  what combining with the kNN smoother's output could gain.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from .datasets import DATASETS, EXTRA_DATASETS
from .mcv_variants import mcv_anndata, parse_variant

# The scales validation chooses among (None: zipo's, ``CANDIDATE_DISPERSION_SCALES``).
DISPERSION_CHOICES = None
DISPERSION_SCALES = (0.05, 0.1, 0.25, 0.5, 0.7, 1.0, 1.4, 2.0, 4.0, 8.0)
MIX = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
ROWS = ("default", "own count hidden (zero)", "own count hidden (expected)",
        "dispersion x c, best", "dispersion per gene, best", "dropout zeros kept",
        "borrowing and dispersion, validation's choice", "+ CellMapper, best mix")


def validation_choice(fit):
    """The borrowing (k, w) and dispersion scale c of ``fit`` chosen together on its validation
    cells' held-out molecules by ``zipo.neighbours.choose_pooling`` over ``DISPERSION_CHOICES``
    (``train.dispersion_choice = "auto"``; the model's own pooling where none was chosen)."""
    import torch

    from zipo.neighbours import CANDIDATE_DISPERSION_SCALES, choose_pooling

    if not fit.pooling.scores:  # no choice was made (borrowing off, or not applicable)
        return fit.pooling
    counts, _ = fit._model_counts(fit.adata, check=False)
    train = fit.config.train
    return choose_pooling(fit.network, counts, fit._summary.library_size,
                          torch.from_numpy(fit.get_latent()), fit.validation_batches(),
                          train.heldout_molecules, train.seed, fixed=fit.validation_split,
                          scales=DISPERSION_CHOICES or CANDIDATE_DISPERSION_SCALES)


def dropouts_kept(x, o, pooled, rate):
    """``rate``, the posterior of :func:`zipo.distributions.posterior_rate` for counts ``x``
    and network output ``o``, with the share it imputes to each zero as a dropout removed:
    (1 - P(dropout | 0)) times the rate given a zero of the NB part."""
    import torch

    m, theta = torch.exp(o.log_mean), torch.exp(o.log_theta)
    log_nb_zero = -theta * torch.logaddexp(o.log_mean - o.log_theta, torch.zeros(()))
    dropout = torch.sigmoid(o.logit_z - log_nb_zero)
    prior = m if pooled is None else (theta + pooled[0]) * m / (theta + pooled[1] * m)
    return torch.where(x > 0, rate, rate - dropout * prior)


def posterior_variants(model, adata, groups: np.ndarray) -> dict:
    """The model's posterior output (cells x model genes, the mean over its fits) at each
    dispersion scale (keyed by the scale), with each gene's own count hidden (keyed
    ``"zero"`` and ``"expected"``), with dropout zeros kept (keyed ``"dropouts kept"``, zero
    inflation only), and with each fit's :func:`validation_choice` (keyed
    ``"validation"``; the choices under ``"choices"``)."""
    import torch

    from zipo.distributions import posterior_rate
    from zipo.neighbours import pool_for
    from zipo.nn.sparse import as_dense

    fits = [model, *model.further_fits]
    outputs: dict = {"choices": []}
    masks = [torch.as_tensor(groups == g) for g in np.unique(groups)]
    with torch.no_grad():
        for fit in fits:
            net, pool = fit.network, pool_for(fit, adata)
            own_pooling = fit.pooling
            try:
                fit.pooling = validation_choice(fit)
                chosen_scale = fit.pooling.dispersion_scale
                outputs["choices"].append(f"k={fit.pooling.neighbours},"
                                          f"w={fit.pooling.weight:g},c={chosen_scale:g}")
                chosen_pool = pool_for(fit, adata)
            finally:
                fit.pooling = own_pooling
            net.eval()
            parts: dict = {}
            for x, c, idx in model.cell_batches(adata):
                pooled = pool(idx, x) if pool is not None else None
                chosen_pooled = chosen_pool(idx, x) if chosen_pool is not None else None
                x = as_dense(x).float()
                o = net(x, c)
                parts.setdefault("validation", []).append(posterior_rate(
                    x, o.log_mean, o.logit_z, o.log_theta + float(np.log(chosen_scale)),
                    chosen_pooled))
                for scale in DISPERSION_SCALES:
                    parts.setdefault(scale, []).append(posterior_rate(
                        x, o.log_mean, o.logit_z, o.log_theta + float(np.log(scale)), pooled))
                if o.logit_z is not None:
                    parts.setdefault("dropouts kept", []).append(
                        dropouts_kept(x, o, pooled, parts[1.0][-1]))
                expected = torch.exp(o.log_mean)
                if o.logit_z is not None:
                    expected = expected * torch.sigmoid(-o.logit_z)
                for key, fill in (("zero", torch.zeros_like(x)), ("expected", expected)):
                    heads = [None if t is None else torch.empty_like(t)
                             for t in (o.log_mean, o.logit_z, o.log_theta)]
                    for mask in masks:
                        h = net.heads(net.encode(torch.where(mask, fill, x)), x, c)
                        for full, part in zip(heads, (h.log_mean, h.logit_z, h.log_theta)):
                            if full is not None:
                                full[:, mask] = part[:, mask]
                    parts.setdefault(key, []).append(posterior_rate(x, *heads, pooled))
            for key, chunks in parts.items():  # (the fits' mean)
                value = torch.cat(chunks).double().numpy() / len(fits)
                outputs[key] = value if key not in outputs else outputs[key] + value
    return outputs


def deviance_by_gene(pred: np.ndarray, x2, p: float) -> np.ndarray:
    """Each gene's share of the harness's mean MCV Poisson deviance (they sum to it)."""
    from . import protocols as P

    entries = P.poisson_deviance_entries(pred * (1.0 - p) / p, x2)
    return entries.sum(axis=0) / entries.size


def cellmapper_output(x1, seed: int, threads: int) -> np.ndarray | None:
    """CellMapper's output on ``X'`` as the harness runs it (None when its venv is missing)."""
    from . import venvs
    from .runner import METHODS, WORKERS, run_worker
    from .workers.wio import load_output, save_input

    venv = METHODS["cellmapper"].venv
    if not venvs.ready(venv):
        print(f"headroom: no {venv} venv (python -m benchmarks.run --setup): no mix row")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_input(tmp / "in.npz", x1)
        (tmp / "tasks.json").write_text(json.dumps([{
            "method": "cellmapper", "task": "denoise", "input": str(tmp / "in.npz"),
            "output": str(tmp / "out.npz"), "seed": seed, "threads": threads}]))
        code, _, _ = run_worker([str(venvs.python(venv)), str(WORKERS / METHODS["cellmapper"].script),
                                 str(tmp / "tasks.json")], tmp, 600, threads, tmp / "log.txt")
        if code != 0:
            raise RuntimeError(f"CellMapper failed: {(tmp / 'log.txt').read_text()[-2000:]}")
        return load_output(tmp / "out.npz")[1]["pred"].astype(np.float64)


def headroom(options: dict, seed: int, p: float, dataset: str, n_genes: int, groups: int,
             threads: int) -> dict:
    """One fit's row: MCV deviance of each of ``ROWS`` (and the parameter each bound took)."""
    import zipo
    from zipo.distributions import likelihood_flags

    from . import protocols as P

    _, adata, x1, x2, expressed = mcv_anndata(dataset, n_genes, p, seed)
    model = zipo.ZiPo(adata, seed=seed, verbose=False, **{"device": "cpu", **options})
    if not likelihood_flags(model.config.model.likelihood)[1]:
        raise SystemExit("headroom: the posterior differs from the rate only under NB or ZINB")
    model.train()
    rng = np.random.default_rng(seed)
    outputs = posterior_variants(model, adata, rng.integers(0, groups, adata.n_vars))
    base = P.mean_baseline(np.asarray(x1.sum(axis=1)).ravel(), P.gene_proportions(x1))

    def full(values):
        out = base.copy()
        out[:, expressed] = values
        return out

    by_gene = np.stack([deviance_by_gene(full(outputs[s]), x2, p) for s in DISPERSION_SCALES])
    totals = by_gene.sum(axis=1)
    best = int(np.argmin(totals))
    default = full(outputs[1.0])
    rec = {"epochs": len(model.history), "default": float(totals[DISPERSION_SCALES.index(1.0)]),
           "own count hidden (zero)": P.score_mcv(full(outputs["zero"]), x2, p)["poisson_deviance"],
           "own count hidden (expected)": P.score_mcv(full(outputs["expected"]), x2,
                                                      p)["poisson_deviance"],
           "dispersion x c, best": float(totals[best]), "dispersion scale": DISPERSION_SCALES[best],
           "dispersion per gene, best": float(by_gene.min(axis=0).sum()),
           **({"dropout zeros kept": P.score_mcv(full(outputs["dropouts kept"]), x2,
                                                 p)["poisson_deviance"]}
              if "dropouts kept" in outputs else {}),
           "borrowing and dispersion, validation's choice": P.score_mcv(
               full(outputs["validation"]), x2, p)["poisson_deviance"],
           "choices": outputs["choices"]}
    rival = cellmapper_output(x1, seed, threads)
    if rival is not None:
        mixes = [P.score_mcv((1 - a) * default + a * rival, x2, p)["poisson_deviance"] for a in MIX]
        rec.update({"+ CellMapper, best mix": min(mixes), "mix": MIX[int(np.argmin(mixes))],
                    "CellMapper": P.score_mcv(rival, x2, p)["poisson_deviance"]})
    return rec


def split_arguments(description: str, dataset_flag: str) -> argparse.ArgumentParser:
    """The arguments of a run over the harness's MCV splits of one dataset (named by
    ``dataset_flag``) and several seeds."""
    ap = argparse.ArgumentParser(description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(dataset_flag, default="pbmc4k", choices=[*DATASETS, *EXTRA_DATASETS])
    ap.add_argument("--p", type=float, default=0.9, choices=[0.9, 0.5])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--genes", type=int, default=2000, help="pbmc4k: most-detected genes kept")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--options", nargs="*", default=[], metavar="KEY=VALUE",
                    help="zipo options of the fits scored")
    return ap


def print_means(recs: list[dict], rows, reference: str, title: str, first: str,
                last: str, digits: int) -> None:
    """A markdown table of each row's mean over ``recs`` and its change against the mean of
    the ``reference`` row (rows missing from a record are left out)."""
    print(f"\n{title}")
    print(f"| {first} | deviance | {last} |\n| --- | ---: | ---: |")
    base = np.mean([r[reference] for r in recs])
    for row in rows:
        if all(row in r for r in recs):
            value = np.mean([r[row] for r in recs])
            print(f"| {row} | {value:.{digits}f} | {100 * (value / base - 1):+.2f}% |")


def main(argv=None) -> list[dict]:
    ap = split_arguments(__doc__, "--dataset")
    ap.add_argument("--groups", type=int, default=10, help="gene groups hidden in turn")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    options = parse_variant(["options", *args.options])[1]
    recs = []
    for seed in args.seeds:
        rec = headroom(options, seed, args.p, args.dataset, args.genes, args.groups, args.threads)
        print(json.dumps({"seed": seed, **rec}), flush=True)
        recs.append(rec)
    print_means(recs, (*ROWS, "CellMapper"), "default",
                f"{args.dataset}, MCV p = {args.p}, seeds {args.seeds}: MCV Poisson deviance "
                "(mean over seeds), change against the default output", "output", "change", 5)
    return recs


if __name__ == "__main__":
    main()
