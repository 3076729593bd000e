"""The schedule and the stopping rule: the learning rate's warm-down and plateau, early
stopping with the best round's weights, and how an epoch is cut into rounds."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..config import TrainConfig


def monitored_column(history) -> str:
    """The figure the schedule and early stopping follow, and whose best epoch's weights a
    trained model keeps: the held-out molecules' NLL when validation measures it, else the
    validation loss, else (no validation cells) the training loss. ``history`` is a history
    row or table (anything with ``in``)."""
    for column in ("validation_heldout_nll", "validation_loss"):
        if column in history:
            return column
    return "train_loss"


def kept_row(history) -> int:
    """Position in the ``history`` table of the epoch whose weights a trained model keeps: the
    best of :func:`monitored_column`."""
    return int(history[monitored_column(history)].to_numpy().argmin())


def plateau_stop(config: TrainConfig, rounds_per_epoch: int = 1) -> int:
    """The plateau cut that ends training: ``config.plateau_stop``; where it is None, the first
    on data whose epoch is one round and the second on data validated several times a pass
    (an epoch over ``validation_interval`` steps; the small-data options also set 2, under 500
    cells). At 100,000 and 1,000,000 simulated cells the second cut took 1.2-1.7x the time and
    lowered the error against the true rates by 0.9-3.0% (docs, history: "Stopping at the
    plateau's second cut on data of several rounds an epoch")."""
    if config.plateau_stop is not None:
        return config.plateau_stop
    return 2 if rounds_per_epoch > 1 else 1


def patience_scale(config: TrainConfig, steps_per_round: int) -> int:
    """The factor both patiences (in rounds) are multiplied by so that the plateau's spans at
    least ``config.patience_min_steps`` optimiser steps (1 where it already does)."""
    steps = max(config.plateau_patience, 1) * max(steps_per_round, 1)
    return max(1, math.ceil(config.patience_min_steps / steps))


class LearningRateSchedule:
    """lr = max(lr0 * decay^rounds, min(lr_min, lr0)) * plateau_scale.

    With the default start of 0.001 it is flat at ``lr_min``; 0.0212 is the paper's warm-down
    (0.0212 * 0.9^30 ~= 0.001), counted in rounds like the rest of the schedule (epochs on data
    of up to ``validation_interval`` steps an epoch, and under the presets).
    ``rounds`` (rounds completed) is set by the trainer. On top of it a reduce-on-plateau multiplies ``plateau_scale`` by ``factor``
    after ``patience`` rounds without a relative improvement of ``threshold`` in the monitored
    loss; ``cuts`` counts those reductions (``stop_cut`` of them end training: :func:`plateau_stop`
    for data of ``rounds_per_epoch`` rounds an epoch).
    """

    def __init__(self, config: TrainConfig, patience: int | None = None,
                 rounds_per_epoch: int = 1):
        self.c = config
        self.patience = config.plateau_patience if patience is None else patience
        self.stop_cut = plateau_stop(config, rounds_per_epoch)
        self.rounds = 0
        self.plateau_scale = 1.0
        self.best = math.inf
        self.bad_epochs = 0  # rounds without progress (the name checkpoints carry)
        self.cuts = 0

    @property
    def lr(self) -> float:
        # the floor never lifts the rate above its start (learning_rate under lr_min is flat)
        start = self.c.learning_rate
        decayed = max(start * self.c.lr_decay**self.rounds, min(self.c.lr_min, start))
        return decayed * self.plateau_scale

    def step(self, monitored: float) -> None:
        """Record one round's monitored loss."""
        if math.isinf(self.best) or monitored < self.best - self.c.plateau_threshold * abs(self.best):
            self.best, self.bad_epochs = monitored, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.patience:
                self.plateau_scale *= self.c.plateau_factor
                self.bad_epochs = 0
                self.cuts += 1

    @property
    def finished(self) -> bool:
        """Whether the plateau has cut the rate ``stop_cut`` times (never when it is 0)."""
        return 0 < self.stop_cut <= self.cuts

    def state_dict(self) -> dict:
        return {k: getattr(self, k)
                for k in ("rounds", "plateau_scale", "best", "bad_epochs", "cuts")}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            # checkpoints written before the decay counted rounds name them "epoch"
            setattr(self, "rounds" if k == "epoch" else k, v)


@dataclass
class EarlyStopping:
    """Keeps the best round's weights, and stops ``patience`` rounds after the last round that
    improved on the best by more than ``threshold`` (relative): smaller gains still update the
    weights kept but do not extend training. (``best_epoch`` and ``progress_epoch`` count
    rounds, which are epochs on data of an epoch up to ``validation_interval`` steps.)"""

    patience: int
    threshold: float = 0.0
    best: float = math.inf
    best_epoch: int = -1
    best_state: dict | None = field(default=None, repr=False)
    progress_epoch: int = -1

    def update(self, epoch: int, monitored: float, net: torch.nn.Module) -> bool:
        """Record the round; return True when training should stop."""
        if monitored < self.best - self.threshold * abs(self.best) or self.best_epoch < 0:
            self.progress_epoch = epoch
        if monitored < self.best:
            self.best, self.best_epoch = monitored, epoch
            self.best_state = _snapshot(net.state_dict(), self.best_state)
        return epoch - self.progress_epoch >= self.patience


def _snapshot(state: dict, into: dict | None) -> dict:
    """A copy of ``state``, written into the tensors of an earlier copy ``into`` where they
    match: on small data a best epoch comes every few epochs, and allocating a fresh copy
    each time cost about 1 ms an epoch of 25 (100 cells)."""
    if into is None or into.keys() != state.keys() or any(
            into[k].shape != v.shape or into[k].dtype != v.dtype
            or into[k].device != v.device for k, v in state.items()):
        return {k: v.detach().clone() for k, v in state.items()}
    for k, v in state.items():
        into[k].copy_(v)
    return into


def round_ends(steps_per_epoch: int, interval: int) -> list[int]:
    """Steps into an epoch after which a round ends: the epoch cut into the fewest equal
    rounds of at most ``interval`` steps (one round, the whole epoch, when it is shorter)."""
    rounds = max(1, math.ceil(steps_per_epoch / max(interval, 1)))
    return [round(steps_per_epoch * (r + 1) / rounds) for r in range(rounds)]
