"""Mini-batches of cells: shuffled in chunks, sharded over processes, prepared ahead by a
background thread, as dense or sparse CSR tensors."""

from __future__ import annotations

import queue
import threading
import time
from typing import Iterator

import numpy as np
import scipy.sparse as sp
import torch

from ..nn.sparse import csr_tensor
from .atlas import ConcatenatedRows
from .counts import CountMatrix


def split_cells(n_obs: int, validation_fraction: float, rng: np.random.Generator,
                max_validation: int = 0):
    """Random train/validation split of cell indices (both sorted): ``validation_fraction``
    of the cells, at most ``max_validation`` of them (0: no cap), held out."""
    perm = rng.permutation(n_obs)
    n_val = int(round(n_obs * validation_fraction))
    if max_validation:
        n_val = min(n_val, max_validation)
    if validation_fraction > 0 and n_obs - n_val < 2:
        raise ValueError(f"{n_obs} cells are too few to hold out a validation split")
    if validation_fraction > 0:
        n_val = max(n_val, 2)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def csr_to_torch(block: sp.csr_matrix) -> torch.Tensor:
    """A scipy CSR batch as a torch sparse CSR tensor (shares the arrays, no dense copy)."""
    return csr_tensor(torch.from_numpy(block.indptr.astype(np.int64, copy=False)),
                      torch.from_numpy(block.indices.astype(np.int64, copy=False)),
                      torch.from_numpy(block.data), block.shape)


class CellBatches:
    """Mini-batches of cells as (counts, covariates, indices); counts are a dense tensor, or a
    torch sparse CSR tensor with ``sparse=True`` (for the sparse first layer).

    Shuffling permutes *chunks* of ``chunk_size`` consecutive cells (of ``indices``) and fills
    each batch with several chunks: with ``chunk_size=1`` it is a plain permutation; larger
    chunks turn the reads of an on-disk (backed) matrix into a few contiguous slices. A chunk
    never crosses ``file_starts`` (the first cell of each file of a collection,
    :class:`~zipo.data.atlas.ConcatenatedRows`; ``indices`` sorted), so it is one read of one file.
    With ``prefetch > 0`` a background thread prepares the next batches while the model trains
    on the current one (in passes of more than one batch); ``wait_seconds`` accumulates the
    time the consumer waited for data. ``keep_loaded=True`` keeps the first whole pass's
    batches (on ``device``) and yields them again on every later pass.
    """

    def __init__(
        self,
        counts: CountMatrix,
        covariates: np.ndarray,
        indices: np.ndarray,
        batch_size: int,
        shuffle: bool = False,
        rng: np.random.Generator | None = None,
        device: torch.device | str = "cpu",
        sparse: bool = False,
        chunk_size: int = 1,
        prefetch: int = 0,
        shard: tuple[int, int] = (0, 1),
        keep_loaded: bool = False,
        file_starts: np.ndarray | None = None,
    ):
        self.counts, self.covariates = counts, covariates
        self.indices, self.batch_size = np.asarray(indices), batch_size
        self.shuffle, self.rng, self.device = shuffle, rng, torch.device(device)
        self.sparse, self.chunk_size, self.prefetch = sparse, max(1, int(chunk_size)), prefetch
        self.file_starts = file_starts
        # (rank, world size): each process takes its own contiguous share of every global
        # batch, so N processes see exactly the cells one process would see per step.
        self.shard = shard
        self.wait_seconds = 0.0
        if keep_loaded and shuffle:
            raise ValueError("keep_loaded needs the same batches every pass (shuffle=False)")
        # The first pass's batches, yielded again by every later pass (keep_loaded=True).
        self.keep_loaded = keep_loaded
        self._loaded: list | None = None

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def order(self) -> np.ndarray:
        """The cells of one pass, in batch order (draws from ``rng`` when shuffling)."""
        if not self.shuffle:
            return self.indices
        if self.chunk_size == 1:
            return self.rng.permutation(self.indices)
        bounds = self.chunk_bounds()
        chunks = self.rng.permutation(len(bounds) - 1)
        return np.concatenate([self.indices[bounds[k]:bounds[k + 1]] for k in chunks])

    def chunk_bounds(self) -> np.ndarray:
        """Where the shuffled chunks begin in ``indices``, and its length: every
        ``chunk_size`` cells, starting afresh at each of ``file_starts``."""
        n = len(self.indices)
        files = [] if self.file_starts is None else np.searchsorted(self.indices, self.file_starts)
        segments = np.unique(np.concatenate([[0], files, [n]]).astype(np.int64))
        starts = [np.arange(a, b, self.chunk_size) for a, b in zip(segments[:-1], segments[1:])]
        return np.concatenate([*starts, [n]])

    def _global_batches(self, skip: int = 0) -> Iterator[np.ndarray]:
        order = self.order()
        for start in range(skip * self.batch_size, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            if self.shuffle and len(idx) < 2 * self.shard[1]:
                continue  # batch norm cannot train on one cell; it comes back next epoch
            yield idx

    def local(self, idx: np.ndarray) -> np.ndarray:
        """This process's share of the global batch ``idx``."""
        rank, world = self.shard
        if world == 1:
            return idx
        bounds = np.linspace(0, len(idx), world + 1).round().astype(int)
        return idx[bounds[rank]:bounds[rank + 1]]

    def _load(self, idx: np.ndarray):
        local = self.local(idx)
        if self.sparse:
            x = csr_to_torch(self.counts.rows_csr(local))
        else:
            x = torch.from_numpy(self.counts.rows(local))
        c = torch.from_numpy(np.ascontiguousarray(self.covariates[local]))
        return x, c, local, len(idx)

    def _to_device(self, x: torch.Tensor, c: torch.Tensor):
        if self.device.type != "cuda":
            return x, c
        # Pinned host memory lets the copy run asynchronously beside the GPU's work.
        if x.layout == torch.strided:
            x = x.pin_memory()
        c = c.pin_memory()
        return x.to(self.device, non_blocking=True), c.to(self.device, non_blocking=True)

    def batches(self, skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, np.ndarray, int]]:
        """(counts, covariates, this process's cell indices, global batch size) per step;
        ``skip`` leaves out the pass's first batches unread (a run resumed mid-epoch)."""
        if self._loaded is not None:
            yield from self._loaded[skip:]
            return
        kept = [] if self.keep_loaded and not skip else None
        for batch in self._read(skip):
            if kept is not None:
                kept.append(batch)
            yield batch
        if kept is not None:  # a whole pass: a consumer that stopped early keeps nothing
            self._loaded = kept

    def _read(self, skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, np.ndarray, int]]:
        loaded = map(self._load, self._global_batches(skip))
        # A pass of one batch has nothing to overlap its read with: the thread would only
        # cost its start and hand-over (~2 ms an epoch on 100 cells, 3 passes of one batch).
        if self.prefetch > 0 and len(self) > 1:
            loaded = _prefetched(loaded, self.prefetch, self)
        else:
            loaded = _timed(loaded, self)
        for x, c, local, n_global in loaded:
            x, c = self._to_device(x, c)
            yield x, c, local, n_global

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, np.ndarray]]:
        for x, c, idx, _ in self.batches():
            yield x, c, idx


