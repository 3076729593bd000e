"""scVI worker, run with the python of benchmarks/.venvs/scvi (scvi-tools, pinned in
benchmarks/requirements-scvi.txt). scVI's defaults throughout: SCVI(adata) (ZINB, 10 latents,
one hidden layer of 128), its own epoch rule ``min(400, round(20000 / n_cells * 400))`` capped
by the harness's ``--max-epochs``, no early stopping (scVI's default).

Predictions: ZINB parameters averaged over 10 posterior samples of z (``get_likelihood_parameters``
with ``give_mean=True``): ``pred`` is the NB mean (px_rate = observed library x scale),
``pred_mix`` is ``(1 - dropout) * pred``. Held-out NLL: -log ZINB of the test counts at those
parameters (full log-pmf, per entry as zipo.ZiPo.evaluate); scVI's own ``get_reconstruction_error``
(one z sample) goes into ``info`` for reference.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402

from wio import load_input, save_output, tasks  # noqa: E402

N_SAMPLES = 10
CHUNK = 256


def _adata(x):
    import anndata as ad
    import pandas as pd

    # Dense X: scvi-tools' loader then slices rows without sparse conversions (same model).
    return ad.AnnData(
        x.toarray().astype(np.float32), obs=pd.DataFrame(index=[f"c{i}" for i in range(x.shape[0])]),
        var=pd.DataFrame(index=[f"g{j}" for j in range(x.shape[1])]))


def _params(model, adata):
    mean, disp, drop = [], [], []
    for start in range(0, adata.n_obs, CHUNK):
        idx = np.arange(start, min(start + CHUNK, adata.n_obs))
        p = model.get_likelihood_parameters(adata, indices=idx, n_samples=N_SAMPLES,
                                            give_mean=True)
        mean.append(p["mean"])
        disp.append(p["dispersions"])
        drop.append(p["dropout"])
    return np.concatenate(mean), np.concatenate(disp), np.concatenate(drop)


def _zinb_nll(x, mean, theta, pi):
    from scipy.special import gammaln

    x = x.astype(np.float64)
    mean, theta = np.maximum(mean, 1e-8).astype(np.float64), np.maximum(theta, 1e-8).astype(np.float64)
    pi = np.clip(pi.astype(np.float64), 0.0, 1 - 1e-12)
    log_t = np.log(theta) - np.log(theta + mean)
    log_nb = (gammaln(x + theta) - gammaln(theta) - gammaln(x + 1) + theta * log_t
              + x * (np.log(mean) - np.log(theta + mean)))
    log_zero = np.logaddexp(np.log(np.maximum(pi, 1e-300)), np.log1p(-pi) + theta * log_t)
    return -np.where(x > 0, np.log1p(-pi) + log_nb, log_zero)


def main():
    import torch
    import scvi

    for a in tasks(["scvi"]):
        fit(a, torch, scvi)


def fit(a, torch, scvi):
    from scvi.model._utils import get_max_epochs_heuristic

    torch.set_num_threads(a.threads)
    scvi.settings.seed = a.seed
    scvi.settings.num_threads = a.threads
    scvi.settings.dl_num_workers = 0
    x, t = load_input(a.input)
    adata = _adata(x)
    scvi.model.SCVI.setup_anndata(adata)
    model = scvi.model.SCVI(adata)
    epochs = min(get_max_epochs_heuristic(adata.n_obs), a.max_epochs)
    started = time.perf_counter()
    model.train(max_epochs=epochs, accelerator="cpu", devices=1, enable_progress_bar=False,
                enable_model_summary=False, enable_checkpointing=False)
    fit_seconds = time.perf_counter() - started
    reached = int(len(model.history["elbo_train"]))
    info = {"fit_seconds": fit_seconds, "epochs": reached, "epoch_rule": epochs,
            "seconds_per_epoch": fit_seconds / max(reached, 1), "stopped_early": False,
            "scvi_tools": scvi.__version__, "torch": torch.__version__}
    out = {}
    if a.task == "denoise":
        mean, _, drop = _params(model, adata)
        out["pred"] = mean.astype(np.float32)
        out["pred_mix"] = ((1 - drop) * mean).astype(np.float32)
        out["latent"] = model.get_latent_representation().astype(np.float32)
    else:
        test = _adata(t)
        mean, disp, drop = _params(model, test)
        out["test_nll_sum"] = np.array(_zinb_nll(t.toarray(), mean, disp, drop).sum())
        rec = model.get_reconstruction_error(test)["reconstruction_loss"]
        info["scvi_reconstruction_error_per_entry"] = float(rec) / t.shape[1]
    save_output(a.output, info, **out)


if __name__ == "__main__":
    main()
