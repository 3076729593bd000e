"""Training and inference on a CUDA GPU: bfloat16 mixed precision, the sparse first layer, the
pinned-memory copy of batches, and agreement with CPU inference of the same weights.

Skipped on machines without CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import zipo
from zipo.config import ModelConfig
from zipo.data.counts import CountMatrix
from zipo.data.loader import CellBatches, csr_to_torch
from zipo.nn.network import ZiPoNetwork
from zipo.train.schedule import kept_row

from benchmarks.scale import choose_first_layer

from conftest import REAL_CUDA_IS_AVAILABLE, SMALL_ENCODER

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DEVICE = "cuda"
LOSSES = ["train_loss", "train_nll", "validation_loss", "validation_nll"]
LAYERS = ("zipo_denoised", "zipo_zero_prob")


@pytest.fixture(autouse=True)
def _real_cuda(monkeypatch):
    """The rest of the suite runs with CUDA hidden (conftest's `_cpu_suite`); these tests see it."""
    monkeypatch.setattr(torch.cuda, "is_available", REAL_CUDA_IS_AVAILABLE)


def _gpu_model(adata, **options):
    kw = dict(encoder_dims=SMALL_ENCODER, max_epochs=3, batch_size=32, seed=0, verbose=False,
              device=DEVICE)
    kw.update(options)
    return zipo.ZiPo(adata, **kw)


@pytest.mark.parametrize("mixed_precision", [True, False])
def test_train_on_gpu_and_match_cpu_inference(pbmc_small, tmp_path, mixed_precision):
    model = _gpu_model(pbmc_small.copy(), mixed_precision=mixed_precision).train()
    assert model.device.type == "cuda"
    assert all(p.is_cuda for p in model.network.parameters())
    autocast = model._autocast(model.config.train)
    assert (autocast is not None) == (mixed_precision and torch.cuda.is_bf16_supported())
    h = model.history
    assert len(h) == 3 and np.isfinite(h[LOSSES].to_numpy()).all()
    assert (h["data_wait_seconds"] >= 0).all()
    # validation scores the float32 network, as evaluate() does after training (under bf16
    # autocast the two differed by 7e-4 on PBMC 4k)
    kept = h["validation_nll"].iloc[kept_row(h)]
    val = pbmc_small[model.validation_indices].copy()
    assert model.evaluate(val)["nll"] == pytest.approx(kept, rel=1e-5)

    on_gpu = model.denoise(pbmc_small, zero_inflation=True, copy=True)
    for key in LAYERS:
        assert np.isfinite(on_gpu.layers[key]).all()

    model.save(tmp_path / "m")
    cpu = zipo.ZiPo.load(tmp_path / "m", device="cpu")
    assert all(not p.is_cuda for p in cpu.network.parameters())
    for name, w in model.network.state_dict().items():  # the weights moved over unchanged
        torch.testing.assert_close(cpu.network.state_dict()[name], w.cpu(), rtol=0, atol=0)
    on_cpu = cpu.denoise(pbmc_small, zero_inflation=True, copy=True)
    # Mixed precision is a training setting only: inference (denoise, get_latent) never
    # autocasts, so both devices run the same float32 network on the same weights and agree to
    # float32 rounding, whichever precision trained them. (float32 here is full float32: TF32
    # matmuls would be ~1e-3.)
    assert torch.get_float32_matmul_precision() == "highest"
    for key in LAYERS:
        np.testing.assert_allclose(on_gpu.layers[key], on_cpu.layers[key], rtol=1e-4, atol=1e-6,
                                   err_msg=key)
    np.testing.assert_allclose(on_gpu.obsm["X_zipo"], on_cpu.obsm["X_zipo"], rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(on_gpu.obs["zipo_library_size"], on_cpu.obs["zipo_library_size"],
                               rtol=1e-4)

    # and a model loaded onto the GPU gives the GPU numbers
    again = zipo.ZiPo.load(tmp_path / "m", device=DEVICE).denoise(pbmc_small, copy=True)
    np.testing.assert_allclose(again.layers["zipo_denoised"], on_gpu.layers["zipo_denoised"],
                               rtol=1e-5, atol=1e-7)


def _linear_output_dtypes(model) -> set:
    """The dtypes of every nn.Linear output while ``model`` trains (the network is built in
    train(), so the hook is global, for the duration of the call)."""
    seen = set()

    def hook(module, inputs, output):
        if isinstance(module, torch.nn.Linear) and module.training:
            seen.add(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        model.train()
    finally:
        handle.remove()
    return seen


def test_mixed_precision_changes_only_rounding(pbmc_small):
    """bf16 and float32 encoders train to nearly the same losses over a few epochs, and the
    bf16 run's training steps really compute in bfloat16."""
    full = _gpu_model(pbmc_small.copy(), mixed_precision=False, prefetch=0)
    assert _linear_output_dtypes(full) == {torch.float32}
    half = _gpu_model(pbmc_small.copy(), mixed_precision=True, prefetch=0)
    if torch.cuda.is_bf16_supported():
        assert torch.bfloat16 in _linear_output_dtypes(half)
    else:
        half.train()
    # Mixed precision really is in play here: the encoder's forward and backward run in
    # bfloat16 (8 bits of mantissa, ~4e-3 relative per operation) for every training step, and
    # the differences compound over the epochs, so only a loose agreement is expected.
    np.testing.assert_allclose(half.history[LOSSES], full.history[LOSSES], rtol=5e-2)


@pytest.mark.parametrize("transform", ["log1p", "normalize_log1p"])
def test_sparse_first_layer_equals_dense_on_gpu(transform):
    torch.manual_seed(0)
    net = ZiPoNetwork(500, 0, ModelConfig(encoder_dims=[64, 16], input_transform=transform))
    net.target_library.fill_(80.0)
    net.to(DEVICE).train()
    rng = np.random.default_rng(0)
    x = sp.random(64, 500, density=0.03, format="csr", random_state=rng,
                  data_rvs=lambda k: rng.integers(1, 30, k)).astype(np.float32)
    dense = torch.from_numpy(x.toarray()).to(DEVICE)
    sparse = csr_to_torch(x).to(DEVICE)
    assert sparse.layout == torch.sparse_csr and sparse.is_cuda
    weights = torch.randn(64, 16, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    results = {}
    for name, batch in (("dense", dense), ("sparse", sparse)):
        net.zero_grad(set_to_none=True)
        u = net.encode(batch)
        (u * weights).sum().backward()
        results[name] = (u.detach(), {k: p.grad.detach().clone()
                                      for k, p in net.named_parameters() if p.grad is not None})
    (u_d, g_d), (u_s, g_s) = results["dense"], results["sparse"]
    # One float32 forward and backward on both sides (the same test on CPU differs by at most
    # 2e-6 in u, of size ~4, and 2e-5 x the largest gradient of a tensor).
    torch.testing.assert_close(u_s, u_d, rtol=1e-4, atol=1e-4)
    assert g_s.keys() == g_d.keys() and "encoder.0.0.weight" in g_s
    for k in g_d:
        scale = float(g_d[k].abs().max())
        torch.testing.assert_close(g_s[k], g_d[k], rtol=1e-4, atol=1e-4 * scale, msg=k)

    mode, seconds = choose_first_layer(net, sparse, repeats=2)
    assert mode in {"sparse", "dense"} and all(s > 0 for s in seconds.values())


def test_sparse_training_on_gpu_equals_dense(pbmc_small):
    runs = {}
    for mode in ("sparse", "dense"):
        adata = pbmc_small.copy()
        model = _gpu_model(adata, first_layer=mode, mixed_precision=False).train()
        assert model.first_layer_mode == mode
        runs[mode] = (model.history, model.denoise(adata, copy=True).layers["zipo_denoised"])
    (hs, ds), (hd, dd) = runs["sparse"], runs["dense"]
    # float32 on both sides, but 3 epochs of Adam steps carry the first layer's rounding
    # differences forward (on CPU the same comparison differs by 1e-6 in the losses and 2e-5 in
    # the denoised values); GPU sparse products also sum in a non-deterministic order.
    np.testing.assert_allclose(hs[LOSSES], hd[LOSSES], rtol=1e-4)
    np.testing.assert_allclose(ds, dd, rtol=1e-3, atol=1e-5)

    # the sparse path also trains under bf16 autocast
    mixed = _gpu_model(pbmc_small.copy(), first_layer="sparse", mixed_precision=True).train()
    assert np.isfinite(mixed.history[LOSSES].to_numpy()).all()


@pytest.mark.parametrize("sparse", [False, True])
def test_batches_are_copied_from_pinned_memory(pbmc_small, monkeypatch, sparse):
    pinned = []
    pin = torch.Tensor.pin_memory

    def spy(self, *args, **kwargs):
        out = pin(self, *args, **kwargs)
        pinned.append(out)
        return out

    monkeypatch.setattr(torch.Tensor, "pin_memory", spy)
    cov = np.random.default_rng(0).normal(size=(80, 2)).astype(np.float32)
    batches = CellBatches(CountMatrix(pbmc_small), cov, np.arange(80), 32, device=DEVICE,
                          sparse=sparse, prefetch=2)
    n = 0
    for x, c, idx in batches:
        assert x.is_cuda and c.is_cuda
        assert (x.layout == torch.sparse_csr) == sparse
        want = torch.from_numpy(pbmc_small.X[idx].toarray())
        torch.testing.assert_close((x.to_dense() if sparse else x).cpu(), want)
        torch.testing.assert_close(c.cpu(), torch.from_numpy(cov[idx]))
        n += 1
    assert n == 3
    # dense counts and covariates go through pinned memory; sparse counts are copied directly
    assert len(pinned) == (3 if sparse else 6)
    assert all(t.is_pinned() for t in pinned)


def test_training_on_gpu_uses_the_device_copy(pbmc_small, monkeypatch):
    calls = []
    to_device = CellBatches._to_device

    def spy(self, x, c):
        out = to_device(self, x, c)
        calls.append((self.device.type, out[0].device.type, out[1].device.type))
        return out

    monkeypatch.setattr(CellBatches, "_to_device", spy)
    _gpu_model(pbmc_small.copy(), max_epochs=1).train()
    assert calls and all(call == ("cuda", "cuda", "cuda") for call in calls)
