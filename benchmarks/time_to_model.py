"""Wall time to a trained model, ZiPo's defaults against scVI's (issue 15).

    python -m benchmarks.time_to_model                       # both to their own stopping rule
    python -m benchmarks.time_to_model --epochs 5 --zipo-stop 135 140   # timed epochs, projected

Each method trains on the same cells (``--dataset``, PBMC 4k by default, its ``--genes``
most-detected genes, 0 meaning every detected gene) with its own defaults:
``zipo.ZiPo(adata).train()`` in this process, and ``scvi.model.SCVI(adata).train()`` in the
scVI venv (``python -m benchmarks.run --setup-only``
makes it), both on ``--threads`` CPU threads. Without ``--epochs`` each trains to its own
stopping rule and the time is measured. With ``--epochs N`` each trains N epochs, and the time to
a trained model is projected as seconds per epoch (median after the first) times the epochs its
rule takes: scVI's rule is fixed (``min(round(20000 / cells * 400), 400)`` epochs, no early
stopping), ZiPo's are given by ``--zipo-stop`` (one per ``--genes`` entry, e.g. the epochs its
fits stopped at in ``benchmarks.mcv_variants``). ``--scvi-epochs`` (one per ``--genes`` entry,
0 meaning to its rule) projects scVI alone, while ZiPo trains to its own stop: scVI's epochs to
stop are known in advance, ZiPo's are not. Run it alone: other jobs on the cores inflate every
figure.

    python -m benchmarks.time_to_model --genes 2000 0 --scvi-epochs 0 20   # the RESULTS.md table
    python -m benchmarks.time_to_model --device cuda --scvi-epochs 0 100   # both on a GPU
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SCVI_SCRIPT = r"""
import json, sys, time
import anndata as ad, numpy as np, scvi, torch
from scvi.model._utils import get_max_epochs_heuristic
path, threads, epochs, device = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(threads)
if device == "cuda":  # start CUDA before the clock, as ZiPo's model does in its constructor
    torch.zeros(1, device=device)
scvi.settings.seed, scvi.settings.num_threads, scvi.settings.dl_num_workers = 0, threads, 0
adata = ad.read_h5ad(path)
scvi.model.SCVI.setup_anndata(adata)
model = scvi.model.SCVI(adata)
rule = get_max_epochs_heuristic(adata.n_obs)
accelerator = "gpu" if device == "cuda" else "cpu"
started = time.perf_counter()
model.train(max_epochs=epochs or rule, accelerator=accelerator, devices=1,
            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "epochs": len(model.history["elbo_train"]), "rule": rule}))
