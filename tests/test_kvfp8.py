"""The fp8 KV cache (`infer.kv_cache = "fp8"`): its quantization, its decode kernel (run by Triton's interpreter
on CPU tensors; on a GPU by `harness bench generate --kv-cache fp8`), and generation through it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from harness.core import models
from harness.core.models import PRESETS
from harness.core.tokens import Grid
from harness.cosmos import batching, kvfp8, parallel
from harness.cosmos import generate as gen
from harness.cosmos.model import build_model

GRID = Grid(3, 4, 5)


def test_quantize_keeps_each_value_within_e4m3_rounding() -> None:
    """Each row's largest magnitude maps to 448 exactly; every value is off by at most half an e4m3 step (3
    mantissa bits: 1/16 of its magnitude) or, below e4m3's normal range, half its smallest subnormal step."""
    x = torch.randn(3, 2, 50, 16) * torch.logspace(-3, 3, 50)[None, None, :, None]
    x[0, 0, 0] = 0.0
    codes, scale = kvfp8.quantize(x)
    assert codes.dtype == torch.uint8 and scale.shape == x.shape[:-1] and scale.dtype == torch.float32
    back = kvfp8.dequantize(codes, scale, torch.float32)
    err = (back - x).abs()
    assert torch.all(err <= x.abs() / 16 + scale[..., None] * 2.0**-10)
    assert torch.equal(back[0, 0, 0], torch.zeros(16))
    assert torch.allclose(back.abs().amax(-1)[1:], x.abs().amax(-1)[1:], rtol=1e-6)


def test_fp8_cache_holds_about_half_the_bytes() -> None:
    """Cosmos-4B: 64 KiB a position in bf16, 33 KiB in fp8 (codes and a 4-byte scale per head and layer)."""
    p = PRESETS["cosmos-4b"]
    bf16 = models.kv_bytes(p.num_layers, p.num_query_groups, p.kv_channels, 2)
    fp8 = models.kv_bytes(p.num_layers, p.num_query_groups, p.kv_channels, 2, fp8=True)
    assert (bf16, fp8) == (64 * 1024, 2 * 16 * 8 * (128 + 4))
    weights = models.decode_weight_bytes(p)
    assert models.decode_step_bytes(p, 58, 8960, fp8=True) - weights == 58 * 8960 * fp8
    v = PRESETS["cosmos-5b-v2w"]  # the prompt's cross-attention keys/values stay in the model's dtype
    per = models.kv_bytes(v.num_layers, v.num_query_groups, v.kv_channels, 2)
    assert models.decode_step_bytes(v, 1, 0, fp8=True) == models.decode_weight_bytes(v) + models.PROMPT_ROWS * per


def test_auto_batch_with_the_fp8_cache_is_about_twice_as_large() -> None:
    from types import SimpleNamespace

    p = PRESETS["cosmos-4b"]
    conf = SimpleNamespace(num_query_groups=p.num_query_groups, tensor_model_parallel_size=1, kv_channels=128,
                           params_dtype=torch.bfloat16, ffn_hidden_size=p.ffn_hidden_size, hidden_size=p.hidden_size)
    model = SimpleNamespace(config=conf, decoder=SimpleNamespace(layers=[None] * p.num_layers))
    free = 141 * 10**9 - 2 * p.params
    a, b = (batching.max_batch(model, 12_801, 5_120, free, fp8=f) for f in (False, True))
    assert 1.7 * a <= b <= 2.0 * a, (a, b)


_KERNEL_CHECK = """
import torch
from harness.cosmos import kvfp8
torch.manual_seed(0)
worst = 0.0
# (batch, query heads, kv heads, cap, pos, splits): GQA groups of 4 and 1, positions 0 / mid-block / last,
# more splits than blocks of valid keys, one split
for b, h, g, cap, pos, n in [(1, 8, 2, 300, 0, 4), (2, 8, 2, 300, 257, 4), (3, 4, 4, 200, 199, 1),
                             (1, 32, 8, 256, 130, 7), (2, 8, 2, 130, 64, 33)]:
    q = torch.randn(1, b, h, 16).permute(1, 2, 0, 3)  # the model's strided [b, h, 1, d] view
    k, ks = kvfp8.quantize(torch.randn(b, g, cap, 16) * 3)
    v, vs = kvfp8.quantize(torch.randn(b, g, cap, 16))
    p = torch.tensor(pos)
    ref = kvfp8.reference(q, k, ks, v, vs, p, 0.3)
    out = kvfp8.flash_decode(q, k, ks, v, vs, p, 0.3, n)
    assert out.shape == ref.shape == (b, h, 1, 16)
    worst = max(worst, (out - ref).abs().max().item())
    k[:, :, pos + 1:] = 0x7F  # e4m3 NaN codes past the position: never read
    assert torch.equal(kvfp8.flash_decode(q, k, ks, v, vs, p, 0.3, n), out)
kvfp8.F16 = True  # bf16 queries, dot products in fp16 (the interpreter's fp16 is numpy's; its bf16 is not faithful)
worst16 = 0.0
for b, h, g, cap, pos, n in [(2, 8, 2, 300, 257, 4), (1, 32, 8, 256, 130, 7)]:
    q = torch.randn(b, h, 1, 16).bfloat16()
    k, ks = kvfp8.quantize(torch.randn(b, g, cap, 16) * 3)
    v, vs = kvfp8.quantize(torch.randn(b, g, cap, 16) * 1e-3)  # small value scales: p x scale would underflow fp16
    p = torch.tensor(pos)
    ref = kvfp8.reference(q.float(), k, ks, v, vs, p, None)
    out = kvfp8.flash_decode(q, k, ks, v, vs, p, None, n)
    assert out.dtype == torch.bfloat16
    worst16 = max(worst16, ((out.float() - ref).abs().max() / ref.abs().max()).item())
print(worst, worst16)
"""


