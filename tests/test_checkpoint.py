"""Checkpoints: a run killed with SIGKILL and resumed ends where an uninterrupted run ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

import zipo
from zipo.datasets import pbmc4k_demo
from zipo.nn.network import ZiPoNetwork
from zipo.train.checkpoint import CHECKPOINT_FILE

# Slow enough per epoch (~0.3 s) that the kill lands mid-run; early stopping off so the run
# length is fixed; on the CPU in the child process too, where CUDA is present.
OPTIONS = dict(encoder_dims=[256, 64], batch_size=64, max_epochs=14, seed=5,
               early_stopping_patience=1000, checkpoint_every=1, verbose=False, device="cpu")


def demo_subset():
    adata = pbmc4k_demo()[:1200].copy()
    return adata[:, np.asarray(adata.X.sum(axis=0)).ravel() > 0].copy()


def final_state(model):
    return {k: v.detach().cpu().clone() for k, v in model.network.state_dict().items()}


def test_sigkill_then_resume_gives_the_uninterrupted_weights(tmp_path):
    threads = torch.get_num_threads()  # same thread count in both processes: same float sums
    ckpt = tmp_path / "ckpt"
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import torch, zipo
        torch.set_num_threads({threads})
        from test_checkpoint import OPTIONS, demo_subset
        zipo.ZiPo(demo_subset(), **OPTIONS).train(checkpoint_dir={str(ckpt)!r})
    """))
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, str(script)], env=env, cwd=os.getcwd())
    killed_at = None
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (ckpt / CHECKPOINT_FILE).exists():
            epoch = torch.load(ckpt / CHECKPOINT_FILE, weights_only=True)["trainer"]["epoch"]
            if epoch >= 4:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed_at = epoch
                break
        time.sleep(0.05)
    assert killed_at is not None and killed_at < OPTIONS["max_epochs"], "the run was not killed mid-way"
    assert proc.returncode == -signal.SIGKILL
    assert not [p for p in ckpt.iterdir() if p.name != CHECKPOINT_FILE], "temporary files left"

    resumed = zipo.ZiPo(demo_subset(), **OPTIONS).train(checkpoint_dir=ckpt, resume=True)
    straight = zipo.ZiPo(demo_subset(), **OPTIONS).train()
    assert len(resumed.history) == len(straight.history) == OPTIONS["max_epochs"]
    np.testing.assert_array_equal(resumed.history["validation_loss"], straight.history["validation_loss"])
    a, b = final_state(resumed), final_state(straight)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_refuses_a_missing_or_foreign_checkpoint(tmp_path):
    adata = demo_subset()[:300]
    with pytest.raises(ValueError, match="needs the checkpoint_dir"):
        zipo.ZiPo(adata, **OPTIONS).train(resume=True)
    with pytest.raises(ValueError, match="no checkpoint to resume from"):
        zipo.ZiPo(adata, **OPTIONS).train(checkpoint_dir=tmp_path / "none", resume=True)
    zipo.ZiPo(adata, **{**OPTIONS, "max_epochs": 1}).train(checkpoint_dir=tmp_path / "c")
    other_genes = adata[:, 1:].copy()
    other_genes = other_genes[:, np.asarray(other_genes.X.sum(axis=0)).ravel() > 0].copy()
    with pytest.raises(ValueError, match="other genes"):
        zipo.ZiPo(other_genes, **OPTIONS).train(checkpoint_dir=tmp_path / "c", resume=True)
    with pytest.raises(ValueError, match=r"other \[model\] options"):
        zipo.ZiPo(adata, **{**OPTIONS, "alpha_z": 0.5}).train(checkpoint_dir=tmp_path / "c", resume=True)


def test_malicious_checkpoint_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "c").mkdir()
    torch.save({"format": "zipo-checkpoint", "payload": Exploit()}, tmp_path / "c" / CHECKPOINT_FILE)
    with pytest.raises(ValueError, match="could not be read safely"):
        zipo.ZiPo(demo_subset()[:300], **OPTIONS).train(checkpoint_dir=tmp_path / "c", resume=True)
    assert not marker.exists()


