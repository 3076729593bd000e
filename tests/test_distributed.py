"""Data-parallel training: 2 CPU processes (gloo) take the same steps as 1 process with the same
global batch, because each process reads its own share of every batch, DDP averages the
gradients and batch-norm statistics are pooled (SyncBatchNorm1d, also checked on its own: two
processes with a share of the batch each against one process with all of it). Started by
``zipo train --nproc 2`` on one machine, and as two torchrun "nodes" meeting by c10d rendezvous
on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

import zipo
from zipo import cli
from zipo.nn.batchnorm import SyncBatchNorm1d
from zipo.train.distributed import _free_port

# 72 training cells in batches of 24: every step splits 12 + 12 over the two processes. The
# paper's objective: with train.objective_heldout each process draws the molecule splits of its
# own cells, so 2 processes match 1 statistically but not step for step. One fit: the reads
# and histories compared are one network's training (each further fit trains the same way).
OPTIONS = {"train.max_epochs": 3, "train.batch_size": 24, "train.seed": 5, "train.n_fits": 1,
           "model.encoder_dims": [32, 8], "train.first_layer": "dense", "train.verbose": False,
           "train.objective_heldout": 0.0, "train.heldout_molecules": 0.0,
           "train.device": "cpu"}  # gloo on the CPU also where CUDA is present


def _set_flags(options):
    flags = []
    for key, value in options.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        flags += ["--set", f"{key}={text}"]
    return flags


def _one_process(adata, **changes):
    """The reference: one process training with OPTIONS (and ``changes``)."""
    # small_data off: set after construction, the options below would meet the narrower
    # decoder that a model of the defaults gets under 500 cells; the CLI's --set, which
    # gives the shape before, keeps the default decoder
    model = zipo.ZiPo(adata, small_data=False)
    for key, value in {**OPTIONS, **changes}.items():
        model.config.set_option(key, value)
    return model.train()


def _assert_same_training(ddp, single):
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


def _child_env(**extra):
    # Without LD_LIBRARY_PATH: rpy2 (loaded by the R bridge tests in the same session) sets it
    # to R's, which makes child Pythons load the system's libpython instead of their own.
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    return {**env, **extra}


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(pbmc_small, tmp_path):
    data = tmp_path / "pbmc_small.h5ad"
    pbmc_small.write_h5ad(data)
    single = _one_process(pbmc_small)

    out = tmp_path / "ddp_model"
    # From the shell, as a user runs it.
    done = subprocess.run(
        [sys.executable, "-m", "zipo", "train", str(data), "--out", str(out), "--nproc", "2",
         "--quiet", *_set_flags(OPTIONS)], env=_child_env(), capture_output=True, text=True,
        timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "with 2 processes" in done.stdout
    ddp = zipo.ZiPo.load(out)
    _assert_same_training(ddp, single)
    # and a different global batch would give visibly different weights
    other = _one_process(pbmc_small, **{"train.batch_size": 12})
    assert not torch.allclose(other.network.first_layer.weight,
                              single.network.state_dict()["encoder.0.0.weight"], atol=1e-4)


# `zipo train` as torchrun starts it on each node, with every count matrix read of the training
# logged (those made once the process group exists: the batches, not the setup's passes).
_LOGGED_TRAIN = """
import json, sys
import numpy as np
import torch.distributed as dist
from zipo import cli
from zipo.data.counts import CountMatrix

log, reads, rank = sys.argv[1], [], []

def logged(read):
    def wrapper(self, idx):
        if dist.is_initialized():
            reads.append(np.asarray(idx).tolist())
            rank[:] = [dist.get_rank()]
        return read(self, idx)
    return wrapper

CountMatrix.rows, CountMatrix.rows_csr = logged(CountMatrix.rows), logged(CountMatrix.rows_csr)
code = cli.main(sys.argv[2:])
with open(f"{log}/reads-rank{rank[0]}.json", "w") as fh:
    json.dump({"reads": reads, "group_open_after": dist.is_initialized()}, fh)