"""


def time_zipo(adata, epochs: int, options: dict | None = None, device: str = "cpu") -> dict:
    # torch.optim loads torch._dynamo on its first optimiser (0.8-1.4 s). `import scvi` loads
    # it before scVI's clock starts, so it is loaded here too: both clocks time training only.
    import torch._dynamo  # noqa: F401

    import zipo

    options = dict(options or {})
    if epochs:
        options.update(max_epochs=epochs, early_stopping_patience=10**6)
    model = zipo.ZiPo(adata, seed=0, verbose=False, device=device, **options)
    started = time.perf_counter()
    model.train()
    seconds = time.perf_counter() - started
    per_epoch = model.history["seconds"].to_numpy()
    return {"seconds": seconds, "epochs": len(per_epoch),
            "per_epoch": float(np.median(per_epoch[1:] if len(per_epoch) > 1 else per_epoch))}


def time_scvi(adata, epochs: int, threads: int, device: str = "cpu") -> dict:
    from .venvs import python

    exe = python("scvi")
    if not exe.exists():
        raise SystemExit(f"{exe} not found: make the peer venvs with "
                         "`python -m benchmarks.run --setup-only`")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "counts.h5ad"
        adata.write_h5ad(path)
        args = [str(path), str(threads), str(epochs), device]
        done = subprocess.run([str(exe), "-c", SCVI_SCRIPT, *args], capture_output=True, text=True,
                              check=False)
    if done.returncode != 0:
        raise SystemExit(f"scVI failed:\n{done.stderr[-3000:]}")
    rec = json.loads(done.stdout.strip().splitlines()[-1])
    # Lightning does not report per-epoch times; the mean includes the first epoch.
    rec["per_epoch"] = rec["seconds"] / rec["epochs"]
    return rec


def main(argv=None) -> None:
    from . import datasets as D

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="pbmc4k",
                    choices=["pbmc4k",
                             *(n for n in D.EXTRA_DATASETS if n != "pbmc4k_all_genes")],
                    help="PBMC 4k by default (its every gene: --genes 0)")
    ap.add_argument("--genes", type=int, nargs="+", default=[2000, 0])
    ap.add_argument("--epochs", type=int, default=0, help="epochs to time (0: train to stop)")
    ap.add_argument("--zipo-stop", type=int, nargs="+", default=None,
                    help="with --epochs: ZiPo's epochs to stop, one per --genes entry")
    ap.add_argument("--scvi-epochs", type=int, nargs="+", default=None,
                    help="without --epochs: scVI's epochs to time and project to its fixed rule, "
                         "one per --genes entry (0: train it to its rule)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="where both train (cuda: scVI's accelerator='gpu', ZiPo's defaults "
                         "incl. bfloat16 mixed precision)")
    ap.add_argument("--zipo-options", nargs="*", default=[], metavar="KEY=VALUE",
                    help="zipo options other than its defaults (e.g. likelihood=zinb)")
    ap.add_argument("--skip-scvi", action="store_true", help="time ZiPo only")
    args = ap.parse_args(argv)
    if args.epochs and args.zipo_stop and len(args.zipo_stop) != len(args.genes):
        ap.error("--zipo-stop needs one number per --genes entry")
    if args.scvi_epochs and (args.epochs or len(args.scvi_epochs) != len(args.genes)):
        ap.error("--scvi-epochs needs one number per --genes entry, and no --epochs")

    import anndata as ad
    import torch

    from .mcv_variants import parse_variant

    zipo_options = parse_variant(["zipo", *args.zipo_options])[1]
    torch.set_num_threads(args.threads)
    mode = f"{args.epochs} epochs timed, projected" if args.epochs else "trained to stop"
    if args.scvi_epochs:
        mode += "; scVI projected where it timed fewer epochs than its rule"
    where = (torch.cuda.get_device_name() if args.device == "cuda"
             else f"{args.threads} threads")
    print(f"{args.dataset}, time to a trained model ({mode}), {where}, "
          f"torch {torch.__version__}; zipo options {zipo_options or 'defaults'}")
    print("| genes | method | epochs timed | s/epoch | epochs to stop | time to model (s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for i, n_genes in enumerate(args.genes):
        ds = getattr(D, args.dataset)(n_genes or None)
        adata = ad.AnnData(ds.counts.astype(np.float32))
        adata.obs_names = [f"c{j}" for j in range(adata.n_obs)]
        adata.var_names = [str(g) for g in ds.genes]
        scvi_epochs = args.epochs or (args.scvi_epochs[i] if args.scvi_epochs else 0)
        for method in ("zipo",) if args.skip_scvi else ("zipo", "scvi"):
            rec = (time_zipo(adata, args.epochs, zipo_options, args.device) if method == "zipo"
                   else time_scvi(adata, scvi_epochs, args.threads, args.device))
            if method == "scvi" and scvi_epochs:
                stop, total = rec["rule"], rec["per_epoch"] * rec["rule"]
            elif not args.epochs:
                stop, total = rec["epochs"], rec["seconds"]
            elif args.zipo_stop:
                stop, total = args.zipo_stop[i], rec["per_epoch"] * args.zipo_stop[i]
            else:
                stop, total = None, None
            fmt = (lambda v: "—" if v is None else f"{v:.0f}")  # noqa: E731
            print(f"| {adata.n_vars} | {method} | {rec['epochs']} | {rec['per_epoch']:.2f} | "
                  f"{fmt(stop)} | {fmt(total)} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
