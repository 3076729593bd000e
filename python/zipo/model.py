"""The user-facing model: ``ZiPo(adata, ...)``, ``.train()``, ``.denoise()``, ``.save()``/``.load()``.

It composes the other parts: the config (:mod:`zipo.config`), the data checks and loader
(:mod:`zipo.data`), the network (:mod:`zipo.nn`), training (:mod:`zipo.train`), the outputs
(:mod:`zipo.outputs`), the averages of several fits (:mod:`zipo.fits`), the gene programs (:mod:`zipo.tools.programs`, whose
:class:`~zipo.tools.programs.ProgramsMixin` gives ``ZiPo`` ``prune`` and the programs) and
the model directory (:mod:`zipo.io`, which reads and writes the plain data that ``save``
gives it and ``load`` builds a model from). Only ``ZiPo``'s own methods set its state.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from .config import ZiPoConfig, resolve_config
from .data.atlas import read_cells
from .data.counts import CountMatrix, CountSummary, check_counts, gene_totals
from .data.covariates import CovariateEncoder
from .data.genes import check_gene_names, detected_genes, model_gene_counts
from .data.loader import CellBatches, inference_batches, split_cells, training_batches
from .io import SavedModel, read_model, write_model
from .neighbours import NeighbourPooling, choose_for
from .presets import covariate_options, small_data_options
from .nn.network import ZiPoNetwork
from .fits import FitsMixin
from .inference import InferenceMixin
from .tools.programs import ProgramsMixin, PruneMask
from .train.checkpoint import read_checkpoint, write_checkpoint
from .device import local_device, resolve_device
from .train.distributed import init_from_environment, world, wrap
from .train.heldout import FixedSplit
from .train.trainer import Trainer


class ZiPo(InferenceMixin, ProgramsMixin, FitsMixin):
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
        batch from disk, of a Cell Ranger matrix folder or ``.h5`` file, or a list of paths
        (and AnnData objects) with the same genes, read as one dataset
        (:func:`zipo.data.atlas.read_cells`).
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
        Starting configuration: ``"zipo"`` (the defaults), ``"fast"`` (the defaults' model in
        about half the epochs), ``"paper"`` (the paper's model and training), ``"dca"``,
        ``"zipdca"`` or ``"tuneddca"`` (:mod:`zipo.presets`).
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
        small_data_options(cfg, adata.n_obs)
        covariate_options(cfg)
        check_gene_names(adata)
        summary = check_counts(CountMatrix(adata, cfg.data.layer), adata.obs_names,
                               cfg.data.allow_non_integer)
        var_names, summary = detected_genes(pd.Index(adata.var_names.astype(str)), summary)
        encoder = CovariateEncoder.fit(adata.obs, cfg.data.covariates)
        network = ZiPoNetwork.seeded(len(var_names), encoder.width, cfg.model, cfg.train.seed)
        self._init_state(cfg, var_names, encoder, network, adata, summary)
        self._mmd_groups()  # alpha_mmd without a categorical covariate fails here, not in train()

    def _init_state(self, config: ZiPoConfig, var_names: pd.Index, encoder: CovariateEncoder,
                    network: ZiPoNetwork, adata=None, summary=None, is_trained: bool = False,
                    history: pd.DataFrame | None = None, device: torch.device | None = None,
                    pruning: dict | None = None, pooling: dict | None = None,
                    further_fits: list["ZiPo"] | None = None) -> None:
        """Every attribute of a model: a new one (untrained, on the CPU), or one loaded from
        disk (trained, history, device and pruning as saved; :meth:`load`)."""
        self.config = config
        self.adata = adata  # the training data; None for a model loaded without data
        self.var_names = var_names
        self._summary = summary  # check_counts of adata's model genes: library sizes, density
        self.covariate_encoder = encoder
        self.network = network
        self.history: pd.DataFrame = pd.DataFrame() if history is None else history
        self.is_trained = is_trained
        self.device = torch.device("cpu") if device is None else device
        # Cells of adata that the last train() fitted and held out.
        self.train_indices: np.ndarray | None = None
        self.validation_indices: np.ndarray | None = None
        # Their molecules split once, under train.validation_holdout = "molecules" (else None).
        self.validation_split: FixedSplit | None = None
        self.first_layer_mode: str | None = None  # "sparse" or "dense", once trained here
        #: ``{delta, pruned_fraction, weights_pruned, weights_total}`` once :meth:`prune` ran
        #: (saved with the model), else None.
        self.pruning: dict | None = dict(pruning) if pruning else None
        # A loaded pruned model's mask is re-derived from the weights that are exactly zero.
        self._prune_mask = PruneMask.from_zero_weights(network) if pruning else None
        #: How ``denoise(expectation="posterior")`` borrows from neighbouring cells, chosen by
        #: :meth:`train` on validation molecules (:mod:`zipo.neighbours`).
        self.pooling = NeighbourPooling.from_dict(pooling)
        #: Fits 2 to n of a model of several (``train.n_fits``), each a ZiPo of one fit on the
        #: same data: :meth:`denoise` averages their outputs with this one's.
        self.further_fits: list[ZiPo] = list(further_fits or [])

    # ----------------------------------------------------------------- saving and loading
    def save(self, path: str | Path, overwrite: bool = False) -> None:
        """Write the model (weights, config, genes, covariate encoding, history) to a directory,
        atomically: a crash never leaves a half-written model at ``path`` (:mod:`zipo.io`)."""
        write_model(self._saved(), path, overwrite=overwrite)

    def _saved(self) -> SavedModel:
        self._enforce_pruning()
        return SavedModel(config=self.config, var_names=list(self.var_names),
                          covariates=self.covariate_encoder.specs,
                          weights=self.network.state_dict(), history=self.history,
                          is_trained=self.is_trained, pruning=self.pruning,
                          pooling=self.pooling.to_dict(),
                          fits=[fit._saved() for fit in self.further_fits])

    @classmethod
    def load(cls, path: str | Path, adata=None, device: str = "cpu") -> "ZiPo":
        """Load a model saved with :meth:`save`. Pass ``adata`` to keep training it (fine-tuning).

        ``device`` is where the loaded model runs: denoising, and any further ``train()``
        (its ``config.train.device`` is set to it, so a model saved on a GPU machine trains on
        the CPU it was loaded to)."""
        model = cls._from_saved(read_model(path), str(path), resolve_device(device), device)
        return model.attach(adata) if adata is not None else model

    @classmethod
    def _from_saved(cls, saved: SavedModel, path: str, target: torch.device,
                    device: str) -> "ZiPo":
        encoder = CovariateEncoder(saved.covariates)
        try:
            network = ZiPoNetwork.from_weights(len(saved.var_names), encoder.width,
                                               saved.config.model, saved.weights)
        except (RuntimeError, TypeError, AttributeError) as e:
            raise ValueError(
                f"the weights in {path!r} do not fit the saved config: {e}") from None
        saved.config.train.device = device  # train() reads the device from the config
        model = cls.__new__(cls)
        model._init_state(saved.config, pd.Index(saved.var_names), encoder,
                          network.to(target).eval(), is_trained=saved.is_trained,
                          history=saved.history, device=target, pruning=saved.pruning,
                          pooling=saved.pooling,
                          further_fits=[cls._from_saved(fit, path, target, device)
                                        for fit in saved.fits])
        return model

    # ----------------------------------------------------------------- training
    def train(self, max_epochs: int | None = None, batch_size: int | None = None,
              device: str | None = None, validation_fraction: float | None = None,
              seed: int | None = None, verbose: bool | None = None,
              checkpoint_dir: str | Path | None = None, resume: bool = False,
              callback: Callable[[Trainer], None] | None = None, **options: Any) -> "ZiPo":
        """Train on the AnnData given at construction (Adam, early stopping on held-out cells'
        held-out molecules); again, it continues from the current weights.

        Training is watched every *round* of at most ``validation_interval`` optimiser steps
        (100; a whole epoch on data of up to 25,600 cells): validation, the learning-rate
        plateau, early stopping and checkpoints count rounds, so a large dataset stops within
        a few passes once it has converged.

        Arguments left at ``None`` keep the model's configuration (``self.config.train``);
        those given are written into it, so the saved config says how the model was trained.

        Parameters
        ----------
        max_epochs
            Most passes over the training cells (default 300; 1,000 under 500 cells, see
            ``train.small_data``); training usually stops sooner,
            at the learning-rate plateau's first cut (the second under 500 cells and
            where an epoch spans several rounds of validation) or by early stopping.
        batch_size
            Cells per mini-batch (default 256; at least 2, for batch norm).
        device
            ``"auto"`` (default: CUDA when every process on the machine can have a GPU of its
            own, else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        validation_fraction
            Fraction of the cells held out to watch training (default 0.1, at most
            ``validation_max_cells``, 4,096); the schedule and early stopping watch the
            held-out molecules of these cells.
        seed
            Seeds the initial weights, the validation split, the shuffling, the molecule
            splits and the latents' noise, each drawn from a generator of its own: the same
            seed gives the same model on the same CPU, and torch's and NumPy's global random
            states are neither used nor changed.
        verbose
            Show a progress bar (in epochs) with each round's losses.
        checkpoint_dir
            Write the whole training state (weights, optimiser, schedule, early-stopping
            record, random streams, position in the epoch) there atomically every
            ``checkpoint_every`` rounds; fit k of a model of several (``n_fits``) in
            ``checkpoint_dir/fit-k``.
        resume
            Continue from the last checkpoint in ``checkpoint_dir``: a killed run ends with
            the same weights as an uninterrupted one (CPU, same seed); a fit that had not
            started trains afresh.
        callback
            Called as ``callback(trainer)`` after every round of the first fit
            (``trainer.history[-1]`` is that round's row); an exception it raises stops
            training, e.g. Optuna's ``TrialPruned``.
        **options
            Any other option of :class:`~zipo.config.TrainConfig` by name
            (``learning_rate``, ``early_stopping_patience``...).

        Returns
        -------
        ZiPo
            ``self``, trained: ``history`` holds one row per round (``epoch``, fractional
            within an epoch, and ``step``), and the weights are those of the best round."""
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
        # a trained model goes on with each of its fits
        n_fits = 1 + len(self.further_fits) if self.is_trained else self._fits_asked()
        rng = np.random.default_rng(tc.seed)
        counts, _ = self._model_counts(self.adata, check=False)  # checked when given
        cov = self.covariate_encoder.transform(self.adata.obs)
        train_idx, val_idx = split_cells(self.adata.n_obs, tc.validation_fraction, rng,
                                         tc.validation_max_cells)
        self.validation_split = None
        if tc.validation_holdout == "molecules" and tc.heldout_molecules > 0 and len(val_idx):
            # The validation cells train on their kept molecules; only the held-out ones are
            # never seen.
            self.validation_split = FixedSplit.draw(counts, val_idx, tc.heldout_molecules,
                                                    tc.seed)
            counts = self.validation_split.counts(counts)
            train_idx = np.arange(self.adata.n_obs)
        if not self.is_trained:
            # seeded now, so the seed given here counts
            self.network = ZiPoNetwork.seeded(len(self.var_names), self.covariate_encoder.width,
                                              self.config.model, tc.seed)
            # Start the heads from the training cells' counts only, so validation stays held out.
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
                          autocast=self._autocast(tc), mmd_groups=self._mmd_groups(),
                          rounds_before=len(self.history), first_layer=self.first_layer_mode,
                          validation_split=self.validation_split)
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
        self.pooling = choose_for(self)
        self._train_further_fits(n_fits, checkpoint_dir, resume)
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
        """Mini-batches of the cells the last :meth:`train` validated on, read densely (their
        kept molecules under ``validation_holdout = "molecules"``); None without data or a
        validation split."""
        val = self.validation_indices
        if self.adata is None or val is None or not len(val):
            return None
        counts, _ = self._model_counts(self.adata, check=False)  # checked when given
        if self.validation_split is not None:
            counts = self.validation_split.counts(counts)  # the molecules validation kept
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
        for fit in (self, *self.further_fits):
            fit.adata, fit._summary = adata, summary
            fit.train_indices = fit.validation_indices = None  # they indexed the former data
            fit.validation_split = None
        return self

    def _require_trained(self) -> None:
        if not self.is_trained:
            raise ValueError("the model is not trained yet; call model.train() first")

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
        fits = f", fits={1 + len(self.further_fits)}" if self.further_fits else ""
        return (
            f"ZiPo(likelihood={m.likelihood!r}, genes={len(self.var_names)}, "
            f"encoder={m.encoder_dims}{cov}, parameters={n_params:,}{fits}; {state})"
        )
