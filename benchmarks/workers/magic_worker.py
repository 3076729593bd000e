"""MAGIC worker, run with the python of benchmarks/.venvs/magic (magic-impute + scprep, pinned
in benchmarks/requirements-magic.txt). MAGIC's documented workflow with its defaults: scale each
cell to the median library size (scprep.normalize.library_size_normalize), square root
(scprep.transform.sqrt), ``magic.MAGIC().fit_transform`` on all genes. The imputed values are
brought back to counts by squaring and undoing the library scaling, so they can be scored like
every other method. Embedding: the first 50 principal components of MAGIC's output.
MAGIC is not iterative: no epochs.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402

from wio import load_input, n_components, pca_scores, save_output, tasks  # noqa: E402


def main():
    import magic
    import scprep

    for a in tasks(["magic"]):
        fit(a, magic, scprep)


def fit(a, magic, scprep):
    x, _ = load_input(a.input)
    if a.task != "denoise":
        raise SystemExit("MAGIC has no likelihood: only the denoise task")
    dense = x.toarray().astype(np.float64)
    lib = dense.sum(axis=1)
    scale = float(np.median(lib))
    started = time.perf_counter()
    data = scprep.normalize.library_size_normalize(dense, rescale=scale)
    data = scprep.transform.sqrt(data)
    op = magic.MAGIC(random_state=a.seed, n_jobs=a.threads, verbose=0)
    imputed = np.asarray(op.fit_transform(data, genes="all_genes"), dtype=np.float64)
    fit_seconds = time.perf_counter() - started
    pred = np.clip(imputed, 0.0, None) ** 2 * lib[:, None] / scale
    scores, _, _ = pca_scores(imputed, n_components(imputed.shape), a.seed)
    info = {"fit_seconds": fit_seconds, "epochs": None, "seconds_per_epoch": None,
            "negative_fraction": float((imputed < 0).mean()),
            "magic_impute": getattr(magic, "__version__", "?")}
    save_output(a.output, info, pred=pred.astype(np.float32), latent=scores.astype(np.float32))


if __name__ == "__main__":
    main()
