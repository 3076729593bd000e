"""File exchange between the harness and a method's worker process (no zipo import here: the
peer workers run in their own virtualenvs and only need numpy and scipy).

Input ``.npz``: the training counts as CSR parts (``X_data``, ``X_indices``, ``X_indptr``,
``X_shape``) and, for the held-out-cell task, the test cells the same way (``T_*``).
Output ``.npz``: ``pred`` (rate prediction for the training cells, cells x genes, on their own
depth), optionally ``pred_mix`` (the zero-inflated mixture mean), ``pred_lognorm`` (ZiPo's
expected log-normalised expression at the task's ``depth``), ``latent`` (embedding),
``test_nll_sum`` (summed NLL of the test counts), and ``info`` (a JSON string: fit_seconds,
epochs, seconds_per_epoch, ...).
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import scipy.sparse as sp


def save_input(path, x, test=None) -> None:
    arrays = {}
    for prefix, m in (("X", x), ("T", test)):
        if m is None:
            continue
        m = sp.csr_matrix(m, dtype=np.float32)
        arrays.update({f"{prefix}_data": m.data, f"{prefix}_indices": m.indices,
                       f"{prefix}_indptr": m.indptr, f"{prefix}_shape": np.array(m.shape)})
    np.savez(path, **arrays)


def load_input(path):
    z = np.load(path)

    def get(prefix):
        if f"{prefix}_data" not in z:
            return None
        return sp.csr_matrix((z[f"{prefix}_data"], z[f"{prefix}_indices"], z[f"{prefix}_indptr"]),
                             shape=tuple(z[f"{prefix}_shape"]))

    return get("X"), get("T")


def peak_rss_mb() -> float | None:
    """This process's peak resident memory (VmHWM), in MB. Read here rather than from the
    parent's wait4(), whose ru_maxrss also counts the pre-exec image forked from the harness."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def save_output(path, info: dict, **arrays) -> None:
    arrays = {k: v for k, v in arrays.items() if v is not None}
    info = {**info, "peak_rss_mb": peak_rss_mb()}
    tmp = str(path) + ".tmp.npz"
    np.savez(tmp, info=np.array(json.dumps(info)), **arrays)
    os.replace(tmp, path)


def load_output(path) -> tuple[dict, dict]:
    z = np.load(path, allow_pickle=False)
    info = json.loads(str(z["info"]))
    return info, {k: z[k] for k in z.files if k != "info"}


def tasks(methods) -> list[argparse.Namespace]:
    """The fits this process runs, in order: ``worker.py TASKS.json``, a JSON list of
    ``{method, task, input, output, seed, max_epochs, threads[, depth]}`` (one fit per process
    in the full run, so its peak RSS is that fit's; quick mode batches to save interpreter
    starts). ``depth`` (MCV only) is the held-out part's depth relative to the training part's,
    ``(1 - p) / p``."""
    p = argparse.ArgumentParser()
    p.add_argument("tasks", help="JSON file: list of fits")
    spec = json.loads(open(p.parse_args().tasks).read())
    out = []
    for t in spec:
        if t["method"] not in methods:
            raise SystemExit(f"unknown method {t['method']!r} for this worker")
        out.append(argparse.Namespace(**{"seed": 0, "max_epochs": 200, "threads": 1, "depth": None, **t}))
    return out


def pca_scores(y: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centred PCA by SVD: (scores, components, means) with ``k`` components."""
    means = y.mean(axis=0)
    u, s, vt = np.linalg.svd(y - means, full_matrices=False)
    k = min(k, len(s))
    return u[:, :k] * s[:k], vt[:k], means


def n_components(shape, default: int = 50) -> int:
    """The fixed rule for every PCA here: 50 components, at most a quarter of min(cells, genes)."""
    return int(max(2, min(default, min(shape) // 4)))
