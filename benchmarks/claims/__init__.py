"""Reproduce the paper's claims 1-7 (docs/method.md) and write benchmarks/CLAIMS.md.

    python -m benchmarks.claims --quick        # pbmc_small, 2 seeds, 3 epochs, ~30 s (smoke test)
    python -m benchmarks.claims --full         # PBMC 4k (2,000 genes), 3 seeds, <= 60 epochs,
                                               # 2 fits at a time: ~1 h on 2 idle cores
    python -m benchmarks.claims --full --resume           # continue a cut-off run
    python -m benchmarks.claims --full --claims 3 5       # only some claims
    python -m benchmarks.claims --full --report-only      # rewrite CLAIMS.md from the cache

The full mode writes benchmarks/CLAIMS.md, the quick mode benchmarks/out/claims-quick/CLAIMS.md
(``--out`` to choose).

Every variant the claims need is fitted once per seed (a variant shared by several claims, e.g.
the paper's default model, is fitted once) and scored on its own held-out validation cells:

- ``nll``: validation NLL per matrix entry of the restored (best-validation-loss) weights;
- ``mse_rate``: mean over validation entries of ``(l mu - x)^2``, the "rate" expectation;
- ``mean_z``: mean zero-inflation probability over validation entries;
- ``sparsity``: fraction of first-layer weights with ``|w| / max_g |w_ig| < 1e-4`` (row-wise);
- ``prune_*``: :meth:`zipo.ZiPo.prune` at delta = 1e-4 (when zipo has it);
- ``status``: ``ok``, ``stalled`` (validation NLL less than 1% below the no-model baseline,
  ``ZiPo.baseline_nll()``) or ``diverged`` (``FloatingPointError`` or a NaN validation NLL).

Each cell of the tables is mean +- lambda x SEM over seeds (lambda = 1.6449, as in the paper and
``benchmarks/report.py``); a difference counts only where these bars do not overlap. Every fit's
result is appended as one JSON line to ``<out dir>/.claims_cache/<mode>.jsonl`` (gitignored), so
``--resume`` skips what is done. Claim 7 (seconds per epoch against the number of cells) runs
after the fits, one at a time, so its timings are not shared with a parallel fit.
"""

# This docstring is also the command's --help. Modules: plan (modes, variants, the fits to
# make), fit (one fit or timing, scored), cache (finished fits), verdicts (bars and the rules on
# them), report and header (CLAIMS.md), cli (the command).

