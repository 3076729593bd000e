"""``zipo.denoise(adata)``: train a model and write its denoised counts, in one call."""

from __future__ import annotations

from typing import Any

from .model import ZiPo
from .outputs import Expectation, check_output_options


def denoise(adata, layer: str | None = None, covariates: list[str] | None = None,
            likelihood: str | None = None, expectation: Expectation = "posterior",
            zero_inflation: bool = False, copy: bool = False, return_model: bool = False,
            covariate_values: dict[str, Any] | None = None, **options: Any):
    """Train a ZiPo model on ``adata`` and write its denoised counts into it, in one call.

    The same as ``ZiPo(adata, ...).train()`` followed by ``model.denoise(adata, ...)``.

    Parameters
    ----------
    adata
        AnnData of raw counts, cells x genes (see :class:`ZiPo`).
    layer
        Layer with the raw counts; ``None`` uses ``adata.X``.
    covariates
        ``adata.obs`` columns given to the decoder beside the latents (see :class:`ZiPo`).
    likelihood
        ``"zinb"`` (default), ``"zip"`` (the paper's), ``"poisson"`` or ``"nb"``.
    expectation
        What is written as the denoised counts: ``"posterior"`` (default), ``"rate"``,
        ``"mixture"`` or ``"lognorm"`` (see :meth:`ZiPo.denoise`).
    zero_inflation
        Also write the zero-inflation probabilities, ``layers["zipo_zero_prob"]``.
    copy
        Return a new AnnData with the outputs instead of writing into ``adata``.
    return_model
        Also return the trained model (to save it, or denoise other cells with it).
    covariate_values
        Predict every cell at these covariate values (see :meth:`ZiPo.denoise`).
    **options
        Any config option by name, for the model and its training (``max_epochs``,
        ``seed``, ``alpha_mmd``, ``preset``, ``config``...; see :class:`ZiPoConfig`).

    Returns
    -------
    AnnData, ZiPo, tuple or None
        The AnnData when ``copy=True``, the model when ``return_model=True`` (both: a tuple
        ``(adata, model)``), else None (``adata`` is modified)."""
    check_output_options(expectation)  # before the training, not after it
    model = ZiPo(adata, layer=layer, covariates=covariates, likelihood=likelihood, **options)
    model.train()
    result = model.denoise(adata, expectation=expectation, zero_inflation=zero_inflation, copy=copy,
                           covariate_values=covariate_values)
    if copy and return_model:
        return result, model
    return model if return_model else result
