"""Gene names: an AnnData's genes checked at training, and matched to a trained model's
(which holds the genes it was trained on: those with counts)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError, notice
from .counts import CountMatrix, CountSummary, check_counts, examples

_BARCODE = re.compile(r"[ACGT]{12,}")  # 10x-style cell barcodes, with or without prefixes


def _share_barcodes(names: Sequence[Any], limit: int = 2000) -> float:
    names = [str(n) for n in list(names)[:limit]]
    return sum(bool(_BARCODE.search(n)) for n in names) / max(len(names), 1)


TRANSPOSED_HINT = {
    "python": "AnnData holds cells x genes, while R/Bioconductor and MatrixMarket files hold "
              "genes x cells: pass adata.T (or build the AnnData from the transposed matrix)",
    "r": "a SingleCellExperiment or Seurat object holds genes x cells: build it from the "
         "transposed counts, t(counts)",
}
# The user's data and its gene names, as each language calls them.
_DATA = {"python": "adata", "r": "the object"}
_GENE_NAMES = {"python": "var_names", "r": "rownames"}


def check_orientation(obs_names: Sequence[Any], var_names: Sequence[Any]) -> None:
    """Refuse an AnnData whose genes look like cell barcodes and whose cells do not."""
    if _share_barcodes(var_names) > 0.9 and _share_barcodes(obs_names) < 0.1:
        shown = examples(list(var_names)[:3])
        raise InputError(
            {lang: f"{_DATA[lang]} looks transposed: its genes ({_GENE_NAMES[lang]}, e.g. "
                   f"{shown}) look like cell barcodes" for lang in _DATA},
            TRANSPOSED_HINT, sep=". ")


def check_gene_names(adata) -> None:
    """Refuse duplicated gene names and an AnnData that looks transposed."""
    if not adata.var_names.is_unique:
        dup = adata.var_names[adata.var_names.duplicated()].unique()
        raise InputError(
            f"gene names are not unique ({examples(list(dup))})",
            {"python": "call adata.var_names_make_unique() first",
             "r": "make them unique first, e.g. rownames(x) <- make.unique(rownames(x))"})
    check_orientation(adata.obs_names, adata.var_names)


@dataclass(frozen=True)
class GeneMatch:
    """The genes of an AnnData against a trained model's (:func:`match_genes`).

    ``columns``: the AnnData's column of each model gene, in the model's order (None when the
    AnnData has exactly the model's genes in its order), for reading the counts the model
    takes. ``extra``: the AnnData's genes that the model lacks; they are allowed only without
    counts (:meth:`require_undetected`), and their denoised values are 0.
    """

    columns: np.ndarray | None
    extra: pd.Index

    def require_undetected(self, gene_names: pd.Index, gene_total: np.ndarray) -> None:
        """Refuse extra genes that have counts (``gene_total``, per gene of ``gene_names``):
        the model cannot predict them, and 0 would not describe them."""
        if not len(self.extra):
            return
        with_counts = self.extra[gene_total[gene_names.get_indexer(self.extra)] > 0]
        if len(with_counts):
            raise InputError(
                {lang: f"the genes of {_DATA[lang]} do not match the trained model: "
                       f"{len(with_counts)} genes are not in the model and have counts here "
                       f"({examples(list(with_counts))})" for lang in _DATA},
                {"python": "Drop them with adata[:, model.var_names], or train a model on "
                           "these genes",
                 "r": "Drop them with x[rownames(model), ], or train a model on these genes"},
                sep=". ")


def match_genes(model_genes: pd.Index, adata) -> GeneMatch:
    """Where the model's genes are in ``adata``; raises when ``adata`` lacks any of them."""
    names = pd.Index(adata.var_names.astype(str))
    extra = names.difference(model_genes, sort=False)
    if names.equals(model_genes):
        return GeneMatch(None, extra)
    missing = model_genes.difference(names, sort=False)
    if len(missing):
        cells = pd.Index(adata.obs_names.astype(str))
        if model_genes.isin(cells).mean() > 0.9:
            raise InputError(
                {lang: f"{_DATA[lang]} looks transposed: the model's genes are its cell names"
                 for lang in _DATA}, TRANSPOSED_HINT, sep=". ")
        parts = [f"{len(missing)} genes of the model are missing ({examples(list(missing))})"]
        if len(extra):
            parts.append(f"{len(extra)} genes are not in the model ({examples(list(extra))})")
        raise InputError(
            {lang: f"the genes of {_DATA[lang]} do not match the trained model: "
                   + "; ".join(parts) for lang in _DATA},
            _dashed_hint(missing, extra) or {
                "python": "Subset or reorder with adata[:, model.var_names] (adding any missing "
                          "genes as zero columns), or train a model on these genes",
                "r": "Subset or reorder with x[rownames(model), ] (adding any missing genes "
                     "as rows of zeros), or train a model on these genes"},
            sep=". ")
    return GeneMatch(names.get_indexer(model_genes), extra)


def detected_genes(genes: pd.Index, summary: CountSummary) -> tuple[pd.Index, CountSummary]:
    """The genes with counts (``summary`` of their AnnData), which a model trains on, and their
    summary. Nothing can be learnt about a gene without counts; a notice says how many there
    are, and that their denoised values will be 0."""
    detected = summary.gene_total > 0
    if detected.all():
        return genes, summary
    notice(f"{(~detected).sum():,} of {len(genes):,} genes have no counts in any cell "
           f"({examples(list(genes[~detected]), 3)}): training on the {detected.sum():,} "
           "detected genes; the others' denoised values are 0", stacklevel=3)
    return genes[detected], summary.select_genes(np.flatnonzero(detected))


def model_gene_counts(model_genes: pd.Index, adata, layer: str | None,
                      allow_non_integer: bool = False,
                      check: bool = True) -> tuple[CountMatrix, CountSummary | None]:
    """``adata``'s counts at the model's genes, in the model's order, read a batch of cells at a
    time (never copied), and with ``check`` their summary after checking them: ``adata`` has
    the model's genes in any order, and other genes only if they have no counts in its cells
    (their denoised values are 0)."""
    match = match_genes(model_genes, adata)  # names first: a transposed adata is named so
    counts = CountMatrix(adata, layer)
    summary = None
    if check:
        summary = check_counts(counts, adata.obs_names, allow_non_integer)
        match.require_undetected(pd.Index(adata.var_names.astype(str)), summary.gene_total)
        summary = summary.select_genes(match.columns)
    return counts.select_genes(match.columns), summary


def gene_positions(model_genes: pd.Index, adata) -> np.ndarray | None:
    """For each gene of ``adata`` (in its order), its column in the model, -1 for a gene the
    model lacks; None when ``adata`` has exactly the model's genes in the model's order.
    Raises when ``adata`` lacks some of the model's genes."""
    match = match_genes(model_genes, adata)
    if match.columns is None:
        return None
    return model_genes.get_indexer(pd.Index(adata.var_names.astype(str)))


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
