"""Gene names: an AnnData's genes checked at training, and matched to a trained model's."""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .counts import examples

_BARCODE = re.compile(r"[ACGT]{12,}")  # 10x-style cell barcodes, with or without prefixes


def _share_barcodes(names: Sequence[Any], limit: int = 2000) -> float:
    names = [str(n) for n in list(names)[:limit]]
    return sum(bool(_BARCODE.search(n)) for n in names) / max(len(names), 1)


TRANSPOSED_HINT = (
    "AnnData holds cells x genes, while R/Bioconductor and MatrixMarket files hold genes x "
    "cells: pass adata.T (or build the AnnData from the transposed matrix)"
)


def check_orientation(obs_names: Sequence[Any], var_names: Sequence[Any]) -> None:
    """Refuse an AnnData whose genes look like cell barcodes and whose cells do not."""
    if _share_barcodes(var_names) > 0.9 and _share_barcodes(obs_names) < 0.1:
        raise ValueError(
            f"adata looks transposed: its genes (var_names, e.g. {examples(list(var_names)[:3])}) "
            f"look like cell barcodes. {TRANSPOSED_HINT}"
        )


def check_gene_names(adata) -> None:
    """Refuse duplicated gene names and an AnnData that looks transposed."""
    if not adata.var_names.is_unique:
        dup = adata.var_names[adata.var_names.duplicated()].unique()
        raise ValueError(
            f"gene names are not unique ({examples(list(dup))}); call "
            "adata.var_names_make_unique() first"
        )
    check_orientation(adata.obs_names, adata.var_names)


def gene_positions(model_genes: pd.Index, adata) -> np.ndarray | None:
    """For each gene of ``adata`` (in its order), its column in the model; None when ``adata``
    already has the model's genes in the model's order. Raises when the genes differ."""
    names = pd.Index(adata.var_names.astype(str))
    missing = model_genes.difference(names, sort=False)
    extra = names.difference(model_genes, sort=False)
    if len(missing) or len(extra):
        cells = pd.Index(adata.obs_names.astype(str))
        if len(missing) and model_genes.isin(cells).mean() > 0.9:
            raise ValueError(f"adata looks transposed: the model's genes are its cell names "
                             f"(obs_names). {TRANSPOSED_HINT}")
        parts = []
        if len(missing):
            parts.append(f"{len(missing)} genes of the model are missing ({examples(list(missing))})")
        if len(extra):
            parts.append(f"{len(extra)} genes are not in the model ({examples(list(extra))})")
        raise ValueError(
            "the genes of adata do not match the trained model: " + "; ".join(parts)
            + ". " + (_dashed_hint(missing, extra) or
                      "Subset or reorder with adata[:, model.var_names] (adding any missing "
                      "genes as zero columns), or train a model on these genes")
        )
    return None if names.equals(model_genes) else model_genes.get_indexer(names)


def _dashed_hint(missing: pd.Index, extra: pd.Index) -> str | None:
    """The fix when the only difference is '_' written as '-': Seurat renames features so
    (a model trained on a SingleCellExperiment then meets the object's renamed genes)."""
    dashed = {str(g).replace("_", "-"): str(g) for g in missing}
    if not len(missing) or set(dashed) != set(map(str, extra)):
        return None
    new, old = next(iter(dashed.items()))
    return (f"These {len(missing)} genes differ only by '_' written as '-' (e.g. the model's "
            f"{old!r} is {new!r} here), as Seurat renames features: rename them back to the "
            "model's names, or train the model on names without '_'")


def in_model_order(adata, model_genes: pd.Index):
    """``adata`` when its genes are in the model's order, else the view
    ``adata[:, model_genes]``: for reading counts only, never stored, so that results written
    without naming an AnnData go into the user's own."""
    if pd.Index(adata.var_names.astype(str)).equals(model_genes):
        return adata
    return adata[:, model_genes]