sys.exit(code)
"""


def _loopback_interface() -> str | None:
    return next((name for _, name in socket.if_nameindex() if name.startswith("lo")), None)


@pytest.mark.slow
def test_two_torchrun_nodes_with_c10d_rendezvous_match_one_process(pbmc_small, tmp_path):
    """Two "nodes" on this machine, each one torchrun with one CPU process, meet by c10d
    rendezvous on 127.0.0.1 and train as one process does; each reads only its share of
    every batch."""
    data = tmp_path / "pbmc_small.h5ad"
    pbmc_small.write_h5ad(data)
    script = tmp_path / "logged_train.py"
    script.write_text(_LOGGED_TRAIN)
    out = tmp_path / "two_nodes"
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
              "--nproc-per-node", "1", "--rdzv-backend", "c10d",
              "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "--rdzv-id", "zipo-two-nodes",
              "--local-addr", "127.0.0.1", "--max-restarts", "0"]
    train = [str(script), str(tmp_path), "train", str(data), "--out", str(out), "--quiet",
             *_set_flags(OPTIONS)]
    # Each node's process on the CPU, its gloo connections on the loopback interface only.
    env = _child_env(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1",
                     **({"GLOO_SOCKET_IFNAME": lo} if (lo := _loopback_interface()) else {}))
    nodes = [subprocess.Popen(launch + train, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
             for _ in range(2)]
    outputs, stalled = [], []
    try:
        for node in nodes:
            try:
                outputs.append(node.communicate(timeout=150))
            except subprocess.TimeoutExpired:  # left waiting for its peer: what each printed
                os.killpg(node.pid, signal.SIGKILL)
                outputs.append(node.communicate())
                stalled.append(len(outputs) - 1)
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
    printed = "\n".join(f"node {i} stdout:\n{out[-2000:]}\nnode {i} stderr:\n{err[-3000:]}"
                         for i, (out, err) in enumerate(outputs))
    assert not stalled, f"nodes {stalled} did not finish in 150 s\n{printed}"
    for node in nodes:
        assert node.returncode == 0, printed
    # rank 0 (on whichever node the rendezvous made it) wrote the model, and only it
    assert sum("with 2 processes" in stdout for stdout, _ in outputs) == 1
    _assert_same_training(zipo.ZiPo.load(out), _one_process(pbmc_small))

    logs = [json.loads((tmp_path / f"reads-rank{r}.json").read_text()) for r in (0, 1)]
    # `zipo train` closed the process group before returning, in every process
    assert not any(log["group_open_after"] for log in logs)
    reads = [log["reads"] for log in logs]
    assert len(reads[0]) == len(reads[1]) > 0  # the same steps
    for mine, theirs in zip(*reads):  # each step's batch split in two shares
        assert not set(mine) & set(theirs) and abs(len(mine) - len(theirs)) <= 1
    read_by = [{cell for step in r for cell in step} for r in reads]
    assert read_by[0] | read_by[1] == set(range(pbmc_small.n_obs))


# Two gloo processes, each normalising its share of every batch with SyncBatchNorm1d. Step 1
# splits 12 rows 6 + 6, step 2 splits them 7 + 5 (statistics must be weighted by the counts); the
# shares come from different distributions, so per-process statistics would differ visibly.
# Each process writes its outputs, input gradients, parameter gradients and running statistics.
_SYNC_BN_SCRIPT = """
import importlib, sys
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

MODULE, OUT = sys.argv[1], sys.argv[2]


def run(rank, x, w, splits):
    dist.init_process_group("gloo", init_method="file://" + OUT + "/rendezvous", rank=rank,
                            world_size=2)
    bn = importlib.import_module(MODULE).SyncBatchNorm1d(x.shape[2]).double()
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 2.0, x.shape[2]))
        bn.bias.copy_(torch.linspace(-1.0, 1.0, x.shape[2]))
    result = {}
    for step, k in enumerate(splits):
        rows = slice(0, k) if rank == 0 else slice(k, x.shape[1])
        xs = x[step, rows].clone().requires_grad_(True)
        bn.zero_grad()
        out = bn(xs)
        (out * w[step, rows]).sum().backward()  # this process's part of the global loss
        result[step] = {"out": out.detach(), "x_grad": xs.grad,
                        "weight_grad": bn.weight.grad.clone(), "bias_grad": bn.bias.grad.clone(),
                        "running_mean": bn.running_mean.clone(),
                        "running_var": bn.running_var.clone(),
                        "num_batches_tracked": int(bn.num_batches_tracked)}
    torch.save(result, OUT + "/rank" + str(rank) + ".pt")
    dist.barrier()  # both done before either closes its connections (as zipo's spawn does)
    dist.destroy_process_group()


