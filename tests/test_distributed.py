"""Data-parallel training: 2 CPU processes (gloo) take the same steps as 1 process with the same
global batch, because each process reads its own share of every batch, DDP averages the
gradients and batch-norm statistics are pooled (SyncBatchNorm1d)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import zipo
from zipo import cli
from zipo.distributed import SyncBatchNorm1d

# 72 training cells in batches of 24: every step splits 12 + 12 over the two processes.
OPTIONS = {"train.max_epochs": 3, "train.batch_size": 24, "train.seed": 5,
           "model.encoder_dims": [32, 8], "train.first_layer": "dense", "train.verbose": False}


def _set_flags(options):
    flags = []
    for key, value in options.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        flags += ["--set", f"{key}={text}"]
    return flags


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(pbmc_small, tmp_path):
    data = tmp_path / "pbmc_small.h5ad"
    pbmc_small.write_h5ad(data)
    single = zipo.ZiPo(pbmc_small)
    for key, value in OPTIONS.items():
        single.config.set_option(key, value)
    single.train()

    out = tmp_path / "ddp_model"
    # From the shell, as a user runs it. Without LD_LIBRARY_PATH: rpy2 (loaded by the R bridge
    # tests in the same session) sets it to R's, which makes child Pythons load the system's
    # libpython instead of their own.
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    done = subprocess.run(
        [sys.executable, "-m", "zipo", "train", str(data), "--out", str(out), "--nproc", "2",
         "--quiet", *_set_flags(OPTIONS)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "with 2 processes" in done.stdout
    ddp = zipo.ZiPo.load(out)

    h1, h2 = single.history, ddp.history
    assert len(h1) == len(h2) == 3
    for col in ("train_loss", "validation_loss", "validation_nll"):
        np.testing.assert_allclose(h2[col], h1[col], rtol=1e-4, err_msg=col)
    s1, s2 = single.network.state_dict(), ddp.network.state_dict()
    assert s1.keys() == s2.keys()
    for name in s1:
        if name.endswith("num_batches_tracked"):
            assert int(s1[name]) == int(s2[name]), name
            continue
        torch.testing.assert_close(s2[name], s1[name], rtol=1e-3, atol=1e-4, msg=name)
    # and a different global batch would give visibly different weights
    other = zipo.ZiPo(pbmc_small)
    for key, value in {**OPTIONS, "train.batch_size": 12}.items():
        other.config.set_option(key, value)
    other.train()
    assert not torch.allclose(other.network.first_layer.weight, s1["encoder.0.0.weight"], atol=1e-4)


def test_sync_batchnorm_is_batchnorm_outside_distributed_training():
    torch.manual_seed(0)
    x = torch.randn(10, 4)
    plain, sync = torch.nn.BatchNorm1d(4), SyncBatchNorm1d(4)
    torch.testing.assert_close(sync(x), plain(x))
    torch.testing.assert_close(sync.running_var, plain.running_var)
    assert set(sync.state_dict()) == set(plain.state_dict())


def test_nproc_must_be_positive(pbmc_small, tmp_path, capsys):
    data = tmp_path / "d.h5ad"
    pbmc_small.write_h5ad(data)
    assert cli.main(["train", str(data), "--out", str(tmp_path / "m"), "--nproc", "0"]) == 2
    assert "--nproc must be at least 1" in capsys.readouterr().err
