"""Command line: ``zipo train``, ``zipo denoise``, ``zipo tune``, ``zipo demo``, ``zipo config``.

Every option can come from a TOML config (``--config``); flags given on the command line
override it, and ``--set section.key=value`` reaches any option that has no flag of its own.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from . import __version__
from .files import atomic_path, check_target
from .option_types import LIKELIHOODS
from .outputs import EXPECTATIONS
from .presets import PRESETS
from .tools.search_space import PAPER_SEARCH_SPACE
from .tools.tuning import METRICS

# flag name -> config option it sets
_TRAIN_FLAGS = {
    "layer": "data.layer", "covariates": "data.covariates", "likelihood": "model.likelihood",
    "encoder_dims": "model.encoder_dims", "max_epochs": "train.max_epochs",
    "batch_size": "train.batch_size", "seed": "train.seed", "device": "train.device",
    "learning_rate": "train.learning_rate", "checkpoint_every": "train.checkpoint_every",
}


def _read_cells(paths: list[str], backed: bool = False):
    """The cells of one or several .h5ad files, .zarr stores or Cell Ranger matrices (the same
    genes) as one AnnData; ``backed`` keeps the counts of .h5ad and .zarr on disk."""
    from .data.atlas import read_cells

    return read_cells(paths if len(paths) > 1 else paths[0], backed=backed)


def cmd_train(args) -> None:
    from .config import resolve_config

    options = {option: getattr(args, flag) for flag, option in _TRAIN_FLAGS.items()}
    cfg = resolve_config(args.config, args.preset, options, args.set or [],
                         source="command line")
    if args.quiet:
        cfg.train.verbose = False
    out = check_target(args.out, args.overwrite, hint="--overwrite")
    if args.nproc < 1:
        raise ValueError(f"--nproc must be at least 1, got {args.nproc}")
    _read_cells(args.data, backed=args.backed)  # a clear error now, not in N processes
    job = (args.data, cfg.to_dict(), str(out), args.resume, args.overwrite, args.backed)
    if args.nproc == 1:
        from .train.distributed import closing_process_group

        with closing_process_group():  # the group training joins when torchrun started this
            _train_and_save(*job)
    else:
        from .train.distributed import spawn

        spawn(args.nproc, _train_and_save, job)


def _train_and_save(data: list[str], config: dict, out: str, resume: bool, overwrite: bool,
                    backed: bool) -> None:
    """One training process: ``zipo train``'s work, also run by each of ``--nproc`` processes
    (the one of rank 0 writes the model)."""
    from .config import ZiPoConfig
    from .model import ZiPo
    from .train.distributed import world

    cfg = ZiPoConfig.from_dict(config)
    if "WORLD_SIZE" in os.environ and cfg.train.num_threads is None:
        # N processes share the cores instead of each taking all of them.
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["WORLD_SIZE"])))
    out = Path(out)
    adata = _read_cells(data, backed=backed)
    model = ZiPo(adata, config=cfg)
    # Checkpoints live beside the model directory until the model itself is safely written.
    checkpoints = out.with_name(out.name + ".checkpoint")
    model.train(checkpoint_dir=checkpoints, resume=resume)
    rank, n_proc = world()
    if rank > 0:
        return
    model.save(out, overwrite=overwrite)
    shutil.rmtree(checkpoints, ignore_errors=True)
    model.plot_history(path=out / "history.png")
    h = model.history
    best = h["validation_nll"].min() if "validation_nll" in h else h["train_nll"].min()
    print(f"Trained {len(h)} epochs on {adata.n_obs} cells x {adata.n_vars} genes"
          + (f" with {n_proc} processes" if n_proc > 1 else "")
          + f"; best validation NLL per entry {best:.4f}. Model: {out} (config.toml, history.png).")


def cmd_denoise(args) -> None:
    from .config import parse_assignment
    from .model import ZiPo

    check_target(args.out, args.overwrite, hint="--overwrite")
    covariate_values = dict(parse_assignment(item, "--covariate-value", "NAME=VALUE")
                            for item in args.covariate_value or [])
    model = ZiPo.load(args.model, device=args.device)
    adata = _read_cells(args.data, backed=args.stream)
    options = dict(expectation=args.expectation, zero_inflation=args.zero_inflation,
                   target_sum=args.target_sum, depth=args.depth,
                   key_added=args.key_added, batch_size=args.batch_size,
                   covariate_values=covariate_values or None, genes=args.genes)
    if args.stream:
        # Out of core: the input is read backed and the output written a batch at a time.
        model.denoise(adata, out=args.out, overwrite=args.overwrite, **options).file.close()
    else:
        model.denoise(adata, **options)
        with atomic_path(args.out, args.overwrite, hint="--overwrite") as tmp:
            adata.write_h5ad(tmp, compression="gzip")
    if args.stream:
        counts = "X (denoised)"
    else:
        counts = f"{'obsm' if args.genes else 'layers'}['{args.key_added}_denoised']"
    zero = f"{'obsm' if args.genes and not args.stream else 'layers'}['{args.key_added}_zero_prob']"
    print(f"Denoised {adata.n_obs} cells x {len(args.genes) if args.genes else adata.n_vars} genes into "
          f"{args.out}: {counts}, obsm['X_{args.key_added}'], "
          f"obs['{args.key_added}_library_size']"
          + (f", {zero}" if args.zero_inflation else "") + ".")


def cmd_demo(args) -> None:
    from .demo import run_demo

    run_demo(epochs=args.epochs, out=args.out, seed=args.seed, verbose=not args.quiet)


def cmd_config(args) -> None:
    import tomli_w

    from .config import ZiPoConfig

    sys.stdout.write(tomli_w.dumps(ZiPoConfig().to_dict()))


def cmd_tune(args) -> None:
    from .config import find_option, parse_assignment, resolve_config
    from .tools.tuning import INSTALL_HINT, tune

    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    for item in args.set or []:
        key = parse_assignment(item, "--set", "section.key=value")[0]
        if find_option(key, "--set")[1] in PAPER_SEARCH_SPACE:
            raise ValueError(f"--set {key}: this option is what zipo tune searches")
    cfg = resolve_config(args.config, args.preset, assignments=args.set or [])
    if args.out:
        check_target(args.out, args.overwrite, hint="--overwrite")
    adata = _read_cells([args.data])
    result = tune(adata, n_trials=args.trials, storage=args.storage, study_name=args.study_name,
                  timeout=args.timeout, max_epochs=args.max_epochs, config=cfg, seed=args.seed,
                  out=args.out, overwrite=args.overwrite, metric=args.metric,
                  verbose=args.verbose)
    import pandas as pd

    with pd.option_context("display.max_rows", None, "display.width", 200):
        print(result.trials().to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in result.best_params.items())
    print(f"Best trial {result.study.best_trial.number}: {result.metric} "
          f"{result.best_value:.4f} with {params}.")
    if args.out:
        print(f"Best config written to {args.out}; train it with: "
              f"zipo train {args.data} --config {args.out} --out MODEL_DIR")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zipo", description="Denoise scRNA-seq counts with ZiPo.")
    p.add_argument("--version", action="version", version=f"zipo {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model on raw counts (.h5ad, .zarr, Cell Ranger)")
    t.add_argument("data", nargs="+",
                   help="input .h5ad file, .zarr store (cells x genes, raw counts), or Cell "
                        "Ranger matrix folder or .h5 file; several with the same genes are read "
                        "as one dataset")
    t.add_argument("--out", required=True, help="model directory to write")
    t.add_argument("--config", help="TOML config ([data], [model], [train] tables)")
    t.add_argument("--preset", choices=list(PRESETS),
                   help="starting configuration (the config file and flags override it)")
    t.add_argument("--layer", help="layer with raw counts (default: X)")
    t.add_argument("--covariates", nargs="+", help="obs columns used as known covariates")
    t.add_argument("--likelihood", choices=list(LIKELIHOODS))
    t.add_argument("--encoder-dims", type=int, nargs="+", help="e.g. 2048 1024 512 256 128")
    t.add_argument("--max-epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--learning-rate", type=float)
    t.add_argument("--seed", type=int)
    t.add_argument("--device", help="auto, cpu, cuda, cuda:1 ...")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any config option, e.g. --set model.alpha_z=0.5 (repeatable)")
    t.add_argument("--checkpoint-every", type=int,
                   help="epochs between checkpoints (written to OUT.checkpoint/; default 10)")
    t.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from OUT.checkpoint/")
    t.add_argument("--nproc", type=int, default=1,
                   help="data-parallel training processes on this machine (torch DDP)")
    t.add_argument("--backed", action="store_true",
                   help="read the counts from disk batch by batch instead of loading them "
                        "(.h5ad backed, .zarr with its counts on disk)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    t.set_defaults(func=cmd_train)

    d = sub.add_parser("denoise", help="denoise an .h5ad with a trained model")
    d.add_argument("model", help="model directory written by 'zipo train'")
    d.add_argument("data", nargs="+",
                   help="input .h5ad, .zarr or Cell Ranger matrix (folder or .h5) with the "
                        "model's genes; several are read as one dataset")
    d.add_argument("--out", required=True, help="output .h5ad")
    d.add_argument("--expectation", choices=EXPECTATIONS, default="posterior",
                   help="posterior: the rate given each count (default; the rate under ZIP); "
                        "rate: l*mu; mixture: (1-z)*l*mu; lognorm: E[log1p(target_sum "
                        "* X / l)], what normalize_total + log1p (natural log) would average")
    d.add_argument("--target-sum", type=float, default=1e4,
                   help="counts per cell that lognorm normalises to (default 1e4)")
    d.add_argument("--depth", type=float, default=1.0,
                   help="predict a measurement at this multiple of each cell's library size")
    d.add_argument("--zero-inflation", action="store_true", help="also write zero probabilities")
    d.add_argument("--key-added", default="zipo")
    d.add_argument("--covariate-value", action="append", metavar="NAME=VALUE",
                   help="predict every cell at this covariate value (e.g. batch=donor1)")
    d.add_argument("--genes", nargs="+", help="denoise only these genes")
    d.add_argument("--stream", action="store_true",
                   help="read the input from disk and write --out a batch at a time (any size)")
    d.add_argument("--batch-size", type=int)
    d.add_argument("--device", default="cpu")
    d.add_argument("--overwrite", action="store_true")
    d.set_defaults(func=cmd_denoise)

    e = sub.add_parser("demo", help="train briefly on the PBMC sample shipped with zipo")
    e.add_argument("--epochs", type=int, default=60)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", help="also save the model and its training plot here")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_demo)

    c = sub.add_parser("config", help="print the default config as TOML")
    c.set_defaults(func=cmd_config)

    u = sub.add_parser("tune", help="search encoder shape, alpha_z and alpha_w with Optuna")
    u.add_argument("data", help="input .h5ad, .zarr or Cell Ranger matrix (raw counts)")
    u.add_argument("--trials", type=int, required=True,
                   help="finished trials the study should hold in total")
    u.add_argument("--storage", help="Optuna storage URL, e.g. sqlite:///tune.db (resumable)")
    u.add_argument("--study-name", default="zipo", help="study to create or resume (default zipo)")
    u.add_argument("--out",
                   help="write the best trial's config here (.toml, for zipo train --config)")
    u.add_argument("--config", help="TOML config every trial starts from")
    u.add_argument("--preset", choices=list(PRESETS),
                   help="starting configuration (the config file and --set override it)")
    u.add_argument("--max-epochs", type=int, help="cap on each trial's epochs")
    u.add_argument("--timeout", type=float, help="start no new trial after this many seconds")
    u.add_argument("--metric", choices=METRICS,
                   help="score to minimise (default: validation_heldout_nll when "
                        "train.heldout_molecules > 0, as by default, else validation_nll)")
    u.add_argument("--seed", type=int, default=0,
                   help="seeds the sampler and every trial (default 0)")
    u.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any config option, e.g. --set batch_size=128 (repeatable)")
    u.add_argument("--verbose", action="store_true", help="Optuna's log and a progress bar")
    u.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    u.set_defaults(func=cmd_tune)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ValueError as e:
        print(f"zipo {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
