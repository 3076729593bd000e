"""The user-facing model: ``ZiPo(adata, ...)``, ``.train()``, ``.denoise()``, ``.save()``/``.load()``."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import pandas as pd
import torch

from .config import ZiPoConfig, read_config_file
from .data import (
    TRANSPOSED_HINT, CellBatches, CountMatrix, CovariateEncoder, _examples, check_counts,
    check_orientation, gene_totals, split_cells,
)
from .io import load_model, read_checkpoint, save_model, write_checkpoint
from .network import ZiPoNetwork
from .presets import preset_config
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
        counts = CountMatrix(self.adata, self.config.data.layer)
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
        self.network.to(self.device)

        train_batches = CellBatches(counts, cov, train_idx, tc.batch_size, True, rng, self.device)
        val_batches = (
            CellBatches(counts, cov, val_idx, tc.batch_size, device=self.device)
            if len(val_idx) else None
        )
        self.train_indices, self.validation_indices = train_idx, val_idx
        trainer = Trainer(self.network, train_batches, val_batches, self.config.model, tc)
        save = None
        if checkpoint_dir is not None:
            if resume:
                trainer.load_state_dict(read_checkpoint(checkpoint_dir, self))
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
        return CellBatches(counts, cov, np.arange(adata.n_obs), bs, device=self.device), positions

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

    def attach(self, adata) -> "ZiPo":
        """Use ``adata`` (the same genes, any order) as the data that :meth:`train` fits, e.g. to
        fine-tune a loaded model on new cells."""
        batches, positions = self._batches(adata, None)  # checks genes, counts and covariates
        if positions is not None:
            adata = adata[:, self.var_names]
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
    ):
        """Write denoised counts, latents and library sizes into ``adata``.

        Adds ``layers[f"{key_added}_denoised"]`` (cells x genes, float32),
        ``obsm[f"X_{key_added}"]`` (latents), ``obs[f"{key_added}_library_size"]`` (predicted l),
        and with ``zero_inflation=True`` ``layers[f"{key_added}_zero_prob"]`` (z).

        ``expectation="rate"`` (default) is ``l * mu``, the expected count of the Poisson/NB
        component, i.e. the denoised expression with technical zeros removed.
        ``expectation="mixture"`` is ``(1 - z) * l * mu``, the expected value of the whole
        zero-inflated distribution (what a new measurement would average).

        ``covariate_values`` predicts every cell as if its covariates had these values, e.g.
        ``{"batch": "donor1"}`` gives batch-corrected expected counts with donor1 as the
        reference (the latents do not depend on covariates, so they are unchanged).

        Returns the AnnData when ``copy=True``, else None (the input is modified).
        """
        self._require_trained()
        if expectation not in ("rate", "mixture"):
            raise ValueError(f"expectation must be 'rate' or 'mixture', got {expectation!r}")
        adata = self.adata if adata is None else adata
        if adata is None:
            raise ValueError("pass the AnnData to denoise")
        if adata.isbacked and not copy:
            raise ValueError("adata is backed (read-only on disk); use copy=True or adata.to_memory()")
        batches, positions = self._batches(adata, batch_size, covariate_values)
        n, g = adata.n_obs, len(self.var_names)
        denoised = np.empty((n, g), dtype=np.float32)
        zprob = np.empty((n, g), dtype=np.float32) if zero_inflation else None
        latent = np.empty((n, self.config.model.encoder_dims[-1]), dtype=np.float32)
        library = np.empty(n, dtype=np.float32)
        cols = slice(None) if positions is None else positions
        self.network.eval()
        for x, c, idx in batches:
            out = self.network(x, c)
            log_m = out.log_mean
            z = torch.sigmoid(out.logit_z) if out.logit_z is not None else torch.zeros_like(log_m)
            m = torch.exp(log_m) if expectation == "rate" else (1 - z) * torch.exp(log_m)
            denoised[idx] = m.cpu().numpy()[:, cols]
            if zprob is not None:
                zprob[idx] = z.cpu().numpy()[:, cols]
            latent[idx] = out.latent.cpu().numpy()
            library[idx] = torch.exp(out.log_library).cpu().numpy()
        if copy and adata.isbacked:
            # Only after the batches are read: to_memory() closes the backing file, which the
            # batches read from. Reopen it so the caller's backed AnnData stays usable.
            out_adata = adata.to_memory()
            if not adata.file.is_open:
                adata.file.open()
        else:
            out_adata = adata.copy() if copy else adata
        out_adata.layers[f"{key_added}_denoised"] = denoised
        if zprob is not None:
            out_adata.layers[f"{key_added}_zero_prob"] = zprob
        out_adata.obsm[f"X_{key_added}"] = latent
        out_adata.obs[f"{key_added}_library_size"] = library
        return out_adata if copy else None

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
        counts = CountMatrix(self.adata, self.config.data.layer)
        genes = gene_totals(counts, self.train_indices)
        genes = np.where(genes > 0, genes, 0.5)  # a gene unseen in training still gets a rate
        cov = np.zeros((self.adata.n_obs, 0), dtype=np.float32)
        batches = CellBatches(counts, cov, self.validation_indices, self.config.train.batch_size)
        return baseline_nll(batches, torch.tensor(genes / genes.sum()))

    # ----------------------------------------------------------------- persistence
    def save(self, path: str | Path, overwrite: bool = False) -> None:
        """Write the model (weights, config, genes, covariate encoding, history) to a directory,
        atomically: a crash never leaves a half-written model at ``path``."""
        save_model(self, path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path, adata=None, device: str = "cpu") -> "ZiPo":
        """Load a saved model. Pass ``adata`` to keep training it (fine-tuning)."""
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
            **options: Any):
    """Train a ZiPo model on ``adata`` and write its denoised counts into it, in one call.

    ``options`` are any config options (``max_epochs``, ``seed``, ``encoder_dims``, ...). See
    :meth:`ZiPo.denoise` for what is written. Returns the AnnData when ``copy=True``, the
    model when ``return_model=True`` (both: a tuple), else None.
    """
    model = ZiPo(adata, layer=layer, covariates=covariates, likelihood=likelihood, **options)
    model.train()
    result = model.denoise(adata, expectation=expectation, zero_inflation=zero_inflation, copy=copy)
    if copy and return_model:
        return result, model
    return model if return_model else result
