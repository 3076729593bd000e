"""Tables (Markdown) and the bar-chart figure from a run's ``results.json``.

    python -m benchmarks.report benchmarks/out/full/results.json   # print the tables

Each cell is mean +- lambda x SEM over seeds, lambda = Phi^-1(0.99) / sqrt(2) ~= 1.64 as in the
paper, so two bars that do not overlap differ at p < 0.01 (one-sided).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

LAMBDA = 1.6449  # Phi^-1(0.99) / sqrt(2)

# (protocol, metric, label, lower is better)
ACCURACY = [
    ("mcv0.9", "poisson_nll", "MCV p=0.9: Poisson NLL", True),
    ("mcv0.9", "poisson_deviance", "MCV p=0.9: Poisson deviance", True),
    ("mcv0.9", "sqrt_mse", "MCV p=0.9: MSE of sqrt", True),
    ("mcv0.9", "op_mse_log1p", "OpenProblems MSE (log1p, 1e4/cell), p=0.9", True),
    ("mcv0.9", "op_mse_log1p_lognorm", "OpenProblems log MSE, ZiPo lognorm expectation, p=0.9",
     True),
    ("mcv0.5", "poisson_nll", "MCV p=0.5: Poisson NLL", True),
    ("mcv0.5", "poisson_deviance", "MCV p=0.5: Poisson deviance", True),
    ("mcv0.5", "sqrt_mse", "MCV p=0.5: MSE of sqrt", True),
    ("masked", "masked_median_abs_error", "Masked (scVI 0.6.8): median abs. error", True),
    ("heldout", "heldout_nll", "Held-out-cell NLL per entry", True),
    ("mcv0.9", "truth_sqrt_mse", "Truth: MSE of sqrt vs true rate (p=0.9 fit)", True),
    ("mcv0.9", "truth_log1p_mse", "Truth: MSE of log1p vs true rate (p=0.9 fit)", True),
]
MIXTURE = [
    ("mcv0.9", "poisson_nll_mix", "MCV p=0.9: Poisson NLL, mixture mean", True),
    ("mcv0.9", "sqrt_mse_mix", "MCV p=0.9: MSE of sqrt, mixture mean", True),
    ("mcv0.5", "poisson_nll_mix", "MCV p=0.5: Poisson NLL, mixture mean", True),
]
LATENT = [
    ("latent", "kmeans_ari", "k-means ARI", False),
    ("latent", "kmeans_nmi", "k-means NMI", False),
    ("latent", "leiden_ari", "Leiden ARI", False),
    ("latent", "leiden_nmi", "Leiden NMI", False),
    ("latent", "leiden_clusters", "Leiden clusters (count)", None),
]
COST = [
    ("mcv0.9", "fit_seconds", "Wall time to stop (s), p=0.9 fit", True),
    ("mcv0.9", "epochs", "Epochs run (cap in header)", None),
    ("mcv0.9", "best_epoch", "Best (restored) epoch", None),
    ("mcv0.9", "seconds_per_epoch", "Seconds per epoch", True),
    ("mcv0.9", "peak_rss_mb", "Peak RSS of the fit's process (MB)", True),
]
FIGURE = [ACCURACY[0], ACCURACY[2], ACCURACY[3], ACCURACY[5], ACCURACY[8], ACCURACY[9],
          ACCURACY[10], LATENT[0], LATENT[2], COST[0], COST[4]]
ORDER = ["zipo", "zipo_paper", "zipo_dca", "scvi", "cellmapper", "magic", "mean", "pca", "oracle"]
LABELS = {"zipo": "ZiPo", "zipo_paper": "ZiPo (paper)", "zipo_dca": "DCA (ZiPo preset)",
          "scvi": "scVI", "cellmapper": "CellMapper", "magic": "MAGIC", "mean": "no denoising", "pca": "PCA low-rank",
          "oracle": "oracle (truth)"}
PEERS = ["zipo_dca", "scvi", "cellmapper", "magic"]
BASELINES = ["mean", "pca"]
COLORS = {"zipo": "#1b6ca8", "zipo_paper": "#6baed6", "zipo_dca": "#fd8d3c", "scvi": "#31a354",
          "magic": "#a05195", "cellmapper": "#e6ab02", "mean": "#969696", "pca": "#636363", "oracle": "#000000"}


def aggregate(records: list[dict]) -> dict:
    """{(dataset, protocol, method, metric): (mean, half-width, n)} over seeds."""
    values: dict = {}
    for r in records:
        if r.get("status") != "ok":
            continue
        for k, v in r.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "seed" and v is not None:
                values.setdefault((r["dataset"], r["protocol"], r["method"], k), []).append(float(v))
    out = {}
    for key, vs in values.items():
        a = np.asarray(vs)
        half = LAMBDA * a.std(ddof=1) / np.sqrt(len(a)) if len(a) > 1 else float("nan")
        out[key] = (float(a.mean()), float(half), len(a))
    return out


def _fmt(v: float, h: float) -> str:
    if v is None or not np.isfinite(v):
        return "n/a"
    s = f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3g}"
    if np.isfinite(h):
        s += f" ± {h:.2g}"
    return s


def _methods(agg, dataset) -> list[str]:
    present = {k[2] for k in agg if k[0] == dataset}
    return [m for m in ORDER if m in present]


def table(agg, dataset: str, rows, title: str) -> str:
    methods = _methods(agg, dataset)
    rows = [r for r in rows if any((dataset, r[0], m, r[1]) in agg for m in methods)]
    if not rows:
        return ""
    lines = [f"**{title}**", "",
             "| metric | " + " | ".join(LABELS[m] for m in methods) + " |",
             "| --- |" + " --- |" * len(methods)]
    for proto, metric, label, lower in rows:
        cells = []
        contenders = {m: agg[(dataset, proto, m, metric)][0] for m in methods
                      if (dataset, proto, m, metric) in agg and m != "oracle"}
        best = None
        if lower is not None and contenders:
            best = (min if lower else max)(contenders, key=contenders.get)
        for m in methods:
            key = (dataset, proto, m, metric)
            if key not in agg:
                cells.append("—")
                continue
            v, h, _ = agg[key]
            c = _fmt(v, h)
            cells.append(f"**{c}**" if m == best else c)
        arrow = "" if lower is None else (" ↓" if lower else " ↑")
        lines.append(f"| {label}{arrow} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def standing(agg, dataset: str) -> str:
    """ZiPo (the defaults) against the best peer on every metric."""
    lines = ["| metric | ZiPo | best other ZiPo | best peer | best baseline | ZiPo vs best peer |",
             "| --- | --- | --- | --- | --- | --- |"]
    for proto, metric, label, lower in ACCURACY + LATENT + COST:
        if lower is None:
            continue
        z = agg.get((dataset, proto, "zipo", metric))
        if z is None:
            continue

        def best(group):
            c = {m: agg[(dataset, proto, m, metric)] for m in group
                 if (dataset, proto, m, metric) in agg}
            if not c:
                return None, None
            m = (min if lower else max)(c, key=lambda k: c[k][0])
            return m, c[m]

        om, ov = best(["zipo_paper"])
        pm, pv = best(PEERS)
        bm, bv = best(BASELINES)
        verdict = "—"
        if pv is not None:
            better = z[0] < pv[0] if lower else z[0] > pv[0]
            hz = z[1] if np.isfinite(z[1]) else 0.0
            hp = pv[1] if np.isfinite(pv[1]) else 0.0
            overlap = abs(z[0] - pv[0]) <= hz + hp
            verdict = "tie (bars overlap)" if overlap else ("**win**" if better else "**loss**")
        lines.append(
            f"| {label} | {_fmt(*z[:2])} | "
            + (f"{LABELS[om]} {_fmt(*ov[:2])}" if om else "—") + " | "
            + (f"{LABELS[pm]} {_fmt(*pv[:2])}" if pm else "—") + " | "
            + (f"{LABELS[bm]} {_fmt(*bv[:2])}" if bm else "—") + f" | {verdict} |")
    return "\n".join(lines) + "\n"


def figure(agg, datasets: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in FIGURE if any((d, r[0], m, r[1]) in agg for d in datasets for m in ORDER)]
    fig, axes = plt.subplots(len(rows), len(datasets), figsize=(4.2 * len(datasets), 2.3 * len(rows)),
                             squeeze=False)
    for i, (proto, metric, label, lower) in enumerate(rows):
        for j, d in enumerate(datasets):
            ax = axes[i][j]
            ms = [m for m in ORDER if (d, proto, m, metric) in agg]
            vals = [agg[(d, proto, m, metric)] for m in ms]
            if not ms:
                ax.set_axis_off()
                continue
            y = [v[0] for v in vals]
            err = [v[1] if np.isfinite(v[1]) else 0 for v in vals]
            ax.bar(range(len(ms)), y, yerr=err, color=[COLORS[m] for m in ms], capsize=3)
            ax.set_xticks(range(len(ms)))
            ax.set_xticklabels([LABELS[m].replace(" (ZiPo preset)", "*").replace("no denoising", "none")
                                .replace("oracle (truth)", "oracle").replace("PCA low-rank", "PCA")
                                for m in ms], rotation=40, ha="right", fontsize=7)
            lo, hi = min(a - b for a, b in zip(y, err)), max(a + b for a, b in zip(y, err))
            pad = (hi - lo) * 0.15 + 1e-12
            if lower is not None and lo > 0:  # zoom on the differences (axis does not start at 0)
                ax.set_ylim(max(0, lo - pad), hi + pad)
            elif lower is not None and hi < 0:
                ax.set_ylim(lo - pad, min(0, hi + pad))
            ax.tick_params(axis="y", labelsize=7)
            arrow = "" if lower is None else (" (lower better)" if lower else " (higher better)")
            ax.set_title(f"{d}: {label}{arrow}", fontsize=8)
    fig.suptitle("ZiPo vs peers: mean ± 1.64 SEM over seeds (DCA* = DCA preset inside ZiPo; "
                 "y axes zoomed, not from 0)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.99))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(results: Path, md_path: Path, png_path: Path | None) -> str:
    data = json.loads(Path(results).read_text())
    meta, records = data["meta"], data["records"]
    agg = aggregate(records)
    datasets = [d for d in meta.get("datasets", {})]
    parts = [f"Command: `{meta.get('command')}`  ",
             f"Mode: {meta.get('mode')}, seeds: {meta.get('seeds')}, epoch cap: {meta.get('max_epochs')}, "
             f"{meta.get('jobs')} fits at a time with {meta.get('threads')} thread(s) each  ",
             f"Machine: {meta.get('machine')}  ",
             f"Started {meta.get('started')}, finished {meta.get('finished', 'not finished')}, "
             f"wall {meta.get('wall_seconds', float('nan')):.0f} s  ",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()) + "  "]
    if meta.get("resumed_from"):  # --resume: say which records come from the earlier run
        old = meta["resumed_from"]
        parts.append(f"Resumed: {meta.get('kept_records')} records kept from the run started "
                     f"{old.get('started')} (`{old.get('command')}`) on "
                     f"{old.get('machine') or 'a machine not recorded'}; only the rest ran in "
                     "this invocation, whose times and versions are the ones above  ")
    parts.append("")
    if meta.get("setup_seconds"):
        parts.append("Peer venv setup this run: " + ", ".join(
            f"{k} {v:.0f} s" for k, v in meta["setup_seconds"].items()) + "\n")
    if png_path is not None:
        parts.append(f"![bar chart per metric]({png_path.name})\n")
    for d in datasets:
        info = meta["datasets"][d]
        parts.append(f"### {d}: {info['cells']} cells x {info['genes']} genes\n")
        parts.append(info.get("note", "") + (f" Labels: `{info['labels']}`." if info.get("labels") else "") + "\n")
        parts.append(table(agg, d, ACCURACY, "Accuracy (each method's denoised values)"))
        parts.append(table(agg, d, MIXTURE, "Same fits, zero-inflated mixture mean as the prediction"))
        parts.append(table(agg, d, LATENT, "Latent quality (embedding of the p=0.9 fit, all cells)"))
        parts.append(table(agg, d, COST, f"Cost (the p=0.9 fit; epoch cap {meta.get('max_epochs')})"))
        parts.append("**Where ZiPo stands**\n")
        parts.append(standing(agg, d))
    bad = [r for r in records if r.get("status") != "ok"]
    if bad:
        parts.append("### Fits that did not finish\n")
        parts += [f"- {r['dataset']} seed {r['seed']} {r['protocol']} {r['method']}: "
                  f"{r['status']} {r.get('error', '')[:300]}" for r in bad]
        parts.append("")
    md = "\n".join(parts)
    Path(md_path).write_text(md)
    if png_path is not None and agg:
        figure(agg, datasets, Path(png_path))
    return md


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/out/full/results.json")
    print(write_report(path, path.with_name("results.md"), path.with_name("results.png")))
