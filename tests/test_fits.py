"""A model of several fits (``train.n_fits``): ``denoise`` averages the fits' outputs, the
latents are the first fit's, and save/load, fine-tuning and pruning carry every fit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import zipo

from conftest import small_model


@pytest.fixture(scope="module")
def three_fits(_pbmc_small):
    return small_model(_pbmc_small.copy(), n_fits=3, seed=5, max_epochs=3).train()


def _denoised(model, adata, **kw):
    return model.denoise(adata, copy=True, **kw)


def test_small_data_trains_four_fits_by_default(pbmc_small):
    model = small_model(pbmc_small, max_epochs=1, n_fits=0).train()
    assert len(model.further_fits) == 3  # 80 cells: under AUTO_FITS_BELOW_CELLS
    assert [f.config.train.seed for f in model.further_fits] == [1, 2, 3]
    assert "fits=4" in repr(model)
    one = small_model(pbmc_small.copy(), max_epochs=1, n_fits=1).train()
    assert one.further_fits == [] and "fits=" not in repr(one)


def test_larger_data_trains_one_fit_by_default(pbmc4k_demo_data):
    adata = pbmc4k_demo_data()[:600, :100].copy()
    model = small_model(adata, max_epochs=1, n_fits=0).train()
    assert model.further_fits == []


@pytest.mark.parametrize("expectation", ["posterior", "rate", "lognorm"])
def test_denoise_averages_the_fits_and_keeps_the_first_fits_latents(three_fits, pbmc_small,
                                                                    expectation):
    out = _denoised(three_fits, pbmc_small, expectation=expectation, zero_inflation=True)
    fits = [three_fits, *three_fits.further_fits]
    each = []
    for fit in fits:
        # a fit alone: its own network, pooling and posterior
        single = object.__new__(type(three_fits))
        single.__dict__.update(fit.__dict__, further_fits=[])
        each.append(_denoised(single, pbmc_small, expectation=expectation, zero_inflation=True))
    mean = np.mean([e.layers["zipo_denoised"] for e in each], axis=0)
    np.testing.assert_allclose(out.layers["zipo_denoised"], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.layers["zipo_zero_prob"],
                               np.mean([e.layers["zipo_zero_prob"] for e in each], axis=0),
                               rtol=1e-5, atol=1e-7)
    # the fits differ (else the average tests nothing), the latents are the first fit's
    assert not np.allclose(each[0].layers["zipo_denoised"], each[1].layers["zipo_denoised"])
    np.testing.assert_array_equal(out.obsm["X_zipo"], each[0].obsm["X_zipo"])
    np.testing.assert_array_equal(out.obsm["X_zipo"], three_fits.get_latent(pbmc_small))


def test_the_first_fit_is_the_model_of_one_fit(three_fits, pbmc_small):
    one = small_model(pbmc_small.copy(), n_fits=1, seed=5, max_epochs=3).train()
    np.testing.assert_array_equal(one.get_latent(), three_fits.get_latent(pbmc_small))
    timings = ["seconds", "data_wait_seconds"]
    assert one.history.drop(columns=timings).equals(three_fits.history.drop(columns=timings))


def test_streamed_output_is_the_average_too(three_fits, pbmc_small, tmp_path):
    in_memory = _denoised(three_fits, pbmc_small).layers["zipo_denoised"]
    streamed = three_fits.denoise(pbmc_small, out=tmp_path / "d.h5ad")
    np.testing.assert_allclose(np.asarray(streamed.X[:]), in_memory, rtol=1e-6)
    streamed.file.close()


def test_save_and_load_carry_every_fit(three_fits, pbmc_small, tmp_path):
    three_fits.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "zipo.json").read_text())
    assert meta["format_version"] == 2 and meta["fits"] == 3
    loaded = zipo.ZiPo.load(tmp_path / "m")
    assert len(loaded.further_fits) == 2
    assert [f.pooling for f in loaded.further_fits] == [f.pooling for f in three_fits.further_fits]
    np.testing.assert_array_equal(_denoised(loaded, pbmc_small).layers["zipo_denoised"],
                                  _denoised(three_fits, pbmc_small).layers["zipo_denoised"])
    # a model of one fit keeps format version 1, which older zipo versions read
    small_model(pbmc_small.copy(), n_fits=1, max_epochs=1).train().save(tmp_path / "one")
    assert json.loads((tmp_path / "one" / "zipo.json").read_text())["format_version"] == 1


def test_a_model_missing_a_fit_is_refused(three_fits, tmp_path):
    import shutil

    three_fits.save(tmp_path / "m")
    shutil.rmtree(tmp_path / "m" / "fits" / "3")
    with pytest.raises(ValueError, match="has 3 fits but lacks fits/3"):
        zipo.ZiPo.load(tmp_path / "m")


def test_fine_tuning_goes_on_with_every_fit(pbmc_small):
    model = small_model(pbmc_small, n_fits=2, max_epochs=2).train()
    model.train(max_epochs=2)
    assert len(model.further_fits) == 1
    assert len(model.history) == len(model.further_fits[0].history) == 4


def test_add_fits_trains_what_n_fits_would_have(pbmc_small):
    one = small_model(pbmc_small.copy(), n_fits=1, seed=2).train()
    assert one.add_fits(1) is one and one.further_fits == []
    one.add_fits(3)
    three = small_model(pbmc_small.copy(), n_fits=3, seed=2).train()
    assert one.config.train.n_fits == 3 and len(one.further_fits) == 2
    np.testing.assert_array_equal(_denoised(one, pbmc_small).layers["zipo_denoised"],
                                  _denoised(three, pbmc_small).layers["zipo_denoised"])
    one.add_fits(0)  # 80 cells: four
    assert len(one.further_fits) == 3


def test_pruning_prunes_every_fit(pbmc_small):
    model = small_model(pbmc_small, n_fits=2, max_epochs=2).train()
    model.prune(0.5)
    for fit in (model, *model.further_fits):
        assert fit.pruning["delta"] == 0.5
        assert (fit.network.first_layer.weight == 0).any()


def test_a_killed_run_of_several_fits_resumes_to_the_same_model(pbmc_small, tmp_path,
                                                               monkeypatch):
    from zipo.train.checkpoint import CHECKPOINT_FILE
    from zipo.train.trainer import Trainer

    opts = dict(n_fits=3, max_epochs=6, checkpoint_every=1, early_stopping_patience=1000,
                seed=3)
    straight = small_model(pbmc_small.copy(), **opts).train()
    run, trainers = Trainer.run, []

    def dies_in_the_second_fit(self, save, every, callback=None):
        trainers.append(self)
        if len(trainers) == 2:
            def callback(trainer):  # noqa: F811 - the second fit's run ends after 3 rounds
                if len(trainer.history) == 3:
                    raise KeyboardInterrupt
        return run(self, save, every, callback)

    monkeypatch.setattr(Trainer, "run", dies_in_the_second_fit)
    with pytest.raises(KeyboardInterrupt):
        small_model(pbmc_small.copy(), **opts).train(checkpoint_dir=tmp_path)
    monkeypatch.setattr(Trainer, "run", run)
    assert (tmp_path / CHECKPOINT_FILE).is_file() and (tmp_path / "fit-2" / CHECKPOINT_FILE).is_file()
    assert not (tmp_path / "fit-3").exists()
    rounds_at_start = []

    def counted(self, save, every, callback=None):
        rounds_at_start.append(len(self.history))
        return run(self, save, every, callback)

    monkeypatch.setattr(Trainer, "run", counted)
    resumed = small_model(pbmc_small.copy(), **opts).train(checkpoint_dir=tmp_path, resume=True)
    # each fit goes on from its own checkpoint: the first had finished, the second had run 3
    # rounds, the third had not started
    assert rounds_at_start == [6, 3, 0]
    assert len(resumed.further_fits) == 2
    for a, b in zip((resumed, *resumed.further_fits), (straight, *straight.further_fits)):
        for key, value in a.network.state_dict().items():
            assert torch.equal(value, b.network.state_dict()[key]), key
    np.testing.assert_array_equal(_denoised(resumed, pbmc_small).layers["zipo_denoised"],
                                  _denoised(straight, pbmc_small).layers["zipo_denoised"])


def test_n_fits_must_not_be_negative(pbmc_small):
    with pytest.raises(ValueError, match="n_fits must be >= 0"):
        small_model(pbmc_small, n_fits=-1)
