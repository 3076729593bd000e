"""Fine-tuning: a model trained on one half of PBMC 4k (A), saved, loaded with the other half
(B) and trained further — ``ZiPo.load(path, adata=B).train()``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import zipo
from zipo.data.loader import split_cells
from zipo.train.schedule import kept_row

from conftest import validation_scores

OPTIONS = dict(encoder_dims=[256, 64], batch_size=128, seed=0, verbose=False)
EPOCHS_A, EPOCHS_B = 6, 4


@pytest.fixture(scope="module")
def halves(pbmc4k_demo_data):
    adata = pbmc4k_demo_data()
    totals = np.asarray(adata.X.sum(axis=0)).ravel()
    adata = adata[:, np.sort(np.argsort(-totals, kind="stable")[:400])].copy()
    order = np.random.default_rng(0).permutation(adata.n_obs)
    half = adata.n_obs // 2
    a = adata[np.sort(order[:half])].copy()
    b = adata[np.sort(order[half:])].copy()
    return a, b


@pytest.fixture(scope="module")
def saved_a(halves, tmp_path_factory):
    a, _ = halves
    model = zipo.ZiPo(a, max_epochs=EPOCHS_A, **OPTIONS).train()
    path = tmp_path_factory.mktemp("finetune") / "model_a"
    model.save(path)
    return model, path


@pytest.fixture(scope="module")
def finetuned(halves, saved_a):
    _, b = halves
    model_a, path = saved_a
    loaded = zipo.ZiPo.load(path, adata=b)
    before = {k: v.clone() for k, v in loaded.network.state_dict().items()}
    nll_loaded = loaded.evaluate(b)["nll"]
    loaded.train(max_epochs=EPOCHS_B)
    return loaded, before, nll_loaded


def _val_cells(model, adata):
    """The validation cells of ``adata`` that ``model.train()`` holds out (seeded split)."""
    rng = np.random.default_rng(model.config.train.seed)
    _, val = split_cells(adata.n_obs, model.config.train.validation_fraction, rng)
    return val


def test_load_with_data_starts_from_the_saved_weights(halves, saved_a, finetuned):
    _, b = halves
    model_a, path = saved_a
    _, before, nll_loaded = finetuned
    for key, value in model_a.network.state_dict().items():
        assert torch.equal(before[key], value.cpu()), key
    # NLL on B before fine-tuning: the loaded model's, the in-memory model's, and the loaded
    # model's without data agree.
    assert nll_loaded == pytest.approx(model_a.evaluate(b)["nll"], rel=1e-6)
    assert nll_loaded == pytest.approx(zipo.ZiPo.load(path).evaluate(b)["nll"], rel=1e-6)
    # ... and are those of a trained model, far below an untrained network's.
    fresh = zipo.ZiPo(b, max_epochs=1, **OPTIONS).train()
    assert nll_loaded < fresh.evaluate(b)["nll"] - 0.05


def test_finetuning_continues_the_history(saved_a, finetuned):
    model_a, _ = saved_a
    model, _, _ = finetuned
    h = model.history
    assert len(h) == EPOCHS_A + EPOCHS_B
    assert h["epoch"].tolist() == list(range(1, EPOCHS_A + EPOCHS_B + 1))
    # The first rows are A's, unchanged by the load and the new training.
    np.testing.assert_allclose(h["validation_nll"][:EPOCHS_A], model_a.history["validation_nll"])
    # The first fine-tuning epoch starts where A left off, not from scratch.
    assert h["train_nll"][EPOCHS_A] < model_a.history["train_nll"].iloc[0]


def test_finetuning_improves_validation_nll_on_b(halves, saved_a, finetuned):
    _, b = halves
    _, path = saved_a
    model, _, _ = finetuned
    val = _val_cells(model, b)
    np.testing.assert_array_equal(val, model.validation_indices)
    before = validation_scores(model, zipo.ZiPo.load(path).network)[1]
    after = validation_scores(model)[1]
    assert after < before - 0.005, (before, after)
    # the weights kept are those of the fine-tuning epoch best on the watched score
    rows = model.history.iloc[-EPOCHS_B:]
    assert rows["validation_nll"].iloc[kept_row(rows)] == pytest.approx(after, rel=1e-5)


def test_finetuned_model_saves_and_loads_again(halves, finetuned, tmp_path):
    _, b = halves
    model, _, _ = finetuned
    model.save(tmp_path / "model_ab")
    again = zipo.ZiPo.load(tmp_path / "model_ab")
    assert len(again.history) == EPOCHS_A + EPOCHS_B
    x = model.denoise(b, copy=True)
    y = again.denoise(b, copy=True)
    np.testing.assert_array_equal(x.layers["zipo_denoised"], y.layers["zipo_denoised"])
    np.testing.assert_array_equal(x.obsm["X_zipo"], y.obsm["X_zipo"])


def test_genes_in_another_order_are_mapped(halves, saved_a):
    _, b = halves
    model_a, path = saved_a
    perm = np.random.default_rng(3).permutation(b.n_vars)
    shuffled = b[:, perm].copy()
    loaded = zipo.ZiPo.load(path, adata=shuffled)
    assert loaded.adata is shuffled  # the user's object, not a reordered view of it
    assert loaded.evaluate()["nll"] == pytest.approx(model_a.evaluate(b)["nll"], rel=1e-6)
    loaded.train(max_epochs=1)
    assert len(loaded.history) == EPOCHS_A + 1
    # Training reads the genes in the model's order: the same steps as on b in model order.
    same = zipo.ZiPo.load(path, adata=b).train(max_epochs=1)
    for key, value in same.network.state_dict().items():
        torch.testing.assert_close(loaded.network.state_dict()[key], value, rtol=1e-5, atol=1e-6)
    assert loaded.baseline_nll() == pytest.approx(same.baseline_nll(), rel=1e-6)
    # Denoising the shuffled AnnData returns columns in its own order.
    out = loaded.denoise(shuffled, copy=True).layers["zipo_denoised"]
    ref = loaded.denoise(b, copy=True).layers["zipo_denoised"]
    # (to float32 rounding: a reduction may round its last bit differently on a copy)
    np.testing.assert_allclose(out, ref[:, perm], rtol=1e-6, atol=0)
    # ... also without an argument: the results land in the user's AnnData.
    assert loaded.denoise() is None
    np.testing.assert_array_equal(shuffled.layers["zipo_denoised"], out)
    assert "X_zipo" in shuffled.obsm and "zipo_library_size" in shuffled.obs


def test_missing_or_extra_genes_are_refused(halves, saved_a):
    _, b = halves
    _, path = saved_a
    with pytest.raises(ValueError, match=r"3 genes of the model are missing \("):
        zipo.ZiPo.load(path, adata=b[:, 3:].copy())
    extra = b.copy()
    extra.var_names = [*extra.var_names[:-1], "NOT_A_GENE"]
    with pytest.raises(ValueError, match="1 genes of the model are missing.*1 genes are not in "
                                         "the model \\(NOT_A_GENE"):
        zipo.ZiPo.load(path, adata=extra)


def test_attach_a_loaded_model(halves, saved_a):
    a, b = halves
    model_a, path = saved_a
    loaded = zipo.ZiPo.load(path)
    assert loaded.adata is None
    with pytest.raises(ValueError, match="loaded without data; pass adata"):
        loaded.train(max_epochs=1)
    assert loaded.attach(b) is loaded
    assert loaded.adata.n_obs == b.n_obs
    loaded.train(max_epochs=1)
    assert len(loaded.history) == EPOCHS_A + 1
    # Attaching refuses mismatched genes and leaves the attached data in place.
    with pytest.raises(ValueError, match="genes of the model are missing"):
        loaded.attach(a[:, 1:].copy())
    assert loaded.adata.n_obs == b.n_obs


def test_model_saved_for_a_gpu_keeps_training_where_it_was_loaded(halves, saved_a, tmp_path):
    """A model saved with ``train.device = "cuda"`` (trained on a GPU machine) and loaded with
    ``device="cpu"`` trains on the CPU: ``load``'s device is where the model runs."""
    import json
    import shutil

    _, b = halves
    _, path = saved_a
    gpu_path = tmp_path / "saved_on_gpu"
    shutil.copytree(path, gpu_path)
    meta = json.loads((gpu_path / "zipo.json").read_text())
    meta["config"]["train"]["device"] = "cuda"
    (gpu_path / "zipo.json").write_text(json.dumps(meta))

    loaded = zipo.ZiPo.load(gpu_path, adata=b, device="cpu")
    assert loaded.config.train.device == "cpu"
    loaded.train(max_epochs=1)  # without CUDA, training on "cuda" would raise
    assert {p.device.type for p in loaded.network.parameters()} == {"cpu"}
    assert len(loaded.history) == EPOCHS_A + 1
