"""The training fusions of the bf16 GPU path: the weight-gradient accumulation megatron calls by Apex's names
(`harness.cosmos.wgrad`), the compiled RMSNorm (`harness.cosmos.layers.rms_norm`) and the clip folded into the
fused Adam step (`harness.stages.finetune.clipfuse`); the chunked loss is tested in `test_cosmos_model.py`. The
CPU tests check the accumulation's arithmetic and that CPU training keeps the unfused paths; the CUDA ones (run
on the GPU machine) check the fused paths against the unfused ones."""

from __future__ import annotations

import pytest
import torch

from harness.cosmos import layers, wgrad

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU machine's path")


def test_bf16_accumulation_adds_the_weight_gradient_in_place() -> None:
    g = torch.Generator().manual_seed(0)
    x, dy = torch.randn(64, 16, generator=g), torch.randn(64, 8, generator=g)
    main = torch.randn(8, 16, generator=g)
    want = main + dy.t() @ x
    buf = main.clone()
    ptr = buf.data_ptr()
    wgrad._Accumulate.wgrad_gemm_accum_fp16(x, dy, buf)  # the same in-place arithmetic, in fp32 on the CPU
    assert buf.data_ptr() == ptr
    torch.testing.assert_close(buf, want)


@cpu_only
def test_cpu_training_keeps_the_unfused_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.core.models import PRESETS
    from harness.cosmos import config, loss, parallel

    parallel.init(1)
    monkeypatch.setattr(wgrad, "enabled", True)
    monkeypatch.setattr(layers, "compiled_norm", True)
    monkeypatch.setattr(loss, "chunked", True)

    def chunked_loss(*_: object) -> None:
        raise AssertionError("the chunked loss ran on CPU")

    monkeypatch.setattr(loss, "chunked_loss", chunked_loss)
    assert loss.token_loss(torch.randn(3, 1, 10), torch.zeros(1, 3, dtype=torch.int64)).shape == (1, 3)
    assert not wgrad.available()
    assert config.transformer_config(PRESETS["tiny"], precision="fp32").gradient_accumulation_fusion is False
    x = torch.randn(4, 8, requires_grad=True)
    assert torch.equal(layers.rms_norm(x, torch.ones(8), 1e-5), layers._rms_norm(x, torch.ones(8), 1e-5))


@cuda
def test_fused_accumulation_equals_the_fp32_sum_of_the_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wgrad, "enabled", True)
    assert wgrad.available()
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(4096, 256, generator=g, device="cuda").bfloat16()
    dy = torch.randn(4096, 128, generator=g, device="cuda").bfloat16()
    main = torch.randn(128, 256, generator=g, device="cuda")
    want = main + dy.float().t() @ x.float()
    wgrad._Accumulate.wgrad_gemm_accum_fp32(x, dy, main)
    torch.testing.assert_close(main, want, rtol=1e-4, atol=1e-3)


@cuda
def test_compiled_norm_matches_aten_forward_and_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layers, "compiled_norm", True)
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(2048, 1, 512, generator=g, device="cuda").bfloat16().requires_grad_()
    w = (1 + 0.1 * torch.randn(512, generator=g, device="cuda")).bfloat16().requires_grad_()
    dy = torch.randn(2048, 1, 512, generator=g, device="cuda").bfloat16()
    grads = []
    for fn in (layers._rms_norm, layers.rms_norm):
        y = fn(x, w, 1e-5)
        gx, gw = torch.autograd.grad(y, (x, w), dy)
        grads.append((y, gx, gw))
    for a, b in zip(*grads):
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2)
    assert layers._rms_norm_compiled is not None  # the second call went through torch.compile


def _adam_after_clip(device: str, fused_clip: bool) -> list[torch.Tensor]:
    """Two AdamW steps of a few parameters whose gradient norm exceeds max_norm (5x), clipped by megatron's
    rule: by scaling the gradients, or through `clipfuse.clip_in_step` (the step's grad_scale)."""
    from harness.stages.finetune import clipfuse

    g = torch.Generator().manual_seed(3)
    params = [torch.nn.Parameter(torch.randn(64, 32, generator=g).to(device)) for _ in range(3)]
    opt = torch.optim.AdamW(params, lr=1e-2, fused=True)
    max_norm = 1.0
    for step in range(2):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g).to(device) * 0.5
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params])))
        assert norm > 5 * max_norm
        if fused_clip:
            clipfuse._owners.update((id(p), opt) for p in params)
            clipfuse.clip_in_step(params, max_norm, norm)
        else:
            for p in params:
                p.grad.mul_(max_norm / (norm + 1e-6))
        opt.step()
    clipfuse._owners.clear()
    return [p.detach().cpu() for p in params]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda)])
def test_clip_as_the_fused_step_grad_scale_equals_scaled_gradients(device: str) -> None:
    for a, b in zip(_adam_after_clip(device, False), _adam_after_clip(device, True)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
