"""End-to-end tests of the `zipo` command on a tiny file cut from the embedded demo data."""

from __future__ import annotations

import shutil
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest

import zipo
from zipo.cli import main
from zipo.config import load_config
from zipo.datasets import pbmc4k_demo

TINY = ["--encoder-dims", "32", "8", "--batch-size", "32", "--quiet"]


@pytest.fixture(scope="module")
def tiny_h5ad(tmp_path_factory):
    adata = pbmc4k_demo()[:120, :60].copy()
    adata = adata[:, np.asarray(adata.X.sum(axis=0)).ravel() > 0].copy()
    path = tmp_path_factory.mktemp("cli") / "tiny.h5ad"
    adata.write_h5ad(path)
    return path


def _assert_same_outputs(got, want, key, zero_inflation):
    """Everything denoise writes, equal in ``got`` (read back from the command's file) and
    ``want`` (the API's AnnData)."""
    assert list(got.obs_names) == list(want.obs_names)
    assert list(got.var_names) == list(want.var_names)
    np.testing.assert_array_equal(got.layers[f"{key}_denoised"], want.layers[f"{key}_denoised"])
    assert (f"{key}_zero_prob" in got.layers) == zero_inflation
    if zero_inflation:
        np.testing.assert_array_equal(got.layers[f"{key}_zero_prob"],
                                      want.layers[f"{key}_zero_prob"])
    np.testing.assert_array_equal(got.obsm[f"X_{key}"], want.obsm[f"X_{key}"])
    np.testing.assert_array_equal(got.obs[f"{key}_library_size"], want.obs[f"{key}_library_size"])


