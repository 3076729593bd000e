"""Validation on held-out molecules of cells that train (train.validation_holdout =
"molecules"): the fixed split, the counts the cells train on, and what validation and the
borrowing's choice score."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch

import zipo
from zipo.data.counts import CountMatrix
from zipo.train import trainer as trainer_module
from zipo.train.heldout import FixedSplit, HeldoutMolecules

from conftest import small_model

CELLS = np.array([0, 3, 7, 20, 41])


def test_the_fixed_split_keeps_every_molecule_and_follows_the_seed(pbmc_small):
    counts = CountMatrix(pbmc_small)
    whole = counts.rows_csr(CELLS)
    split = FixedSplit.draw(counts, CELLS, 0.1, seed=0)
    assert (split.kept + split.held != whole).nnz == 0
    assert split.kept.min() >= 0 and split.held.min() >= 0
    assert 0.05 < split.held.sum() / whole.sum() < 0.15
    assert (FixedSplit.draw(counts, CELLS, 0.1, seed=0).held != split.held).nnz == 0
    assert (FixedSplit.draw(counts, CELLS, 0.1, seed=1).held != split.held).nnz > 0
    # dense counts split as their sparse copy does
    dense = CountMatrix(ad.AnnData(counts.rows(np.arange(counts.n_obs))))
    assert (FixedSplit.draw(dense, CELLS, 0.1, seed=0).held != split.held).nnz == 0


def test_replaced_rows_are_read_for_those_cells_only(pbmc_small):
    counts = CountMatrix(pbmc_small)
    split = FixedSplit.draw(counts, CELLS, 0.1, seed=0)
    replaced = split.counts(counts)
    idx = np.array([5, 3, 0, 41, 2])  # out of order, some replaced
    expected = counts.rows(idx)
    expected[[1, 2, 3]] = split.kept[[1, 0, 4]].toarray()
    np.testing.assert_array_equal(replaced.rows(idx), expected)
    np.testing.assert_array_equal(replaced.rows_csr(idx).toarray(), expected)
    assert (replaced.n_obs, replaced.n_vars) == (counts.n_obs, counts.n_vars)
    assert replaced.stored_sparse == counts.stored_sparse


def test_validation_cells_train_on_their_kept_molecules_only(pbmc_small, monkeypatch):
    seen = {}
    step = trainer_module.Trainer._step

    def recording_step(self, x, c, idx, *args):
        dense = x.to_dense() if x.layout == torch.sparse_csr else x
        for row, cell in zip(dense, idx):
            seen[int(cell)] = row.clone()
        return step(self, x, c, idx, *args)

    monkeypatch.setattr(trainer_module.Trainer, "_step", recording_step)
    model = small_model(pbmc_small, max_epochs=4, seed=0,
                        validation_holdout="molecules").train()
    val, split = model.validation_indices, model.validation_split
    assert len(val) and np.array_equal(split.cells, val)
    assert np.array_equal(model.train_indices, np.arange(pbmc_small.n_obs))
    assert set(seen) == set(range(pbmc_small.n_obs))  # every cell trained
    counts, _ = model._model_counts(pbmc_small)
    whole = counts.rows_csr(val)
    assert (split.kept + split.held != whole).nnz == 0
    assert split.held.sum() > 0
    for i, cell in enumerate(val):  # never a held-out molecule
        np.testing.assert_array_equal(seen[int(cell)].numpy(), split.kept[i].toarray()[0])
    other = int(np.setdiff1d(np.arange(pbmc_small.n_obs), val)[0])
    np.testing.assert_array_equal(seen[other].numpy(), counts.rows(np.array([other]))[0])


def test_validation_and_the_borrowing_score_the_held_out_molecules(pbmc_small):
    model = small_model(pbmc_small, max_epochs=6, seed=0, likelihood="zinb",
                        validation_holdout="molecules").train()
    split = model.validation_split
    kept = torch.cat([x for x, _, _ in model.validation_batches()])
    np.testing.assert_array_equal(kept.numpy(), split.kept.toarray())
    restored = HeldoutMolecules(model.validation_batches(), 0.1, seed=0, fixed=split).nll(
        model.network)
    # the weights kept are the best epoch's, as scored on the fixed split
    assert restored["validation_heldout_nll"] == pytest.approx(
        model.history["validation_heldout_nll"].min(), rel=1e-5)
    # the borrowing's plain posterior is scored on the same molecules, not on new splits
    plain = [v for k, v in model.pooling.scores.items() if k.endswith(",w=0.0")]
    assert plain == [pytest.approx(restored["validation_heldout_nll_posterior"], rel=1e-5)]


def test_the_choice_is_checked(pbmc_small):
    with pytest.raises(ValueError, match="validation_holdout"):
        zipo.ZiPo(pbmc_small, validation_holdout="genes")
