"""The training loop and the state a checkpoint holds (the schedule and the stopping rule it
follows are in :mod:`zipo.train.schedule`).

Training is counted in optimiser steps, not epochs: validation, the plateau, early stopping
and checkpoints come every *round* of at most ``train.validation_interval`` steps. On data
whose epoch is shorter than that a round is an epoch; a large dataset is validated several
times a pass, so it stops within a few passes once it has converged, and a checkpoint can
fall mid-epoch."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..config import ModelConfig, TrainConfig
from ..data.loader import CellBatches
from ..nn.network import ZiPoNetwork
from .distributed import all_reduce_sum, world
from .evaluate import evaluate
from .heldout import FixedSplit, HeldoutMolecules, binomial_split, split_seed
from .loss import loss_terms
from .schedule import (EarlyStopping, LearningRateSchedule, monitored_column, patience_scale,
                       round_ends)


# The latents' noise stream's seed after the splits' (no multiple of split_seed's per-process step)
NOISE_STREAM = 500_000


@dataclass
class _RoundSums:
    """Cell-weighted sums of the training loss over a round's steps."""

    total: float = 0.0
    nll: float = 0.0
    cells: int = 0
    started: float = field(default_factory=time.perf_counter)
    data_wait: float = 0.0


class Trainer:
    """The training loop and everything it carries between rounds (weights and their moving
    average, Adam state, schedule, early-stopping record, history, random streams, position in
    the epoch), so a run can be checkpointed and resumed exactly where it stopped, mid-epoch
    included."""

    def __init__(self, net: ZiPoNetwork, train_batches: CellBatches,
                 val_batches: CellBatches | None, model_config: ModelConfig,
                 train_config: TrainConfig, forward: torch.nn.Module | None = None,
                 autocast: Callable[[], Any] | None = None,
                 mmd_groups: list[tuple[int, int]] | None = None, rounds_before: int = 0,
                 first_layer: str = "dense", validation_split: FixedSplit | None = None):
        self.net, self.train_batches, self.val_batches = net, train_batches, val_batches
        # Rounds the model trained before this run: fine-tuning goes on down the warm-down
        # instead of starting it again at a rate that would undo the trained weights.
        self.rounds_before = rounds_before
        # Column ranges of the categorical covariates the alpha_mmd penalty mixes over.
        self.mmd_groups = list(mmd_groups or [])
        # What the batches go through: the network itself, or its DDP wrapper.
        self.forward = forward if forward is not None else net
        # Mixed precision on GPU: a context the network (not the likelihood) runs in.
        self.autocast = autocast or contextlib.nullcontext
        self.model_config, self.train_config = model_config, train_config
        # The fused kernel updates each parameter in one pass: ~6x faster than the default
        # multi-tensor Adam on the genes x 2,048 first layer on CPU (0.07 s against 0.44 s).
        # Two groups: the decoder's rate is the encoder's x decoder_lr_factor (_start_round).
        base, rest = net.parameter_groups()
        self.optimiser = torch.optim.Adam(
            [{"params": base, "lr_factor": 1.0},
             {"params": rest, "lr_factor": train_config.decoder_lr_factor}],
            lr=train_config.learning_rate, fused=_fused_adam_supported(net))
        self.round_ends = round_ends(len(train_batches), train_config.validation_interval)
        steps_per_round = math.ceil(len(train_batches) / len(self.round_ends))
        scale = patience_scale(train_config, steps_per_round)
        self.schedule = LearningRateSchedule(train_config, train_config.plateau_patience * scale,
                                             len(self.round_ends))
        self.stopper = EarlyStopping(train_config.early_stopping_patience * scale,
                                     train_config.early_stopping_threshold)
        self.history: list[dict] = []
        # How the first layer reads a batch: the batches are CSR for "sparse", and may be CSR
        # for "dense" too (under Noise2Self the split densifies them; loader.training_batches).
        self.first_layer = first_layer
        self.epoch = 0  # epochs completed
        self.epoch_step = 0  # steps into the current epoch (a checkpoint may fall mid-epoch)
        self.steps = 0  # optimiser steps of this run
        # The shuffling RNG's state when the current epoch drew its order: a run resumed
        # mid-epoch draws the same order again and skips the steps already taken.
        self.epoch_shuffle_state = None
        # Torch's global random state is never used: the molecule splits of objective_heldout
        # and the latents' noise under alpha_kl draw from streams of their own, one per process
        # (rank 0's is the single-process one; the shuffling's is the batches' rng). With
        # either on, N processes train like 1 statistically, not step for step.
        seed, device = split_seed(train_config.seed), train_batches.device
        self.split_generator = torch.Generator(device=device).manual_seed(seed)
        self.noise_generator = torch.Generator(device=device).manual_seed(seed + NOISE_STREAM)
        self.stopped = False
        # The moving average of the weights (train.weight_average), swapped in to validate.
        self.averaged = ([p.detach().clone() for p in net.parameters()]
                         if train_config.weight_average > 0 else None)
        self.heldout_molecules = (
            HeldoutMolecules(val_batches, train_config.heldout_molecules, train_config.seed,
                             fixed=validation_split)
            if val_batches is not None and train_config.heldout_molecules > 0 else None)

    def state_dict(self) -> dict:
        """Plain containers of tensors and numbers only (loadable with ``weights_only=True``)."""
        return {
            "epoch": self.epoch,
            "epoch_step": self.epoch_step,
            "steps": self.steps,
            "stopped": self.stopped,
            "first_layer": self.first_layer,
            "network": self.net.state_dict(),
            "optimiser": self.optimiser.state_dict(),
            "schedule": self.schedule.state_dict(),
            "stopper": {"best": self.stopper.best, "best_epoch": self.stopper.best_epoch,
                        "best_state": self.stopper.best_state,
                        "progress_epoch": self.stopper.progress_epoch},
            "history": self.history,
            "shuffle_rng": (self.epoch_shuffle_state if self.epoch_step
                            else self.train_batches.rng.bit_generator.state),
            "split_rng": self.split_generator.get_state(),
            "noise_rng": self.noise_generator.get_state(),
            "averaged": self.averaged,
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.stopped = state["epoch"], state["stopped"]
        # checkpoints written before rounds were at epoch ends
        self.epoch_step = state.get("epoch_step", 0)
        self.steps = state.get("steps", 0)
        self.net.load_state_dict(state["network"])
        self.optimiser.load_state_dict(self._regrouped(state["optimiser"]))
        self.schedule.load_state_dict(state["schedule"])
        s = state["stopper"]
        self.stopper.best, self.stopper.best_epoch = s["best"], s["best_epoch"]
        self.stopper.best_state = s["best_state"]
        # checkpoints written before early_stopping_threshold: every gain was progress
        self.stopper.progress_epoch = s.get("progress_epoch", s["best_epoch"])
        self.history = list(state["history"])
        # mid-epoch, the state the epoch drew its order from
        self.train_batches.rng.bit_generator.state = state["shuffle_rng"]
        self.epoch_shuffle_state = state["shuffle_rng"] if self.epoch_step else None
        if self.averaged is not None and state.get("averaged") is not None:
            self.averaged = state["averaged"]
        # (checkpoints written before these streams lack them)
        for key, generator in (("split_rng", self.split_generator),
                               ("noise_rng", self.noise_generator)):
            if key in state:
                generator.set_state(state[key])

    def history_after(self, earlier: pd.DataFrame) -> pd.DataFrame:
        """This run's history appended to an ``earlier`` one, epochs and steps counted on from
        it."""
        new = pd.DataFrame(self.history)
        if len(earlier):
            new["epoch"] += earlier["epoch"].iloc[-1]
            if "step" in earlier:
                new["step"] += earlier["step"].iloc[-1]
        return pd.concat([earlier, new], ignore_index=True)

    def _step(self, x: torch.Tensor, c: torch.Tensor, idx, n_global: int, sums: _RoundSums,
              n_proc: int) -> None:
        """One optimiser step on a batch, added to the round's ``sums``."""
        net, config = self.net, self.model_config
        target, rate_scale = x, 1.0
        heldout = self.train_config.objective_heldout
        if heldout > 0:
            # Noise2Self: predict molecules the network did not see, a fresh split each step.
            x, target = binomial_split(x, heldout, self.split_generator,
                                       dense=self.first_layer == "dense")
            rate_scale = heldout / (1 - heldout)
        with self.autocast():
            out = self.forward(x, c, noise=self.noise_generator)
        # With DDP the alpha_mmd penalty compares the cells of this process's share of
        # the batch only (a smaller sample of the same distributions).
        terms = loss_terms(net, out, target, config, covariates=c,
                           mmd_groups=self.mmd_groups, rate_scale=rate_scale)
        if not torch.isfinite(terms.total):
            _restore(net, self.stopper)
            raise FloatingPointError(
                f"the training loss became {terms.total.item()} in epoch {self.epoch + 1}; "
                f"the learning rate ({self.schedule.lr:.3g}) may be too high for these data, or "
                "library sizes are extreme: lower train.learning_rate or check the counts. The "
                "best weights so far were kept (and the last checkpoint, if any, is untouched)."
            )
        self.optimiser.zero_grad(set_to_none=True)
        # Each process holds len(idx) of the n_global cells and DDP averages over the
        # processes, so this weight makes the step that of the whole global batch.
        (terms.total * (len(idx) * n_proc / n_global)).backward()
        self.optimiser.step()
        if self.averaged is not None:
            with torch.no_grad():
                for average, p in zip(self.averaged, self.net.parameters()):
                    average.lerp_(p, 1 - self.train_config.weight_average)
        sums.total += terms.total.item() * len(idx)
        sums.nll += terms.nll.item() * len(idx)
        sums.cells += len(idx)

    def _end_round(self, sums: _RoundSums, lr: float) -> dict:
        """Validate, record the round in the history, and step the schedule and early
        stopping."""
        total, nll, n = all_reduce_sum([sums.total, sums.nll, float(sums.cells)])
        steps_per_epoch = self.round_ends[-1]
        row = {"epoch": self.epoch + self.epoch_step / steps_per_epoch, "step": self.steps,
               "train_loss": total / max(n, 1), "train_nll": nll / max(n, 1)}
        with _swapped(self.net, self.averaged):
            if self.val_batches is not None:
                row["validation_loss"], row["validation_nll"] = evaluate(
                    self.forward, self.val_batches, self.model_config)
                if self.heldout_molecules is not None:
                    row.update(self.heldout_molecules.nll(self.forward))
            row["learning_rate"] = lr
            row["seconds"] = time.perf_counter() - sums.started
            # Time the training step sat waiting for the loader (0 when it keeps up).
            row["data_wait_seconds"] = self.train_batches.wait_seconds - sums.data_wait
            self.history.append(row)
            monitored = row[monitored_column(row)]
            self.schedule.step(monitored)
            # update() first: it records the round's weights when they are the best
            self.stopped = (self.stopper.update(len(self.history) - 1, monitored, self.net)
                            or self.schedule.finished)
        return row

    def run(self, checkpoint: Callable[["Trainer"], None] | None = None,
            checkpoint_every: int = 0,
            callback: Callable[["Trainer"], None] | None = None) -> list[dict]:
        """Train until early stopping, the plateau's last cut or ``max_epochs``; call
        ``checkpoint(self)`` every ``checkpoint_every`` rounds and ``callback(self)`` after
        every round. The best-validation weights are loaded back at the end, also when
        ``callback`` raises."""
        tc = self.train_config
        n_proc = world()[1]
        steps_per_epoch = self.round_ends[-1]
        bar = tqdm(total=tc.max_epochs, desc="ZiPo training", unit="epoch",
                   disable=not tc.verbose or world()[0] > 0, dynamic_ncols=True,
                   initial=self.epoch + self.epoch_step / steps_per_epoch,
                   bar_format="{l_bar}{bar}| {n:.4g}/{total} [{elapsed}<{remaining}{postfix}]")
        try:
            while not self.stopped and self.epoch < tc.max_epochs:
                self._epoch(checkpoint, checkpoint_every, callback, bar, n_proc)
        except BaseException:
            bar.close()
            _restore(self.net, self.stopper)
            raise
        bar.close()
        _restore(self.net, self.stopper)
        return self.history

    def _epoch(self, checkpoint, checkpoint_every: int, callback, bar, n_proc: int) -> None:
        """The rest of the current epoch, round by round, until it ends or training stops."""
        if self.epoch_step == 0:
            self.epoch_shuffle_state = self.train_batches.rng.bit_generator.state
        else:  # resumed mid-epoch: the epoch's order again, without the steps taken
            self.train_batches.rng.bit_generator.state = self.epoch_shuffle_state
        ends = set(self.round_ends[:-1])
        lr, sums = self._start_round()
        batches = self.train_batches.batches(skip=self.epoch_step)
        try:
            for x, c, idx, n_global in batches:
                self._step(x, c, idx, n_global, sums, n_proc)
                self.steps += 1
                self.epoch_step += 1
                if self.epoch_step in ends:
                    self._finish_round(sums, lr, checkpoint, checkpoint_every, callback, bar)
                    if self.stopped:
                        return
                    lr, sums = self._start_round()
        finally:
            batches.close()  # stops a prefetching thread when training stops mid-epoch
        self.epoch += 1
        self.epoch_step = 0
        self._finish_round(sums, lr, checkpoint, checkpoint_every, callback, bar)

    def _regrouped(self, saved: dict) -> dict:
        """An optimiser state saved before the two parameter groups (checkpoints with one
        group, the network's parameters in their order) in today's groups; others as saved."""
        if len(saved["param_groups"]) == len(self.optimiser.param_groups):
            return saved
        (old_group,) = saved["param_groups"]
        position = {id(p): i for i, p in enumerate(self.net.parameters())}
        # the state dict numbers parameters group after group
        old_index = [position[id(p)] for g in self.optimiser.param_groups for p in g["params"]]
        groups = [{**old_group, "params": g["params"], "lr_factor": g["lr_factor"]}
                  for g in self.optimiser.state_dict()["param_groups"]]
        return {"state": {new: saved["state"][old] for new, old in enumerate(old_index)
                          if old in saved["state"]},
                "param_groups": groups}

    def _start_round(self) -> tuple[float, _RoundSums]:
        """Set the round's learning rate (the plateau may have cut it mid-epoch) and the
        network to training mode; the round's empty sums."""
        self.schedule.rounds = self.rounds_before + len(self.history)
        lr = self.schedule.lr
        for group in self.optimiser.param_groups:
            group["lr"] = lr * group["lr_factor"]
        self.forward.train()
        return lr, _RoundSums(data_wait=self.train_batches.wait_seconds)

    def _finish_round(self, sums: _RoundSums, lr: float, checkpoint, checkpoint_every: int,
                      callback, bar) -> None:
        """End the round; checkpoint every ``checkpoint_every`` rounds, at a stop and at the
        last epoch's end, then call ``callback``."""
        row = self._end_round(sums, lr)
        bar.update(row["epoch"] - bar.n)
        bar.set_postfix(train=f"{row['train_loss']:.4f}",
                        val=f"{row.get('validation_loss', float('nan')):.4f}", lr=f"{lr:.2g}")
        last = self.epoch == self.train_config.max_epochs and self.epoch_step == 0
        if checkpoint is not None and checkpoint_every and (
                len(self.history) % checkpoint_every == 0 or self.stopped or last):
            checkpoint(self)
        if callback is not None:
            callback(self)


@contextlib.contextmanager
def _swapped(net: torch.nn.Module, averaged: list[torch.Tensor] | None):
    """The network holds the ``averaged`` weights inside the block and its own after it (the
    block runs as it is where there is no average)."""
    if averaged is None:
        yield
        return
    params = list(net.parameters())
    with torch.no_grad():
        for p, average in zip(params, averaged):
            p.data, average.data = average.data, p.data
    try:
        yield
    finally:
        with torch.no_grad():
            for p, average in zip(params, averaged):
                p.data, average.data = average.data, p.data


def _fused_adam_supported(net: torch.nn.Module) -> bool:
    return all(p.device.type in ("cpu", "cuda") and p.is_floating_point()
               for p in net.parameters())


def _restore(net: torch.nn.Module, stopper: EarlyStopping) -> None:
    if stopper.best_state is not None:
        net.load_state_dict(stopper.best_state)