def test_config_then_train_then_denoise(tiny_h5ad, tmp_path, capsys):
    assert main(["config"]) == 0
    cfg_file = tmp_path / "cfg.toml"
    text = capsys.readouterr().out
    # The config file sets 3 epochs and alpha_z; the flag overrides the epochs.
    cfg_file.write_text(text.replace("max_epochs = 300", "max_epochs = 3")
                        .replace("alpha_z = 0.1", "alpha_z = 0.5"))
    out = tmp_path / "model"
    rc = main(["train", str(tiny_h5ad), "--config", str(cfg_file), "--out", str(out),
               "--max-epochs", "2", "--set", "model.alpha_w=0.2", "--set", "seed=3", *TINY])
    assert rc == 0
    for name in ("weights.pt", "zipo.json", "config.toml", "history.csv", "history.png"):
        assert (out / name).is_file(), name
    saved = load_config(out / "config.toml")
    assert saved.train.max_epochs == 2  # flag beat the file
    assert saved.model.alpha_z == 0.5  # file beat the default
    assert saved.model.alpha_w == 0.2 and saved.train.seed == 3  # --set reached both sections
    assert saved.model.encoder_dims == [32, 8]
    assert "Trained 2 epochs" in capsys.readouterr().out

    result = tmp_path / "denoised.h5ad"
    assert main(["denoise", str(out), str(tiny_h5ad), "--out", str(result), "--zero-inflation"]) == 0
    den = ad.read_h5ad(result)
    assert den.layers["zipo_denoised"].shape == den.shape
    assert ((den.layers["zipo_zero_prob"] >= 0) & (den.layers["zipo_zero_prob"] <= 1)).all()
    assert den.obsm["X_zipo"].shape == (den.n_obs, 8)
    # The command's output is the API's: the saved model's denoise on the same file, exactly.
    model = zipo.ZiPo.load(out)
    api = model.denoise(ad.read_h5ad(tiny_h5ad), zero_inflation=True, copy=True)
    _assert_same_outputs(den, api, "zipo", zero_inflation=True)
    np.testing.assert_array_equal(den.X.toarray(), ad.read_h5ad(tiny_h5ad).X.toarray())

    # An existing output is refused unless --overwrite, and left untouched.
    before = result.stat().st_mtime_ns
    assert main(["denoise", str(out), str(tiny_h5ad), "--out", str(result)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert result.stat().st_mtime_ns == before
    # ... and the options reach the API: the mixture expectation under another key.
    assert main(["denoise", str(out), str(tiny_h5ad), "--out", str(result), "--overwrite",
                 "--expectation", "mixture", "--key-added", "zp"]) == 0
    den = ad.read_h5ad(result)
    api = model.denoise(ad.read_h5ad(tiny_h5ad), expectation="mixture", key_added="zp", copy=True)
    _assert_same_outputs(den, api, "zp", zero_inflation=False)
    rate = model.denoise(ad.read_h5ad(tiny_h5ad), copy=True).layers["zipo_denoised"]
    assert not np.array_equal(den.layers["zp_denoised"], rate)  # mixture < rate: not ignored
    # lognorm with its normalisation target and a depth
    assert main(["denoise", str(out), str(tiny_h5ad), "--out", str(result), "--overwrite",
                 "--expectation", "lognorm", "--target-sum", "1000", "--depth", "2"]) == 0
    api = model.denoise(ad.read_h5ad(tiny_h5ad), expectation="lognorm", target_sum=1000,
                        depth=2, copy=True)
    _assert_same_outputs(ad.read_h5ad(result), api, "zipo", zero_inflation=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.toml", "denoised.h5ad", "model"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "model.alpha_q=1"], "unknown option 'model.alpha_q' (did you mean 'model.alpha_z' or"),
        (["--set", "train.max_epochs=abc"], "max_epochs must be an integer"),
        (["--likelihood", "zip", "--set", "nonsense"], "--set expects section.key=value"),
        (["--layer", "counts"], "layer 'counts' is not in adata.layers"),
        (["--covariates", "no_such_column"], "covariate 'no_such_column' is not a column"),
    ],
)
def test_train_errors_are_clear_and_write_nothing(tiny_h5ad, tmp_path, capsys, args, message):
    out = tmp_path / "model"
    assert main(["train", str(tiny_h5ad), "--out", str(out), *TINY, *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_bad_config_file_and_missing_input(tiny_h5ad, tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nalpha_z = 'high'\n")
    assert main(["train", str(tiny_h5ad), "--config", str(bad), "--out", str(tmp_path / "m")]) == 2
    assert "alpha_z must be a number" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.h5ad"), "--out", str(tmp_path / "m")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["denoise", str(tmp_path), str(tiny_h5ad), "--out", str(tmp_path / "o.h5ad")]) == 2
    assert "not a ZiPo model directory" in capsys.readouterr().err


def test_demo_runs_and_saves(tmp_path, capsys):
    assert main(["demo", "--epochs", "3", "--quiet", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2170 PBMCs x 1009 genes" in out and "baseline" in out
    assert (tmp_path / "model" / "weights.pt").is_file() and (tmp_path / "history.png").is_file()


def test_console_script_is_installed():
    exe = shutil.which("zipo") or shutil.which("zipo", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe, "the zipo console script is not on PATH"
    done = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    assert done.stdout.startswith("zipo ")


@pytest.mark.parametrize("preset", ["zipo", "dca", "zipdca", "tuneddca"])
def test_presets_train_and_config_overrides_them(tiny_h5ad, tmp_path, preset):
    import zipo
    from zipo.presets import PRESETS

    adata = ad.read_h5ad(tiny_h5ad)
    cfg = tmp_path / "cfg.toml"
    cfg.write_text("[model]\nresiduals = true\n")  # equal to the default, but set on purpose
    model = zipo.ZiPo(adata, preset=preset, config=cfg, max_epochs=1, batch_size=32,
                      verbose=False)
    for key, value in PRESETS[preset].get("model", {}).items():
        if key != "residuals":
            assert getattr(model.config.model, key) == value
    assert model.config.model.residuals is True
    model.train()
    model.denoise(adata)
    assert np.isfinite(adata.layers["zipo_denoised"]).all()


def test_cli_preset_flag(tiny_h5ad, tmp_path):
    out = tmp_path / "m"
    assert main(["train", str(tiny_h5ad), "--preset", "dca", "--out", str(out), "--max-epochs", "1",
                 "--batch-size", "32", "--quiet"]) == 0
    saved = load_config(out / "config.toml")
    assert saved.model.likelihood == "nb" and saved.model.encoder_dims == [128, 64]
    assert saved.model.decoder_dims == [128]
