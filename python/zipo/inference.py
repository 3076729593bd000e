"""What a trained :class:`~zipo.ZiPo` gives back: latents, denoised counts (in memory or
streamed to a file), and scores of data under the model. Methods of ``ZiPo``
(:class:`InferenceMixin`); they read the model's state and write only into the data given."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .data.counts import gene_totals
from .neighbours import pool_for
from .outputs import (
    Expectation, check_denoise_request, output_columns, output_genes, output_sink, output_target,
    write_predictions,
)
from .train.evaluate import baseline_nll, evaluate


class InferenceMixin:
    """Inference methods of :class:`~zipo.ZiPo`."""

    @torch.no_grad()
    def get_latent(self, adata=None, batch_size: int | None = None) -> np.ndarray:
        """Latents U (cells x latent size) of ``adata`` (default: the training data); the
        first fit's, for a model of several."""
        self._require_trained()
        batches = self.cell_batches(adata if adata is not None else self.adata, batch_size)
        self.network.eval()
        return np.concatenate([self.network.encode(x).cpu().numpy() for x, _, _ in batches])

    def denoise(self, adata=None, expectation: Expectation = "posterior", zero_inflation: bool = False,
                key_added: str = "zipo", batch_size: int | None = None, copy: bool = False,
                covariate_values: dict[str, Any] | None = None,
                genes: Sequence[str] | None = None, out: str | Path | None = None,
                denoised: bool = True, overwrite: bool = False, target_sum: float = 1e4,
                depth: float = 1.0):
        """Denoised counts, latents and library sizes of ``adata``'s cells.

        By default they are written into ``adata``: ``layers[f"{key_added}_denoised"]`` (cells x
        genes, float32), ``obsm[f"X_{key_added}"]`` (latents), ``obs[f"{key_added}_library_size"]``
        (l: taken from the counts or predicted by LibNet, ``model.library``), and with
        ``zero_inflation=True`` ``layers[f"{key_added}_zero_prob"]`` (z). A model of several
        fits (``train.n_fits``) writes the mean of its fits' denoised values and z, and the
        first fit's latents and library sizes.

        Parameters
        ----------
        adata
            Cells to denoise, with the model's genes in any order (default: the training
            data). Counts as for :class:`ZiPo`: sparse, dense or backed.
        expectation
            What "denoised" means (:data:`zipo.outputs.EXPECTATIONS`): ``"posterior"``
            (default), E[rate | the cell's counts], the rate ``l * mu`` updated by each count
            as far as the fitted dispersion allows (the rate itself under ZIP/Poisson);
            ``"rate"``, ``l * mu``, for imputing entries known to be corrupted;
            ``"mixture"``, ``(1 - z) l mu``, the mean of the whole zero-inflated distribution;
            ``"lognorm"``, E[log1p(target_sum * X / l)], a ``logcounts``-style value.
        zero_inflation
            Also write the zero-inflation probabilities z.
        key_added
            Prefix of the names written (``zipo``).
        batch_size
            Cells per batch of inference (default: the training batch size).
        copy
            Return a new AnnData with the outputs instead of writing into ``adata``.
        covariate_values
            Predict every cell as if its covariates had these values, e.g.
            ``{"batch": "donor1"}`` gives batch-corrected counts with donor1 as the reference
            (the latents do not depend on covariates, so they are unchanged). With
            ``expectation="posterior"`` each cell keeps its count-given deviation from the rate
            at its own covariates, times the ratio of the reference's rate to its own.
            Covariates that ``adata.obs`` lacks are taken to be the cells' own values.
        genes
            Denoise only these genes; in memory they go to ``obsm[f"{key_added}_denoised"]``
            (a DataFrame, cells x these genes), in ``out`` the file's genes are these genes.
        out
            Stream everything to this new ``.h5ad`` file, one batch at a time (written to a
            temporary file, renamed when complete); ``adata`` is not modified. The file's
            ``X`` holds the denoised counts, with obs (+ library sizes), var and the latents in
            ``obsm``. For data too large for a cells x genes matrix in memory (a million
            cells x 20,000 genes is 80 GB). With ``zero_inflation=True`` the file also holds
            ``layers[f"{key_added}_zero_prob"]``, which anndata loads into memory when the file
            is opened.
        denoised
            ``False`` writes only the latents and library sizes (cells x latents in memory).
        overwrite
            Replace an existing ``out`` file.
        target_sum
            The scale of ``expectation="lognorm"`` (1e4, as scanpy's ``normalize_total``).
        depth
            Predict a measurement at ``depth`` x each cell's library size (default 1).

        Returns
        -------
        AnnData or None
            The AnnData when ``copy=True``; the output AnnData, opened backed (``X`` stays on
            disk), with ``out``; else None (``adata`` is modified).
        """
        self._require_trained()
        adata = self.adata if adata is None else adata
        check_denoise_request(adata, expectation, copy, out, denoised, depth, target_sum)
        keep = output_genes(self.var_names, adata, genes)
        # Cells are read at their own covariates (where their counts were measured), predicted
        # at ``reference``'s.
        batches = self.cell_batches(adata, batch_size, covariate_values)
        reference = (self.covariate_encoder.transform(
            self.covariate_encoder.fixed(adata.obs, covariate_values))
            if covariate_values else None)
        if reference is not None and np.array_equal(reference, batches.covariates):
            reference = None  # every given covariate was missing: the cells' own
        # (training data's undetected genes were announced at training)
        cols, keep = output_columns(self.var_names, adata, keep, notify=adata is not self.adata)
        sink = output_sink(adata, keep, self.config.model.encoder_dims[-1], out, key_added,
                           denoised, zero_inflation, overwrite)
        pooling = denoised and expectation == "posterior" and reference is None
        fits = [(fit.network, pool_for(fit, adata) if pooling else None,
                 fit.pooling.dispersion_scale) for fit in (self, *self.further_fits)]
        with sink:
            write_predictions(fits, batches, sink, cols, expectation, denoised,
                              zero_inflation, depth, target_sum, reference)
        if out is not None:
            return sink.result()
        target = output_target(adata, copy)
        sink.store(target, key_added, keep, subset=genes is not None)
        return target if copy else None

    def evaluate(self, adata=None, batch_size: int | None = None) -> dict[str, float]:
        """Mean NLL per matrix entry and total loss of ``adata`` under the trained model (its
        first fit's network, for a model of several)."""
        self._require_trained()
        batches = self.cell_batches(adata if adata is not None else self.adata, batch_size)
        loss, nll = evaluate(self.network, batches, self.config.model)
        return {"nll": nll, "loss": loss}

    def baseline_nll(self) -> float:
        """Validation NLL per entry of the baseline that predicts each gene's mean proportion in
        the training cells times each validation cell's library size (Poisson)."""
        batches = self.validation_batches(device="cpu")
        if batches is None:
            raise ValueError("no validation split: train with validation_fraction > 0 first")
        return baseline_nll(batches, gene_totals(batches.counts, self.train_indices))
