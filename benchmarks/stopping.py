"""Stopping rules in hindsight: the rounds each rule would have trained and the model it would
have kept, read off one training run (issue 39).

    python -m benchmarks.stopping --dataset pbmc4k --p 0.9 --seeds 0 1 2 --options preset=fast

ZiPo (with ``--options``) is trained to its own rule on the harness's MCV split of each seed,
as ``benchmarks.mcv_variants`` trains it, recording every round's watched validation score,
the plateau's cuts, and the weights of every round that improved on the best. A rule that
only stops sooner follows the same trajectory up to its stop, so what it keeps is one of those
rounds: no second fit is needed. For each rule the table gives the rounds it trains (all of a
model's fits together, as a share of what the configured rule trained), the watched
validation score of what it keeps (mean over the fits), and the MCV Poisson deviance of the
model's posterior output scored as the harness scores it, with the neighbour pooling chosen
again on the kept weights. Rules:

- ``trained``: the run's own (a check: its deviance is the run's);
- ``first cut``: stop at the plateau's first learning-rate cut (``plateau_stop = 1``);
- ``early x0.75``, ``early x0.5``: early stopping's patience scaled down;
- ``first cut, early x0.5``: both;
- ``second cut x0.5``: the plateau's patience halved after its first cut, so that the
  second cut, which ends training (``plateau_stop = 2``), comes sooner;
- ``first cut if stalled x0.5``, ``x0.25``: stop at the first cut only if the watched score
  has not improved at all (by any amount) for that share of the plateau's patience; a score
  still creeping down by less than the plateau's threshold trains on.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field

import numpy as np

from .datasets import DATASETS, EXTRA_DATASETS
from .mcv_variants import mcv_anndata, parse_variant

# name: (plateau_stop, early stopping's patience scale, the plateau's patience scale after
# its first cut, the stall at the first cut that stops, as a share of the plateau's patience);
# None: the run's own plateau_stop
RULES = {"trained": (None, 1.0, 1.0, None), "first cut": (1, 1.0, 1.0, None),
         "early x0.75": (None, 0.75, 1.0, None), "early x0.5": (None, 0.5, 1.0, None),
         "first cut, early x0.5": (1, 0.5, 1.0, None), "second cut x0.5": (None, 1.0, 0.5, None),
         "first cut if stalled x0.5": (None, 1.0, 1.0, 0.5),
         "first cut if stalled x0.25": (None, 1.0, 1.0, 0.25)}


@dataclass
class Trajectory:
    """One fit's rounds: watched score, plateau cuts so far, and the weights of each new best."""

    patience: int  # early stopping's, in rounds (scaled by the trainer)
    threshold: float
    plateau_stop: int
    plateau_patience: int = 0  # the plateau's, in rounds (scaled by the trainer)
    scores: list[float] = field(default_factory=list)
    cuts: list[int] = field(default_factory=list)
    bad_rounds: list[int] = field(default_factory=list)  # the plateau's count after each round
    best_states: dict[int, dict] = field(default_factory=dict)

    def stop_row(self, plateau_stop: int | None, patience_scale: float,
                 after_cut_scale: float = 1.0, stall: float | None = None) -> int:
        """The last round a rule trains: the plateau's ``plateau_stop``-th cut (None: the
        run's own setting), early stopping with its patience scaled, the plateau's second cut
        with its patience after the first scaled (under ``plateau_stop`` = 2), the first cut
        when the score has not improved for ``stall`` x the plateau's patience, or the run's
        end."""
        stop_at = plateau_stop or self.plateau_stop
        patience = max(1, round(self.patience * patience_scale))
        after_cut = max(1, round(self.plateau_patience * after_cut_scale))
        best, progress, improved = np.inf, 0, 0
        for row, (score, cuts) in enumerate(zip(self.scores, self.cuts)):
            if score < best - self.threshold * abs(best) or row == 0:
                progress = row
            if score < best:
                improved = row
            best = min(best, score)
            if row - progress >= patience or 0 < stop_at <= cuts:
                return row
            second_cut = after_cut_scale < 1 and stop_at == 2 and cuts == 1
            if second_cut and self.bad_rounds[row] > after_cut:
                return row
            first_cut = cuts == 1 and (row == 0 or self.cuts[row - 1] == 0)
            if stall is not None and first_cut and row - improved >= stall * self.plateau_patience:
                return row
        return len(self.scores) - 1

    def kept_row(self, stop: int) -> int:
        """The best round up to ``stop`` (the first of equal scores, as early stopping keeps)."""
        return int(np.argmin(self.scores[:stop + 1]))