# Validation cells x genes up to which their batches stay loaded between epochs: 64 MB of
# float32 counts, and as much again for each of the kept and held-out molecules.
KEEP_LOADED_ENTRIES = 2**24


def training_batches(counts: CountMatrix, covariates: np.ndarray, train_idx: np.ndarray,
                     val_idx: np.ndarray, config, rng: np.random.Generator,
                     device: torch.device, sparse: bool,
                     shard: tuple[int, int]) -> tuple[CellBatches, CellBatches | None]:
    """Shuffled batches of the training cells and ordered ones of the validation cells (None
    without any), as ``config`` (the [train] options) asks; ``sparse``: the first layer is
    sparse (every batch CSR)."""
    chunk = config.shuffle_chunk or (max(1, config.batch_size // 8) if counts.on_disk else 1)
    loader = dict(device=device, prefetch=config.prefetch, shard=shard)
    # Under Noise2Self on the CPU the training batches of sparse counts stay CSR for the dense
    # first layer too: the molecule split draws from the stored non-zeros and densifies what
    # it returns (binomial_split), instead of scanning each dense batch for them. (A GPU finds
    # them fast, and takes dense batches from pinned memory, copied beside its work.)
    train_sparse = sparse or (config.objective_heldout > 0 and counts.stored_sparse
                              and torch.device(device).type == "cpu")
    train = CellBatches(counts, covariates, train_idx, config.batch_size, True, rng,
                        chunk_size=chunk, file_starts=file_starts(counts), sparse=train_sparse,
                        **loader)
    # Small validation sets are read (and split, HeldoutMolecules) once, not every epoch.
    keep = len(val_idx) * counts.n_vars <= KEEP_LOADED_ENTRIES
    val = (CellBatches(counts, covariates, val_idx, config.batch_size, keep_loaded=keep,
                       sparse=sparse, **loader)
           if len(val_idx) else None)
    return train, val


def file_starts(counts: CountMatrix) -> np.ndarray | None:
    """The first cell of each file when ``counts`` are a collection's, else None."""
    return counts.source.starts if isinstance(counts.source, ConcatenatedRows) else None


def inference_batches(counts: CountMatrix, covariates: np.ndarray, config, device: torch.device,
                      batch_size: int | None = None) -> CellBatches:
    """Batches of all cells in order, as ``config`` (the [train] options) asks. They are read
    densely unless first_layer="sparse" is set, so that numbers never depend on how "auto" was
    settled for training."""
    return CellBatches(counts, covariates, np.arange(counts.n_obs), batch_size or config.batch_size,
                       device=device, sparse=config.first_layer == "sparse",
                       prefetch=config.prefetch)


def _timed(items: Iterator, owner: CellBatches) -> Iterator:
    while True:
        started = time.perf_counter()
        try:
            item = next(items)
        except StopIteration:
            return
        owner.wait_seconds += time.perf_counter() - started
        yield item


def _prefetched(items: Iterator, depth: int, owner: CellBatches) -> Iterator:
    """Run ``items`` in a background thread, ``depth`` batches ahead. Reading and slicing
    release the GIL for most of their time, so this overlaps I/O with the training step."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        """Queue ``item`` unless the consumer has gone; never blocks for good."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(done)
        except BaseException as e:  # surfaced in the consumer, with its traceback
            put(e)

    worker = threading.Thread(target=produce, name="zipo-batch-loader", daemon=True)
    worker.start()
    try:
        while True:
            started = time.perf_counter()
            item = q.get()
            owner.wait_seconds += time.perf_counter() - started
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()