if __name__ == "__main__":
    x, w, splits = torch.load(OUT + "/inputs.pt")
    mp.spawn(run, args=(x, w, splits), nprocs=2, join=True)
"""


def _batchnorm_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 12, 5, generator=g, dtype=torch.float64)
    x[:, 6:] = 3.0 * x[:, 6:] + 2.0  # the second share: other mean and spread
    w = torch.randn(2, 12, 5, generator=g, dtype=torch.float64)  # weights of the loss
    return x, w, [6, 7]


def test_sync_batchnorm_over_two_processes_equals_one_process_with_the_whole_batch(tmp_path):
    x, w, splits = _batchnorm_inputs()
    torch.save((x, w, splits), tmp_path / "inputs.pt")
    script = tmp_path / "sync_bn.py"
    script.write_text(_SYNC_BN_SCRIPT)
    done = subprocess.run([sys.executable, str(script), SyncBatchNorm1d.__module__, str(tmp_path)],
                          env=_child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]

    # The reference: torch's BatchNorm1d on the whole batch in one process.
    ref = torch.nn.BatchNorm1d(5).double()
    with torch.no_grad():
        ref.weight.copy_(torch.linspace(0.5, 2.0, 5))
        ref.bias.copy_(torch.linspace(-1.0, 1.0, 5))
    for step, k in enumerate(splits):
        xs = x[step].clone().requires_grad_(True)
        ref.zero_grad()
        out = ref(xs)
        (out * w[step]).sum().backward()
        r0, r1 = ranks[0][step], ranks[1][step]
        # Outputs and input gradients: each process holds its rows of the whole-batch ones.
        torch.testing.assert_close(torch.cat([r0["out"], r1["out"]]), out.detach())
        torch.testing.assert_close(torch.cat([r0["x_grad"], r1["x_grad"]]), xs.grad)
        # Parameter gradients: the processes' sum (what DDP all-reduces) is the whole-batch one.
        torch.testing.assert_close(r0["weight_grad"] + r1["weight_grad"], ref.weight.grad)
        torch.testing.assert_close(r0["bias_grad"] + r1["bias_grad"], ref.bias.grad)
        # Running statistics (unbiased variance over all 12 rows) are the same in both processes.
        for r in (r0, r1):
            torch.testing.assert_close(r["running_mean"], ref.running_mean)
            torch.testing.assert_close(r["running_var"], ref.running_var)
            assert r["num_batches_tracked"] == int(ref.num_batches_tracked) == step + 1
    # The check has teeth: each share normalised on its own would give other outputs.
    def normalised(rows):
        return torch.nn.functional.batch_norm(rows, None, None, training=True)

    assert not torch.allclose(normalised(x[0, :6]), normalised(x[0])[:6], atol=1e-2)


def test_sync_batchnorm_is_batchnorm_outside_distributed_training():
    """In one process SyncBatchNorm1d is torch's BatchNorm1d (the same state dict, so models
    trained with several processes load as ordinary ones)."""
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


@pytest.mark.parametrize("gpus", [0, 1, 2])
def test_each_process_gets_a_gpu_of_its_own_or_trains_on_the_cpu(monkeypatch, gpus):
    """``--nproc 2`` on a machine with one GPU: 'auto' trains on the CPU (NCCL runs one process
    per GPU, and the second process's cuda:1 does not exist); 'cuda' is refused before any
    process joins the group, with the fix in the message."""
    from zipo.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resolve_device("auto").type == ("cuda" if gpus >= 2 else "cpu")
    assert resolve_device("cpu").type == "cpu"
    if gpus == 1:
        with pytest.raises(ValueError, match=r"2 processes .* has 1; use at most 1 processes"):
            resolve_device("cuda")
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")  # two machines of one GPU each (torchrun)
        assert resolve_device("auto").type == resolve_device("cuda").type == "cuda"
    elif gpus == 0:
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    else:
        assert resolve_device("cuda").type == "cuda"