def recording_trainers(trajectories: list[Trajectory]):
    """Patch the Trainer so each run appends its :class:`Trajectory` (in the order fits train);
    returns a function that undoes the patch."""
    from zipo.train import trainer as T
    from zipo.train.schedule import monitored_column

    original_init, original_end = T.Trainer.__init__, T.Trainer._end_round

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.trajectory = Trajectory(self.stopper.patience, self.stopper.threshold,
                                     self.schedule.stop_cut, self.schedule.patience)
        trajectories.append(self.trajectory)

    def end_round(self, sums, lr):
        row = original_end(self, sums, lr)
        traj = self.trajectory
        traj.scores.append(float(row[monitored_column(row)]))
        traj.cuts.append(self.schedule.cuts)
        traj.bad_rounds.append(self.schedule.bad_epochs)
        if self.stopper.best_epoch == len(self.history) - 1:
            traj.best_states[len(traj.scores) - 1] = {
                k: v.detach().clone() for k, v in self.stopper.best_state.items()}
        return row

    T.Trainer.__init__, T.Trainer._end_round = init, end_round

    def undo():
        T.Trainer.__init__, T.Trainer._end_round = original_init, original_end
    return undo


def score_rules(options: dict, seed: int, p: float, dataset: str, n_genes: int,
                max_epochs: int) -> dict[str, dict]:
    """Train one model on the split of ``seed`` and score each rule of :data:`RULES`."""
    import zipo
    from zipo.neighbours import choose_for

    from . import protocols as P

    _, adata, x1, x2, expressed = mcv_anndata(dataset, n_genes, p, seed)
    trajectories: list[Trajectory] = []
    undo = recording_trainers(trajectories)
    try:
        model = zipo.ZiPo(adata, seed=seed, verbose=False, max_epochs=max_epochs,
                          **{"device": "cpu", **options}).train()
    finally:
        undo()
    fits = [model, *model.further_fits]
    assert len(fits) == len(trajectories), "one recorded run per fit"
    full = P.mean_baseline(np.asarray(x1.sum(axis=1)).ravel(), P.gene_proportions(x1))
    trained_rounds = sum(len(t.scores) for t in trajectories)
    out = {}
    for rule, (plateau_stop, scale, after_cut, stall) in RULES.items():
        stops = [t.stop_row(plateau_stop, scale, after_cut, stall) for t in trajectories]
        kept = [t.kept_row(stop) for t, stop in zip(trajectories, stops)]
        for fit, traj, row in zip(fits, trajectories, kept):
            fit.network.load_state_dict(traj.best_states[row])
            fit.network.eval()
            fit.pooling = choose_for(fit)
        full[:, expressed] = model.denoise(adata, expectation="posterior",
                                           copy=True).layers["zipo_denoised"]
        out[rule] = {"rounds": sum(s + 1 for s in stops),
                     "share": sum(s + 1 for s in stops) / trained_rounds,
                     "validation": float(np.mean([t.scores[r] for t, r in zip(trajectories, kept)])),
                     "deviance": P.score_mcv(full, x2, p)["poisson_deviance"]}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--options", nargs="*", default=[], metavar="KEY=VALUE",
                    help="zipo options of the runs (default: the defaults)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--p", type=float, default=0.9, choices=[0.9, 0.5])
    ap.add_argument("--dataset", default="pbmc4k", choices=[*DATASETS, *EXTRA_DATASETS])
    ap.add_argument("--genes", type=int, default=2000, help="pbmc4k: most-detected genes kept")
    ap.add_argument("--max-epochs", type=int, default=400)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    options = parse_variant(["run", *args.options])[1]
    records: dict[str, list[dict]] = {rule: [] for rule in RULES}
    for seed in args.seeds:
        for rule, rec in score_rules(options, seed, args.p, args.dataset, args.genes,
                                     args.max_epochs).items():
            print(json.dumps({"dataset": args.dataset, "p": args.p, "seed": seed, "rule": rule,
                              **rec}), flush=True)
            records[rule].append(rec)
    base = np.mean([r["deviance"] for r in records["trained"]])
    print(f"\n{args.dataset}, MCV p = {args.p}, seeds {args.seeds}, options {options or 'defaults'}")
    print("| rule | rounds (share) | validation | MCV deviance, posterior | change |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for rule, recs in records.items():
        dev = [r["deviance"] for r in recs]
        print(f"| {rule} | {np.mean([r['rounds'] for r in recs]):.1f} "
              f"({np.mean([r['share'] for r in recs]):.0%}) | "
              f"{np.mean([r['validation'] for r in recs]):.5f} | "
              f"{np.mean(dev):.4f} ± {np.std(dev):.4f} | {np.mean(dev) / base - 1:+.2%} |")
    return records


if __name__ == "__main__":
    main()
