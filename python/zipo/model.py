"""The user-facing model: ``ZiPo(adata, ...)``, ``.train()``, ``.denoise()``, ``.save()``/``.load()``."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import pandas as pd
import torch

from .config import ZiPoConfig, read_config_file
from .data import (
    TRANSPOSED_HINT, CellBatches, CountMatrix, CovariateEncoder, _examples, check_counts,
    check_orientation, gene_totals, split_cells,
)
from .io import load_model, read_checkpoint, save_model, write_checkpoint
from .outputs import MemoryOutput, StreamedOutput, _var_frame
from .network import ZiPoNetwork
from .presets import preset_config
from .distributed import init_from_environment, local_device, world, wrap
from .training import Trainer, baseline_nll, evaluate

Expectation = Literal["rate", "mixture"]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but CUDA is not available; use 'cpu' or 'auto'")
    return torch.device(device)


class ZiPo:
    """Deep zero-inflated count autoencoder for single-cell RNA-seq counts.

    Parameters
    ----------
    adata
        AnnData of raw counts, cells x genes, in ``adata.X`` or ``adata.layers[layer]``; scipy
        sparse (CSR/CSC), dense, or backed.
    layer
        Layer with the raw counts; ``None`` uses ``adata.X``.
    covariates
        ``adata.obs`` columns given to the decoder beside the latents (e.g. ``["batch"]``).
        Alone they do not remove a batch effect from the latents; add ``alpha_mmd=1`` to mix
        the latents across a categorical covariate's categories, then
        ``denoise(covariate_values={"batch": ref})`` for batch-corrected counts.
    likelihood
        ``"zip"`` (default), ``"zinb"``, ``"poisson"`` or ``"nb"``.
    config
        A :class:`~zipo.config.ZiPoConfig` or the path of a TOML config file.
    preset
        Starting configuration: ``"zipo"`` (the defaults), ``"dca"``, ``"zipdca"`` or
        ``"tuneddca"`` (see :mod:`zipo.presets`). ``config`` and ``options`` override it.
    **options
        Any other option by name (``encoder_dims=[512, 128]``, ``alpha_z=0.1``,
        ``max_epochs=50``...); they override ``config``. See ``zipo.config``.
    """

    def __init__(
        self,
        adata,
        layer: str | None = None,
        covariates: list[str] | None = None,
        likelihood: str | None = None,
        config: ZiPoConfig | str | Path | None = None,
        preset: str | None = None,
        **options: Any,
    ):
        if isinstance(config, ZiPoConfig):
            if preset:
                raise ValueError("pass either a ZiPoConfig object or a preset, not both")
            cfg = ZiPoConfig.from_dict(config.to_dict())  # own copy
        else:
            cfg = preset_config(preset) if preset else ZiPoConfig()
            if config is not None:  # a config file overrides the preset where it sets a key
                cfg.update(read_config_file(config), source=str(config))
        for key, value in {"layer": layer, "covariates": covariates, "likelihood": likelihood,
                           **options}.items():
            if value is not None:
                cfg.set_option(key, value)
        self.config = cfg
        if not adata.var_names.is_unique:
            dup = adata.var_names[adata.var_names.duplicated()].unique()
            raise ValueError(
                f"gene names are not unique ({_examples(list(dup))}); call "
                "adata.var_names_make_unique() first"
            )
        check_orientation(adata.obs_names, adata.var_names)
        self.adata = adata
        self.var_names = pd.Index(adata.var_names.astype(str))
        counts = CountMatrix(adata, cfg.data.layer)
        self._summary = check_counts(
            counts, adata.obs_names, self.var_names, cfg.data.allow_non_integer,
            require_expressed_genes=True,
        )
        self.covariate_encoder = CovariateEncoder.fit(adata.obs, cfg.data.covariates)
        self._mmd_groups()  # alpha_mmd without a categorical covariate fails here, not in train()
        self.network = self._build_network()
        self.history: pd.DataFrame = pd.DataFrame()
        self.is_trained = False
        self.device = torch.device("cpu")

    # ----------------------------------------------------------------- training
    def _build_network(self) -> ZiPoNetwork:
        torch.manual_seed(self.config.train.seed)
        return ZiPoNetwork(len(self.var_names), self.covariate_encoder.width, self.config.model)

    def train(
        self,
        max_epochs: int | None = None,
        batch_size: int | None = None,
        device: str | None = None,
        validation_fraction: float | None = None,
        seed: int | None = None,
        verbose: bool | None = None,
        checkpoint_dir: str | Path | None = None,
        resume: bool = False,
        callback: Callable[[Trainer], None] | None = None,
        **options: Any,
    ) -> "ZiPo":
        """Train on the AnnData given at construction (Adam, the paper's schedule, early
        stopping on a held-out validation split of cells). Calling it again continues from the
        current weights. Returns ``self``.

        With ``checkpoint_dir``, the whole training state (weights, optimiser, schedule,
        early-stopping record, shuffling RNG) is written there atomically every
        ``checkpoint_every`` epochs; ``resume=True`` continues from the last checkpoint, so a
        killed run ends with the same weights as an uninterrupted one (CPU, same seed).

        ``callback(trainer)`` is called after every epoch (``trainer.history[-1]`` is that
        epoch's row); an exception it raises stops training, e.g. Optuna's ``TrialPruned``."""
        if resume and checkpoint_dir is None:
            raise ValueError("resume=True needs the checkpoint_dir the run was writing to")
        given = {"max_epochs": max_epochs, "batch_size": batch_size, "device": device,
                 "validation_fraction": validation_fraction, "seed": seed, "verbose": verbose,
                 **options}
        for key, value in given.items():
            if value is not None:
                self.config.set_option(key, value)
        tc = self.config.train
        if tc.num_threads:
            torch.set_num_threads(tc.num_threads)
        if self.adata is None:
            raise ValueError("this model was loaded without data; pass adata to ZiPo.load to train it")
        rng = np.random.default_rng(tc.seed)
        counts = CountMatrix(self._ordered(self.adata), self.config.data.layer)
        cov = self.covariate_encoder.transform(self.adata.obs)
        train_idx, val_idx = split_cells(self.adata.n_obs, tc.validation_fraction, rng)
        if not self.is_trained:
            self.network = self._build_network()  # seeded now, so the seed given here counts
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

        state = read_checkpoint(checkpoint_dir, self) if resume else None
        sparse = self._first_layer_mode(tc, state) == "sparse"
        chunk = tc.shuffle_chunk or (max(1, tc.batch_size // 8) if counts.on_disk else 1)
        loader = dict(device=self.device, sparse=sparse, prefetch=tc.prefetch, shard=(rank, n_proc))
        train_batches = CellBatches(counts, cov, train_idx, tc.batch_size, True, rng,
                                    chunk_size=chunk, **loader)
        val_batches = (
            CellBatches(counts, cov, val_idx, tc.batch_size, **loader) if len(val_idx) else None
        )
        self.train_indices, self.validation_indices = train_idx, val_idx
        trainer = Trainer(self.network, train_batches, val_batches, self.config.model, tc,
                          forward=wrap(self.network, self.device) if distributed else None,
                          autocast=self._autocast(tc), mmd_groups=self._mmd_groups())
        save = None
        if state is not None:
            trainer.load_state_dict(state)
        if checkpoint_dir is not None and rank == 0:
            save = partial(write_checkpoint, checkpoint_dir, model=self)
        try:
            trainer.run(save, tc.checkpoint_every, callback)
        finally:
            # Also after a NaN loss: the best weights are restored, so the model stays usable
            # and its history shows the epochs that ran.
            if trainer.history:
                offset = len(self.history)
                new = pd.DataFrame(trainer.history)
                new["epoch"] += offset
                self.history = pd.concat([self.history, new], ignore_index=True)
                self.is_trained = True
            self.network.eval()
        return self

    # Measured with benchmarks/scale.py (paper architecture, batch 256, 2 CPU threads): the
    # sparse first layer wins below about 3% non-zeros. A fixed rule rather than timing each
    # run keeps training reproducible: the two modes agree only to float rounding.
    SPARSE_BELOW_DENSITY = 0.03

    def _first_layer_mode(self, tc, state) -> str:
        """``train.first_layer``, with ``auto`` settled by the data's density (a resumed run
        keeps the mode it started with)."""
        if state is not None and state.get("first_layer"):
            mode = state["first_layer"]
        elif tc.first_layer != "auto":
            mode = tc.first_layer
        else:
            mode = "sparse" if self._summary.density < self.SPARSE_BELOW_DENSITY else "dense"
        self.first_layer_mode = mode
        return mode

    def _mmd_groups(self) -> list[tuple[int, int]]:
        """Column ranges [start, stop) in the encoded covariates of the categorical covariates
        that ``model.alpha_mmd`` mixes the latents over (``model.mmd_covariates``, or all
        categorical ones); empty when alpha_mmd is 0. Raises when there is none to mix over."""
        m = self.config.model
        if m.alpha_mmd <= 0:
            return []
        specs = self.covariate_encoder.specs
        names = [s["name"] for s in specs]
        categorical = [s["name"] for s in specs if s["kind"] == "categorical"]
        wrong = [n for n in m.mmd_covariates if n not in categorical]
        if wrong:
            raise ValueError(
                f"mmd_covariates names {_examples(wrong)}, not a categorical covariate of the "
                f"model; alpha_mmd mixes over categorical covariates (this model's: "
                f"{_examples(categorical) or 'none'})"
            )
        groups, start = [], 0
        for s in specs:
            width = len(s["categories"]) if s["kind"] == "categorical" else 1
            if s["kind"] == "categorical" and (not m.mmd_covariates or s["name"] in m.mmd_covariates):
                groups.append((start, start + width))
            start += width
        if not groups:
            raise ValueError(
                f"alpha_mmd={m.alpha_mmd:g} mixes the latents across the categories of a "
                "categorical covariate, but the model has none (covariates: "
                f"{_examples(names) or 'none'}); pass e.g. covariates=['batch'] with a "
                "string/categorical obs column (cast integer labels with .astype(str)), or set "
                "alpha_mmd=0"
            )
        return groups

    def _autocast(self, tc):
        """bfloat16 autocast for the encoder on a CUDA device that supports it, else None."""
        if not (tc.mixed_precision and self.device.type == "cuda" and torch.cuda.is_bf16_supported()):
            return None
        return partial(torch.autocast, "cuda", dtype=torch.bfloat16)

    # ----------------------------------------------------------------- inference
    def _batches(self, adata, batch_size: int | None,
                 covariate_values: dict[str, Any] | None = None) -> tuple[CellBatches, np.ndarray | None]:
        """Mini-batches over all cells of ``adata`` in the model's gene order, and the positions
        mapping model genes back to ``adata``'s columns (None when the order already matches).
        ``covariate_values`` sets covariates to one value for every cell (see :meth:`denoise`)."""
        names = pd.Index(adata.var_names.astype(str))
        missing = self.var_names.difference(names, sort=False)
        extra = names.difference(self.var_names, sort=False)
        if len(missing) or len(extra):
            cells = pd.Index(adata.obs_names.astype(str))
            if len(missing) and self.var_names.isin(cells).mean() > 0.9:
                raise ValueError(f"adata looks transposed: the model's genes are its cell names "
                                 f"(obs_names). {TRANSPOSED_HINT}")
            parts = []
            if len(missing):
                parts.append(f"{len(missing)} genes of the model are missing ({_examples(list(missing))})")
            if len(extra):
                parts.append(f"{len(extra)} genes are not in the model ({_examples(list(extra))})")
            raise ValueError(
                "the genes of adata do not match the trained model: " + "; ".join(parts)
                + ". Subset or reorder with adata[:, model.var_names] (adding any missing genes "
                "as zero columns), or train a model on these genes"
            )
        positions = None
        if not names.equals(self.var_names):
            positions = self.var_names.get_indexer(names)  # model column of each adata column
            adata = adata[:, self.var_names]
        counts = CountMatrix(adata, self.config.data.layer)
        check_counts(counts, adata.obs_names, self.var_names, self.config.data.allow_non_integer)
        cov = self.covariate_encoder.transform(self._covariate_frame(adata.obs, covariate_values))
        bs = batch_size or self.config.train.batch_size
        # Inference reads densely unless first_layer="sparse" is set, so that numbers never
        # depend on how "auto" was settled for training.
        sparse = self.config.train.first_layer == "sparse"
        batches = CellBatches(counts, cov, np.arange(adata.n_obs), bs, device=self.device,
                              sparse=sparse, prefetch=self.config.train.prefetch)
        return batches, positions

    def _covariate_frame(self, obs: pd.DataFrame, values: dict[str, Any] | None) -> pd.DataFrame:
        """The covariate columns of ``obs``, with those named in ``values`` set to one value for
        every cell (e.g. ``{"batch": "donor1"}``: predict all cells as if in that batch)."""
        names = self.covariate_encoder.names
        if not values:
            return obs
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(
                f"covariate_values names {_examples(unknown)}, which the model was not trained "
                f"with; its covariates are {_examples(names) or 'none'}"
            )
        frame = pd.DataFrame(index=obs.index)
        for name in names:
            frame[name] = [values[name]] * len(obs) if name in values else obs[name].to_numpy()
        return frame

    def _ordered(self, adata):
        """``adata`` when its genes are in the model's order, else the view
        ``adata[:, self.var_names]``: for reading counts only, never stored, so that
        ``denoise()`` without an argument writes into the user's own AnnData."""
        if pd.Index(adata.var_names.astype(str)).equals(self.var_names):
            return adata
        return adata[:, self.var_names]

    def attach(self, adata) -> "ZiPo":
        """Use ``adata`` (the same genes, any order) as the data that :meth:`train` fits, e.g. to
        fine-tune a loaded model on new cells. The model keeps ``adata`` itself (not a reordered
        copy), so ``denoise()`` without an argument writes into it."""
        batches, _ = self._batches(adata, None)  # checks genes, counts and covariates
        self.adata = adata
        self._summary = check_counts(
            batches.counts, adata.obs_names, self.var_names, self.config.data.allow_non_integer
        )
        return self

    def _require_trained(self) -> None:
        if not self.is_trained:
            raise ValueError("the model is not trained yet; call model.train() first")

    @torch.no_grad()
    def get_latent(self, adata=None, batch_size: int | None = None) -> np.ndarray:
        """Latents U (cells x latent size) of ``adata`` (default: the training data)."""
        self._require_trained()
        batches, _ = self._batches(adata if adata is not None else self.adata, batch_size)
        self.network.eval()
        return np.concatenate([self.network.encode(x).cpu().numpy() for x, _, _ in batches])

    @torch.no_grad()
    def denoise(
        self,
        adata=None,
        expectation: Expectation = "rate",
        zero_inflation: bool = False,
        key_added: str = "zipo",
        batch_size: int | None = None,
        copy: bool = False,
        covariate_values: dict[str, Any] | None = None,
        genes: Sequence[str] | None = None,
        out: str | Path | None = None,
        denoised: bool = True,
        overwrite: bool = False,
    ):
        """Denoised counts, latents and library sizes of ``adata``'s cells.

        By default they are written into ``adata``: ``layers[f"{key_added}_denoised"]`` (cells x
        genes, float32), ``obsm[f"X_{key_added}"]`` (latents), ``obs[f"{key_added}_library_size"]``
        (predicted l), and with ``zero_inflation=True`` ``layers[f"{key_added}_zero_prob"]`` (z).

        ``expectation="rate"`` (default) is ``l * mu``, the expected count of the Poisson/NB
        component, i.e. the denoised expression with technical zeros removed.
        ``expectation="mixture"`` is ``(1 - z) * l * mu``, the expected value of the whole
        zero-inflated distribution (what a new measurement would average).

        ``covariate_values`` predicts every cell as if its covariates had these values, e.g.
        ``{"batch": "donor1"}`` gives batch-corrected expected counts with donor1 as the
        reference (the latents do not depend on covariates, so they are unchanged).

        For data too large for a cells x genes matrix in memory (a million cells x 20,000 genes
        is 80 GB), choose what is kept:

        - ``out="denoised.h5ad"``: stream everything to a new ``.h5ad`` file, one batch at a
          time (written to a temporary file, renamed when complete). ``adata`` is not modified.
          The file's ``X`` holds the denoised counts, with obs (+ library sizes), var and the
          latents in ``obsm``; it is returned opened backed, so ``X`` stays on disk (anndata
          loads obs, obsm and layers, so ``zero_inflation=True`` puts a second cells x genes
          matrix, ``layers[f"{key_added}_zero_prob"]``, in memory when the file is opened).
        - ``genes=[...]``: denoise only these genes; in memory they go to
          ``obsm[f"{key_added}_denoised"]`` (a DataFrame, cells x these genes), in ``out`` the
          file's genes are these genes.
        - ``denoised=False``: only the latents and library sizes (cells x latents in memory).

        Returns the AnnData when ``copy=True``, the backed output AnnData with ``out``, else
        None (the input is modified).
        """
        self._require_trained()
        if expectation not in ("rate", "mixture"):
            raise ValueError(f"expectation must be 'rate' or 'mixture', got {expectation!r}")
        adata = self.adata if adata is None else adata
        if adata is None:
            raise ValueError("pass the AnnData to denoise")
        if adata.isbacked and not copy and out is None:
            raise ValueError("adata is backed (read-only on disk); pass out='denoised.h5ad' to "
                             "stream the results to a file, or use copy=True or adata.to_memory()")
        if out is not None and copy:
            raise ValueError("out= writes a new file and copy=True a new AnnData in memory: pass one")
        if out is not None and not denoised:
            raise ValueError("out= streams the denoised counts to a file; with denoised=False "
                             "there is nothing large to stream: drop out= (latents and library "
                             "sizes go into adata, or a copy with copy=True)")
        keep = self._output_genes(adata, genes)
        batches, positions = self._batches(adata, batch_size, covariate_values)
        # Model columns to emit, in output order: adata's own order, or the requested genes.
        model_names = list(self.var_names)
        if keep is not None:
            cols = self.var_names.get_indexer(keep)
        elif positions is not None:
            cols, keep = positions, list(pd.Index(adata.var_names.astype(str)))
        else:
            cols, keep = None, model_names
        n, n_latent = adata.n_obs, self.config.model.encoder_dims[-1]
        sink = (
            StreamedOutput(out, adata.obs, keep, n_latent, key_added, denoised, zero_inflation,
                           var=_var_frame(adata, keep), overwrite=overwrite)
            if out is not None else
            MemoryOutput(n, len(keep), n_latent, denoised, zero_inflation)
        )
        columns = None if cols is None else torch.as_tensor(cols, device=self.device)
        self.network.eval()
        with sink:
            for x, c, idx in batches:
                o = self.network(x, c)
                latent = o.latent.cpu().numpy()
                library = torch.exp(o.log_library).cpu().numpy()
                mean = zprob = None
                if denoised or zero_inflation:
                    log_m = o.log_mean if columns is None else o.log_mean[:, columns]
                    z = (torch.sigmoid(o.logit_z if columns is None else o.logit_z[:, columns])
                         if o.logit_z is not None else None)
                    if denoised:
                        m = torch.exp(log_m)
                        mean = (m if expectation == "rate" or z is None else (1 - z) * m).cpu().numpy()
                    if zero_inflation:
                        zprob = (z if z is not None else torch.zeros_like(log_m)).cpu().numpy()
                sink.write(idx, latent, library, mean, zprob)
        if out is not None:
            return sink.result()
        target = self._output_target(adata, copy)
        sink.store(target, key_added, keep, subset=genes is not None)
        return target if copy else None

    def _output_genes(self, adata, genes: Sequence[str] | None) -> list[str] | None:
        if genes is None:
            return None
        genes = [str(g) for g in ([genes] if isinstance(genes, str) else genes)]
        unknown = [g for g in genes if g not in set(self.var_names)]
        if unknown:
            raise ValueError(f"genes={_examples(unknown)} are not genes of the model; choose from "
                             f"model.var_names ({len(self.var_names)} genes)")
        if len(set(genes)) != len(genes):
            raise ValueError("genes lists a gene more than once")
        return genes

    @staticmethod
    def _output_target(adata, copy: bool):
        if copy and adata.isbacked:
            # Only after the batches are read: to_memory() closes the backing file, which the
            # batches read from. Reopen it so the caller's backed AnnData stays usable.
            target = adata.to_memory()
            if not adata.file.is_open:
                adata.file.open()
            return target
        return adata.copy() if copy else adata

    def evaluate(self, adata=None, batch_size: int | None = None) -> dict[str, float]:
        """Mean NLL per matrix entry and total loss of ``adata`` under the trained model."""
        self._require_trained()
        batches, _ = self._batches(adata if adata is not None else self.adata, batch_size)
        loss, nll = evaluate(self.network, batches, self.config.model)
        return {"nll": nll, "loss": loss}

    def baseline_nll(self) -> float:
        """Validation NLL per entry of the baseline that predicts each gene's mean proportion in
        the training cells times each validation cell's library size (Poisson)."""
        if getattr(self, "validation_indices", None) is None or not len(self.validation_indices):
            raise ValueError("no validation split: train with validation_fraction > 0 first")
        counts = CountMatrix(self._ordered(self.adata), self.config.data.layer)
        genes = gene_totals(counts, self.train_indices)
        genes = np.where(genes > 0, genes, 0.5)  # a gene unseen in training still gets a rate
        cov = np.zeros((self.adata.n_obs, 0), dtype=np.float32)
        batches = CellBatches(counts, cov, self.validation_indices, self.config.train.batch_size)
        return baseline_nll(batches, torch.tensor(genes / genes.sum()))

    # ----------------------------------------------------------------- pruning and gene programs
    #: ``{delta, pruned_fraction, weights_pruned, weights_total}`` once :meth:`prune` ran (saved
    #: with the model), else None.
    pruning: dict | None = None

    def prune(self, delta: float = 1e-4, adata=None) -> dict:
        """Prune the first encoder layer: per neuron i, weights with
        ``|W_ig| / max_g |W_ig| < delta`` become zero, and stay zero through later training
        (:meth:`train` again fine-tunes only the kept weights) and :meth:`save`/:meth:`load`.

        Returns (and, with ``verbose``, prints) ``pruned_fraction`` (of all first-layer weights),
        ``weights_pruned``, ``weights_total``, ``delta`` and NLL/MSE before and after pruning:
        ``nll_*`` is the mean NLL per matrix entry (as :meth:`evaluate`), ``mse_*`` the mean over
        entries of ``(x - l * mu)^2``, the rate expectation (``denoise(expectation="rate")``).
        Both are computed on ``adata`` (all its cells) when given, else on the validation cells
        of the training data (all its cells without a validation split); they are None for a
        model loaded without data. Pruning again at a larger delta prunes more; pruned weights
        are never restored."""
        from .programs import prune

        return prune(self, delta, adata)

    def gene_programs(self, adata=None, min_weight: float = 0.0, key_added: str = "zipo") -> pd.DataFrame:
        """Each first-layer neuron as a signed gene set ("program_0007" = neuron 7).

        Returns a long DataFrame with columns ``program``, ``gene``, ``weight`` (signed),
        ``abs_weight`` and ``rank`` (1 = largest |weight| in its program), non-zero weights only,
        sorted by program then |weight| descending. ``min_weight`` in [0, 1] keeps only weights
        with ``|W_ig| >= min_weight * max_g |W_ig|`` (relative, like the pruning delta).

        Also writes into ``adata`` (default: the training data, if the model has it; genes in
        any order) ``varm[f"{key_added}_programs"]`` (genes x programs weights, float32; scipy
        CSR when more than half are zero) and ``uns[f"{key_added}_programs"]`` (``programs``
        names, ``n_genes`` per program, ``min_weight``, and ``delta``/``pruned_fraction`` when
        pruned)."""
        from .programs import gene_programs

        return gene_programs(self, adata, min_weight, key_added)

    def write_gmt(self, path: str | Path, top_n: int | None = None, min_weight: float = 0.0) -> Path:
        """Write the non-empty programs as a GMT file (name, description, genes by |weight|
        descending; at most ``top_n`` genes each), atomically. Returns the path."""
        from .programs import write_gmt

        return write_gmt(self, path, top_n, min_weight)

    def program_activity(self, adata=None, key_added: str = "zipo",
                         batch_size: int | None = None) -> np.ndarray:
        """Per-cell activity of each program: the first layer's pre-activation
        ``W1 T(x) + b1`` (T the input transform, log1p by default), cells x neurons float32,
        computed in mini-batches and written to ``adata.obsm[f"X_{key_added}_programs"]``
        (default adata: the training data). Pre-activation, because it is linear in the
        program's genes (a signed weighted sum of their log counts) before the sigmoid
        saturates and batch norm rescales it."""
        from .programs import program_activity

        return program_activity(self, adata, key_added, batch_size)

    # ----------------------------------------------------------------- persistence
    def save(self, path: str | Path, overwrite: bool = False) -> None:
        """Write the model (weights, config, genes, covariate encoding, history) to a directory,
        atomically: a crash never leaves a half-written model at ``path``."""
        save_model(self, path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path, adata=None, device: str = "cpu") -> "ZiPo":
        """Load a saved model. Pass ``adata`` to keep training it (fine-tuning).

        ``device`` is where the loaded model runs: denoising, and any further ``train()``
        (its ``config.train.device`` is set to it, so a model saved on a GPU machine trains on
        the CPU it was loaded to)."""
        return load_model(path, adata=adata, device=device)

    def plot_history(self, ax=None, path: str | Path | None = None):
        """Plot train/validation loss and learning rate per epoch; return the figure."""
        from .plotting import plot_history

        return plot_history(self.history, ax=ax, path=path)

    def __repr__(self) -> str:
        m = self.config.model
        state = f"trained {len(self.history)} epochs" if self.is_trained else "not trained"
        cov = f", covariates={self.covariate_encoder.names}" if self.covariate_encoder.specs else ""
        n_params = sum(p.numel() for p in self.network.parameters())
        return (
            f"ZiPo(likelihood={m.likelihood!r}, genes={len(self.var_names)}, "
            f"encoder={m.encoder_dims}{cov}, parameters={n_params:,}; {state})"
        )


def denoise(adata, layer: str | None = None, covariates: list[str] | None = None,
            likelihood: str = "zip", expectation: Expectation = "rate",
            zero_inflation: bool = False, copy: bool = False, return_model: bool = False,
            covariate_values: dict[str, Any] | None = None, **options: Any):
    """Train a ZiPo model on ``adata`` and write its denoised counts into it, in one call.

    ``options`` are any config options (``max_epochs``, ``seed``, ``encoder_dims``,
    ``alpha_mmd``, ...). ``covariate_values`` (e.g. ``{"batch": "A"}``) predicts every cell at
    these covariate values. See :meth:`ZiPo.denoise` for what is written. Returns the AnnData when ``copy=True``, the
    model when ``return_model=True`` (both: a tuple), else None.
    """
    model = ZiPo(adata, layer=layer, covariates=covariates, likelihood=likelihood, **options)
    model.train()
    result = model.denoise(adata, expectation=expectation, zero_inflation=zero_inflation, copy=copy,
                           covariate_values=covariate_values)
    if copy and return_model:
        return result, model
    return model if return_model else result