@pytest.mark.timeout(120)
def test_decode_kernel_matches_the_reference_in_tritons_interpreter() -> None:
    """The Triton kernel itself (its splits, GQA rows, masks and log-sum-exp merge), interpreted on CPU: fp32, and
    bf16 queries through the fp16 dot products (the default; the interpreter's bf16 arithmetic is not faithful:
    the bf16 dot products are checked on the GPU by the generate bench)."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(_KERNEL_CHECK)], capture_output=True, text=True,
                       env=env, timeout=110)
    assert p.returncode == 0, p.stderr[-2000:]
    fp32, fp16 = (float(x) for x in p.stdout.split()[-2:])
    assert fp32 < 1e-5 and fp16 < 1e-2


def test_splits_fill_the_gpu_without_empty_blocks() -> None:
    assert kvfp8.splits(8, 12_800, 132) == 64  # batch 1 of Cosmos-4B on an H100: 66, capped
    assert kvfp8.splits(58 * 8, 12_800, 132) == 5
    assert kvfp8.splits(107 * 8, 12_800, 132) == 3
    assert kvfp8.splits(8, 256, 132) == 2  # never more splits than key blocks


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    parallel.init(1, seed=7)
    torch.manual_seed(7)
    m = build_model(PRESETS["tiny"], GRID, tp=1, precision="fp32", device="cpu").eval()
    with torch.no_grad():
        m.output_layer.weight.mul_(20.0)
    return m


@pytest.mark.timeout(180)
def test_fp8_cache_gives_the_same_tokens_on_every_path(model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    """Host and device positions, whole and chunked prefill, all attend to the same quantized keys/values:
    identical greedy and seeded tokens. The logits stay close to the model-dtype cache's, not equal to them."""
    prompt = torch.randint(0, 64_000, (2, GRID.h * GRID.w + 3), generator=torch.Generator().manual_seed(8))
    new = GRID.tokens - prompt.shape[1]
    for s in (gen.Sampling(temperature=0.0), gen.Sampling(1.0, 0.8, seed=4)):
        cache = gen.StaticKVCache(len(model.decoder.layers), GRID.tokens + 5, fp8=True)
        host = gen.generate(model, prompt, new, s, cache=cache, mode="eager")
        assert cache.layers[0].k_buf is not None and cache.layers[0].k_buf.dtype == torch.uint8
        dev = gen.generate(model, prompt, new, s, cache=cache, mode="device")
        monkeypatch.setattr(batching, "PREFILL_TOKENS", 2 * 5)
        chunked = gen.generate(model, prompt, new, s, cache=cache, mode="device")
        monkeypatch.undo()
        assert torch.equal(host, dev) and torch.equal(host, chunked), s
    with torch.no_grad():
        exact = model(prompt, last_only=True)[:, -1]
        fp8 = model(prompt, kv_cache=gen.StaticKVCache(len(model.decoder.layers), GRID.tokens, fp8=True),
                    last_only=True)[:, -1]
    assert 0 < ((fp8 - exact).norm() / exact.norm()).item() < 0.03  # 0.9% measured


@pytest.mark.timeout(180)
def test_fp8_cache_with_a_video2world_context(model: torch.nn.Module) -> None:
    """Video2World's cross-attention keeps its own (model-dtype) store beside the fp8 self-attention cache: host
    and device positions give the same tokens."""
    from harness.core.tokens import BOV_ID

    torch.manual_seed(7)
    v2w = build_model(PRESETS["tiny-v2w"], GRID, tp=1, precision="fp32", device="cpu").eval()
    g = torch.Generator().manual_seed(2)
    prompt = torch.cat([torch.full((2, 1), BOV_ID), torch.randint(0, 64_000, (2, GRID.h * GRID.w), generator=g)], 1)
    context = torch.randn(2, 512, PRESETS["tiny-v2w"].crossattn_dim, generator=g)
    new = GRID.tokens - GRID.h * GRID.w
    cache = gen.StaticKVCache(len(v2w.decoder.layers), GRID.tokens + 1, fp8=True)
    host = gen.generate(v2w, prompt, new, gen.Sampling(0.0), cache=cache, context=context, mode="eager")
    dev = gen.generate(v2w, prompt, new, gen.Sampling(0.0), cache=cache, context=context, mode="device")
    assert torch.equal(host, dev)


def test_the_generate_benchs_fp8_checks(model: torch.nn.Module) -> None:
    """`harness bench generate --kv-cache fp8`'s checks on CPU: the kernel check compares the reference with
    itself there (exactly), and the quality figures of the tiny model are small but not zero."""
    from harness.bench import kvfp8 as checks

    k = checks.kernel_check(model, "cpu", 2, 300)
    assert k["ok"] and k["max_rel_diff"] == 0.0 and k["dtype"] == "torch.float32"
    prompt = torch.randint(0, 64_000, (2, 40), generator=torch.Generator().manual_seed(1))
    q = checks.quality(model, prompt, {})
    assert q["sequences"] == 2 and q["positions"] == 40
    assert 0 < q["logits_rel_l2"] < 0.03 and 0 <= q["kl_nats_mean"] < 1e-3 and q["top1_agreement"] >= 0.9
