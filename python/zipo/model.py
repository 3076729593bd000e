"""The user-facing model: ``ZiPo(adata, ...)``, ``.train()``, ``.denoise()``, ``.save()``/``.load()``.

It composes the other parts: the config (:mod:`zipo.config`), the data checks and loader
(:mod:`zipo.data`), the network (:mod:`zipo.nn`), training (:mod:`zipo.train`), the outputs
(:mod:`zipo.outputs`), the gene programs (:mod:`zipo.tools.programs`) and saving and loading
(:mod:`zipo.io`, whose :class:`~zipo.io.SaveLoadMixin` gives ``ZiPo`` ``save`` and ``load``).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from .config import ZiPoConfig, resolve_config
from .data.atlas import read_cells
from .data.counts import CountMatrix, CountSummary, check_counts, gene_totals
from .data.covariates import CovariateEncoder
from .data.genes import check_gene_names, detected_genes, model_gene_counts
from .data.loader import CellBatches, inference_batches, split_cells, training_batches
from .io import SaveLoadMixin
from .nn.network import ZiPoNetwork
from .outputs import (
    Expectation, check_denoise_request, output_columns, output_genes, output_sink, output_target,
    write_predictions,
)
from .tools import programs
from .train.checkpoint import read_checkpoint, write_checkpoint
from .train.distributed import init_from_environment, local_device, resolve_device, world, wrap
from .train.evaluate import baseline_nll, evaluate
from .train.trainer import Trainer


class ZiPo(SaveLoadMixin):
    """Deep zero-inflated count autoencoder for single-cell RNA-seq counts.

    Parameters
    ----------
    adata
        AnnData of raw counts, cells x genes, in ``adata.X`` or ``adata.layers[layer]``; scipy
        sparse (CSR/CSC), dense, or backed. Genes with no counts in any cell (a 10x matrix has
        thousands) are left out of the model, whose ``var_names`` are the genes it trains on;
        a warning says how many. :meth:`denoise` still covers every gene of ``adata``: the
        undetected genes' denoised values (and zero-inflation probabilities) are 0.
        ``adata`` may also be the path of an ``.h5ad`` file or ``.zarr`` store, read batch by
        batch from disk, or a list of paths (and AnnData objects) with the same genes, read as
        one dataset (:func:`zipo.data.atlas.read_cells`).
    layer
        Layer with the raw counts; ``None`` uses ``adata.X``.
    covariates
        ``adata.obs`` columns given to the decoder beside the latents (e.g. ``["batch"]``).
        Alone they do not remove a batch effect from the latents; add ``alpha_mmd=1`` to mix
        the latents across a categorical covariate's categories, then
        ``denoise(covariate_values={"batch": ref})`` for batch-corrected counts.
    likelihood
        ``"zinb"`` (default), ``"zip"`` (the paper's), ``"poisson"`` or ``"nb"``.
    config
        A :class:`~zipo.config.ZiPoConfig` or the path of a TOML config file.
    preset
        Starting configuration: ``"zipo"`` (the defaults), ``"paper"`` (the paper's model and
        training), ``"dca"``, ``"zipdca"`` or ``"tuneddca"`` (:mod:`zipo.presets`).
    **options
        Any other option by name (``encoder_dims=[512, 128]``, ``max_epochs=50``...); they
        override ``preset`` and ``config``. See ``zipo.config``.
    """

    # Measured with benchmarks/scale.py (paper architecture, batch 256, 2 CPU threads): the
    # sparse first layer wins below about 3% non-zeros. A fixed rule rather than timing each
    # run keeps training reproducible: the two modes agree only to float rounding.
    SPARSE_BELOW_DENSITY = 0.03

    def __init__(self, adata, layer: str | None = None, covariates: list[str] | None = None,
                 likelihood: str | None = None, config: ZiPoConfig | str | Path | None = None,
                 preset: str | None = None, **options: Any):
        cfg = resolve_config(config, preset, {"layer": layer, "covariates": covariates,
                                              "likelihood": likelihood, **options})
        adata = read_cells(adata)  # paths and lists of them; an AnnData as it is
        check_gene_names(adata)
        summary = check_counts(CountMatrix(adata, cfg.data.layer), adata.obs_names,
                               cfg.data.allow_non_integer)
        var_names, summary = detected_genes(pd.Index(adata.var_names.astype(str)), summary)
        encoder = CovariateEncoder.fit(adata.obs, cfg.data.covariates)
        network = ZiPoNetwork.seeded(len(var_names), encoder.width, cfg.model, cfg.train.seed)
        self._init_state(cfg, var_names, encoder, network, adata, summary)
        self._mmd_groups()  # alpha_mmd without a categorical covariate fails here, not in train()

    def _init_state(self, config: ZiPoConfig, var_names: pd.Index, encoder: CovariateEncoder,
                    network: ZiPoNetwork, adata=None, summary=None) -> None:
        """Every attribute of a model, for a new one and for one loaded from disk."""
        self.config = config
        self.adata = adata  # the training data; None for a model loaded without data
        self.var_names = var_names
        self._summary = summary  # check_counts of adata's model genes: library sizes, density
        self.covariate_encoder = encoder
        self.network = network
        self.history: pd.DataFrame = pd.DataFrame()
        self.is_trained = False
        self.device = torch.device("cpu")
        # Cells of adata that the last train() fitted and held out.
        self.train_indices: np.ndarray | None = None
        self.validation_indices: np.ndarray | None = None
        self.first_layer_mode: str | None = None  # "sparse" or "dense", once trained here
        #: ``{delta, pruned_fraction, weights_pruned, weights_total}`` once :meth:`prune` ran
        #: (saved with the model), else None.
        self.pruning: dict | None = None
        self._prune_mask: programs.PruneMask | None = None
        self.study = None  # the optuna.Study, on a model returned by zipo.tune

    # ----------------------------------------------------------------- training
    def train(self, max_epochs: int | None = None, batch_size: int | None = None,
              device: str | None = None, validation_fraction: float | None = None,
              seed: int | None = None, verbose: bool | None = None,
              checkpoint_dir: str | Path | None = None, resume: bool = False,
              callback: Callable[[Trainer], None] | None = None, **options: Any) -> "ZiPo":
        """Train on the AnnData given at construction (Adam, early stopping on held-out cells'
        held-out molecules); again, it continues from the current weights.

        Arguments left at ``None`` keep the model's configuration (``self.config.train``);
        those given are written into it, so the saved config says how the model was trained.

        Parameters
        ----------
        max_epochs
            Most passes over the training cells (default 300); training usually stops sooner,
            at the learning-rate plateau's second cut or by early stopping.
        batch_size
            Cells per mini-batch (default 256; at least 2, for batch norm).
        device
            ``"auto"`` (default: CUDA when every process on the machine can have a GPU of its
            own, else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        validation_fraction
            Fraction of the cells held out to watch training (default 0.1); the schedule and
            early stopping watch the held-out molecules of these cells.
        seed
            Seeds the initial weights, the validation split, the shuffling and the molecule
            splits: the same seed gives the same model on the same CPU.
        verbose
            Show a progress bar with each epoch's losses.
        checkpoint_dir
            Write the whole training state (weights, optimiser, schedule, early-stopping
            record, random streams) there atomically every ``checkpoint_every`` epochs.
        resume
            Continue from the last checkpoint in ``checkpoint_dir``: a killed run ends with
            the same weights as an uninterrupted one (CPU, same seed).
        callback
            Called as ``callback(trainer)`` after every epoch (``trainer.history[-1]`` is that
            epoch's row); an exception it raises stops training, e.g. Optuna's
            ``TrialPruned``.
        **options
            Any other option of :class:`~zipo.config.TrainConfig` by name
            (``learning_rate``, ``early_stopping_patience``...).

        Returns
        -------
        ZiPo
            ``self``, trained: ``history`` holds one row per epoch, and the weights are those
            of the best epoch."""
        if resume and checkpoint_dir is None:
            raise ValueError("resume=True needs the checkpoint_dir the run was writing to")
        self.config.set_options({"max_epochs": max_epochs, "batch_size": batch_size,
                                 "device": device, "validation_fraction": validation_fraction,
                                 "seed": seed, "verbose": verbose, **options})
        tc = self.config.train
        if tc.num_threads:
            torch.set_num_threads(tc.num_threads)
        if self.adata is None:
            raise ValueError("this model was loaded without data; pass adata to ZiPo.load to train it")
        rng = np.random.default_rng(tc.seed)
        counts, _ = self._model_counts(self.adata, check=False)  # checked when given
        cov = self.covariate_encoder.transform(self.adata.obs)
        train_idx, val_idx = split_cells(self.adata.n_obs, tc.validation_fraction, rng,
                                         tc.validation_max_cells)
        if not self.is_trained:
            # seeded now, so the seed given here counts
            self.network = ZiPoNetwork.seeded(len(self.var_names), self.covariate_encoder.width,
                                              self.config.model, tc.seed)
            # Start the heads from the training cells only, so validation stays held out.
            genes = gene_totals(counts, train_idx) + 0.5  # +0.5: genes seen only in validation
            library = self._summary.library_size[train_idx]
            self.network.initialise_from_data(
                torch.tensor(genes / genes.sum(), dtype=torch.float32),
                float(np.log(library).mean()), float(np.median(library)),
            )
        self.device = resolve_device(tc.device)
        distributed = init_from_environment(self.device)
        self.device = local_device(self.device)
        rank, n_proc = world()
        self.network.to(self.device)

        state = read_checkpoint(checkpoint_dir, self.var_names, self.config) if resume else None
        self.first_layer_mode = self._first_layer_mode(state)
        train_batches, val_batches = training_batches(
            counts, cov, train_idx, val_idx, tc, rng, self.device,
            sparse=self.first_layer_mode == "sparse", shard=(rank, n_proc))
        self.train_indices, self.validation_indices = train_idx, val_idx
        trainer = Trainer(self.network, train_batches, val_batches, self.config.model, tc,
                          forward=wrap(self.network, self.device) if distributed else None,
                          autocast=self._autocast(tc), mmd_groups=self._mmd_groups())
        if state is not None:
            trainer.load_state_dict(state)
        save = None
        if checkpoint_dir is not None and rank == 0:
            save = partial(write_checkpoint, checkpoint_dir, var_names=self.var_names,
                           config=self.config)
        try:
            trainer.run(save, tc.checkpoint_every, callback)
        finally:
            # Also after a NaN loss: the best weights are restored, so the model stays usable
            # and its history shows the epochs that ran.
            if trainer.history:
                self.history = trainer.history_after(self.history)
                self.is_trained = True
            self.network.eval()
        return self

    def _first_layer_mode(self, state: dict | None) -> str:
        """``train.first_layer``, with ``auto`` settled by the data's density (a resumed run
        keeps the mode it started with)."""
        if state is not None and state.get("first_layer"):
            return state["first_layer"]
        if self.config.train.first_layer != "auto":
            return self.config.train.first_layer
        return "sparse" if self._summary.density < self.SPARSE_BELOW_DENSITY else "dense"

    def _autocast(self, tc):
        """bfloat16 autocast for the encoder on a CUDA device that supports it, else None."""
        if not (tc.mixed_precision and self.device.type == "cuda" and torch.cuda.is_bf16_supported()):
            return None
        return partial(torch.autocast, "cuda", dtype=torch.bfloat16)

    def _mmd_groups(self) -> list[tuple[int, int]]:
        """Encoded-covariate column ranges the ``alpha_mmd`` penalty mixes the latents over."""
        m = self.config.model
        return self.covariate_encoder.mmd_groups(m.alpha_mmd, m.mmd_covariates)

    # ----------------------------------------------------------------- data
    def _model_counts(self, adata, check: bool = True) -> tuple[CountMatrix, CountSummary | None]:
        """``adata``'s counts at the model's genes and (``check``) their summary, after checking
        them; see :func:`zipo.data.genes.model_gene_counts`."""
        return model_gene_counts(self.var_names, adata, self.config.data.layer,
                                 self.config.data.allow_non_integer, check)

    def cell_batches(self, adata, batch_size: int | None = None,
                     covariate_values: dict[str, Any] | None = None) -> CellBatches:
        """Mini-batches over all cells of ``adata`` (the model's genes in any order, and others
        only without counts) in the model's gene order, after checking its genes, counts and
        covariates; ``covariate_values`` gives the covariates ``adata.obs`` lacks (one value
        for all)."""
        if adata is None:
            raise ValueError("no cells given and the model holds none (loaded without data): pass adata")
        counts, _ = self._model_counts(adata)
        cov = self.covariate_encoder.transform(
            self.covariate_encoder.fixed(adata.obs, covariate_values, missing_only=True))
        return inference_batches(counts, cov, self.config.train, self.device, batch_size)

    def validation_batches(self, device: str | torch.device | None = None) -> CellBatches | None:
        """Mini-batches of the cells the last :meth:`train` held out, read densely; None
        without data or a validation split."""
        val = self.validation_indices
        if self.adata is None or val is None or not len(val):
            return None
        counts, _ = self._model_counts(self.adata, check=False)  # checked when given
        cov = self.covariate_encoder.transform(self.adata.obs)
        return CellBatches(counts, cov, val, self.config.train.batch_size,
                           device=self.device if device is None else device)

    def attach(self, adata) -> "ZiPo":
        """Use ``adata`` (the model's genes in any order, and others only without counts) as the
        data that :meth:`train` fits, e.g. to fine-tune a loaded model on new cells. The model
        keeps ``adata`` itself (not a reordered copy), so ``denoise()`` without an argument
        writes into it."""
        _, summary = self._model_counts(adata)
        self.covariate_encoder.transform(adata.obs)  # checks the covariates
        self.adata, self._summary = adata, summary
        self.train_indices = self.validation_indices = None  # they indexed the former data
        return self

    def _require_trained(self) -> None:
        if not self.is_trained:
            raise ValueError("the model is not trained yet; call model.train() first")

    # ----------------------------------------------------------------- inference
    @torch.no_grad()
    def get_latent(self, adata=None, batch_size: int | None = None) -> np.ndarray:
        """Latents U (cells x latent size) of ``adata`` (default: the training data)."""
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
        ``zero_inflation=True`` ``layers[f"{key_added}_zero_prob"]`` (z).

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
        with sink:
            write_predictions(self.network, batches, sink, cols, expectation, denoised,
                              zero_inflation, depth, target_sum, reference)
        if out is not None:
            return sink.result()
        target = output_target(adata, copy)
        sink.store(target, key_added, keep, subset=genes is not None)
        return target if copy else None

    def evaluate(self, adata=None, batch_size: int | None = None) -> dict[str, float]:
        """Mean NLL per matrix entry and total loss of ``adata`` under the trained model."""
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

    # ----------------------------------------------------------------- pruning and gene programs
    def prune(self, delta: float = 1e-4, adata=None) -> dict:
        """Prune the first encoder layer at ``delta``; pruned weights stay zero through later
        training and save/load. Returns the report of :func:`zipo.tools.programs.prune`."""
        self._prune_mask, report = programs.prune(self, delta, adata, self._prune_mask)
        self.pruning = {k: report[k] for k in programs.PRUNING_RECORD}
        return report

    def gene_programs(self, adata=None, min_weight: float = 0.0, key_added: str = "zipo") -> pd.DataFrame:
        """Each first-layer neuron as a signed gene set, as a table, also written into
        ``adata``; see :func:`zipo.tools.programs.gene_programs`."""
        return programs.gene_programs(self, adata, min_weight, key_added)

    def write_gmt(self, path: str | Path, top_n: int | None = None, min_weight: float = 0.0) -> Path:
        """The programs as a GMT file; see :func:`zipo.tools.programs.write_gmt`."""
        return programs.write_gmt(self, path, top_n, min_weight)

    def program_activity(self, adata=None, key_added: str = "zipo",
                         batch_size: int | None = None) -> np.ndarray:
        """Per-cell activity of each program, written into ``adata.obsm``; see
        :func:`zipo.tools.programs.program_activity`."""
        return programs.program_activity(self, adata, key_added, batch_size)

    def trained_network(self) -> ZiPoNetwork:
        """The network, after checking the model is trained, with pruned weights at zero (what
        the tools read)."""
        self._require_trained()
        self._enforce_pruning()
        return self.network

    def _enforce_pruning(self) -> None:
        """Zero the pruned first-layer weights (no-op for an unpruned model)."""
        if self._prune_mask is not None:
            self._prune_mask.apply(self.network)

    def plot_history(self, ax=None, path: str | Path | None = None):
        """Plot train/validation loss and learning rate per epoch; return the figure."""
        from .plotting import plot_history

        return plot_history(self.history, ax=ax, path=path)

    def __repr__(self) -> str:
        m = self.config.model
        state = (f"trained {self.history['epoch'].iloc[-1]:.4g} epochs" if self.is_trained
                 else "not trained")
        cov = f", covariates={self.covariate_encoder.names}" if self.covariate_encoder.specs else ""
        n_params = sum(p.numel() for p in self.network.parameters())
        return (
            f"ZiPo(likelihood={m.likelihood!r}, genes={len(self.var_names)}, "
            f"encoder={m.encoder_dims}{cov}, parameters={n_params:,}; {state})"
        )


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
    model = ZiPo(adata, layer=layer, covariates=covariates, likelihood=likelihood, **options)
    model.train()
    result = model.denoise(adata, expectation=expectation, zero_inflation=zero_inflation, copy=copy,
                           covariate_values=covariate_values)
    if copy and return_model:
        return result, model
    return model if return_model else result
