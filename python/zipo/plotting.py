"""Plots of a trained model."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .train.schedule import kept_row


def plot_history(history: pd.DataFrame, ax=None, path: str | Path | None = None):
    """Train/validation loss and the held-out molecules' NLL (left axis), learning rate (right
    axis, log) per epoch, and the epoch whose weights were kept."""
    import matplotlib

    if ax is None and path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if history is None or len(history) == 0:
        raise ValueError("the model has no training history yet; call model.train() first")
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4))
    else:
        fig = ax.figure
    ax.plot(history["epoch"], history["train_loss"], label="train loss")
    if "validation_loss" in history:
        ax.plot(history["epoch"], history["validation_loss"], label="validation loss")
    if "validation_heldout_nll" in history:
        ax.plot(history["epoch"], history["validation_heldout_nll"],
                label="validation NLL, held-out molecules")
    if "validation_heldout_nll_posterior" in history:
        ax.plot(history["epoch"], history["validation_heldout_nll_posterior"],
                label="... of the rate given the kept counts")
    # The epoch whose weights the model keeps (best of what early stopping watches).
    kept = kept_row(history)
    ax.axvline(history["epoch"].iloc[kept], color="black", ls=":", lw=1, label="kept epoch")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (NLL per entry + penalties)")
    lr_ax = ax.twinx()
    lr_ax.plot(history["epoch"], history["learning_rate"], color="grey", ls="--", label="learning rate")
    lr_ax.set_yscale("log")
    lr_ax.set_ylabel("learning rate")
    lines = ax.get_legend_handles_labels()
    lr_lines = lr_ax.get_legend_handles_labels()
    ax.legend(lines[0] + lr_lines[0], lines[1] + lr_lines[1], loc="upper right")
    ax.set_title("ZiPo training history")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