def test_nan_loss_stops_with_the_epoch_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import zipo.train.trainer as training

    real = training.loss_terms
    calls = {"n": 0}
    model = zipo.ZiPo(demo_subset()[:300], **{**OPTIONS, "batch_size": 100})
    batches_per_epoch = -(-len(range(270)) // 100)  # 90% of 300 cells train, batches of 100

    def poisoned(net, out, x, config, **kwargs):
        terms = real(net, out, x, config, **kwargs)
        calls["n"] += net.training  # count training batches only
        if net.training and calls["n"] > 2 * batches_per_epoch:  # epoch 3
            terms.total = terms.total * float("nan")
        return terms

    monkeypatch.setattr(training, "loss_terms", poisoned)
    with pytest.raises(FloatingPointError, match="in epoch 3;.*learning rate"):
        model.train(checkpoint_dir=tmp_path / "c")
    state = torch.load(tmp_path / "c" / CHECKPOINT_FILE, weights_only=True)
    assert state["trainer"]["epoch"] == 2
    assert model.is_trained and len(model.history) == 2  # usable, with the epochs that ran
    assert not model.network.training  # left ready for inference
    weights = model.network.first_layer.weight
    assert torch.isfinite(weights).all()
    assert torch.equal(weights, state["trainer"]["stopper"]["best_state"]["encoder.0.0.weight"])


@pytest.mark.parametrize("alpha_kl, weight_average", [(0.0, 0.0), (0.5, 0.0), (0.0, 0.9)],
                         ids=["deterministic", "latent-noise", "weight-average"])
def test_a_checkpoint_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path, alpha_kl,
                                                                     weight_average):
    """Rounds of at most 3 steps cut an epoch of 8 batches in three, and a checkpoint comes
    after every round: a run stopped after round 4 (in the middle of epoch 2) resumes there,
    skipping the batches it took, and ends as the uninterrupted run does (with alpha_kl, the
    latents' noise stream resumes too; with weight_average, the average)."""
    options = {**OPTIONS, "max_epochs": 3, "batch_size": 64, "validation_interval": 3,
               "alpha_kl": alpha_kl, "weight_average": weight_average}
    # 540 cells, all training (the validation cells on their kept molecules): 9 steps an
    # epoch, 3 rounds
    adata = demo_subset()[:540].copy()

    def stop_after_round_4(trainer):
        if len(trainer.history) == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        zipo.ZiPo(adata, **options).train(checkpoint_dir=tmp_path, callback=stop_after_round_4)
    saved = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)["trainer"]
    assert (saved["epoch"], saved["epoch_step"], saved["steps"]) == (1, 3, 12)

    resumed = zipo.ZiPo(adata, **options).train(checkpoint_dir=tmp_path, resume=True)
    straight = zipo.ZiPo(adata, **options).train()
    assert list(straight.history["step"]) == [3, 6, 9, 12, 15, 18, 21, 24, 27]
    np.testing.assert_array_equal(resumed.history["validation_heldout_nll"],
                                  straight.history["validation_heldout_nll"])
    a, b = final_state(resumed), final_state(straight)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_checkpoint_from_before_the_decoders_own_rate_resumes(tmp_path):
    """Checkpoints written before ``train.decoder_lr_factor`` hold one optimiser group, the
    network's parameters in their order: resumed, they end where the uninterrupted run ends."""
    options = {**OPTIONS, "max_epochs": 3}
    adata = demo_subset()[:540].copy()
    straight = zipo.ZiPo(adata, **options).train()

    def stop_after_epoch_1(trainer):
        if len(trainer.history) == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        zipo.ZiPo(adata, **options).train(checkpoint_dir=tmp_path, callback=stop_after_epoch_1)
    path = tmp_path / CHECKPOINT_FILE
    saved = torch.load(path, weights_only=True)
    optimiser = saved["trainer"]["optimiser"]
    # today's numbering runs group after group (the encoder and dispersion, then the rest);
    # the old one follows the network's parameters, the dispersion head among the decoder's
    base, rest = (iter(g["params"]) for g in optimiser["param_groups"])
    order = [next(base if name.split(".")[0] in ZiPoNetwork.BASE_RATE_MODULES else rest)
             for name, _ in straight.network.named_parameters()]
    assert sorted(order) != order  # the two numberings differ
    group = {k: v for k, v in optimiser["param_groups"][0].items() if k != "lr_factor"}
    one_group = {"state": {old: optimiser["state"][new] for old, new in enumerate(order)},
                 "param_groups": [{**group, "params": list(range(len(order)))}]}
    torch.save({**saved, "trainer": {**saved["trainer"], "optimiser": one_group}}, path)

    resumed = zipo.ZiPo(adata, **options).train(checkpoint_dir=tmp_path, resume=True)
    a, b = final_state(resumed), final_state(straight)
    for key in a:
        assert torch.equal(a[key], b[key]), key
