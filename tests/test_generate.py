"""Generation with the static KV cache produces exactly the tokens of full re-computation (greedy, CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from harness.core.models import PRESETS
from harness.core.tokens import Grid
from harness.cosmos import batching, parallel
from harness.cosmos import generate as gen
from harness.cosmos.model import build_model

GRID = Grid(3, 4, 5)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    parallel.init(1, seed=7)
    torch.manual_seed(7)
    m = build_model(PRESETS["tiny"], GRID, tp=1, precision="fp32", device="cpu").eval()
    with torch.no_grad():  # random init gives near-uniform logits; sharpen them so argmax is well separated
        m.output_layer.weight.mul_(20.0)
    return m


@pytest.mark.timeout(120)
def test_kv_cache_matches_recompute_greedy(model: torch.nn.Module) -> None:
    prompt = torch.randint(0, 64_000, (2, GRID.h * GRID.w), generator=torch.Generator().manual_seed(0))
    new = GRID.tokens - prompt.shape[1]
    s = gen.Sampling(temperature=0.0)
    cached = gen.generate(model, prompt, new, s, use_cache=True)
    full = gen.generate(model, prompt, new, s, use_cache=False)
    assert cached.shape == (2, new)
    assert torch.equal(cached, full)
    assert len(set(cached[0].tolist())) > 3  # not a degenerate constant sequence


@pytest.mark.timeout(120)
def test_cache_reuse_and_seeded_sampling(model: torch.nn.Module) -> None:
    prompt = torch.randint(0, 64_000, (3, 7), generator=torch.Generator().manual_seed(1))
    cache = gen.StaticKVCache(len(model.decoder.layers), 7 + 12)
    s = gen.Sampling(temperature=1.0, top_p=0.8, seed=5)
    a = gen.generate(model, prompt, 12, s, cache=cache)
    b = gen.generate(model, prompt, 12, s, cache=cache)  # buffers reused: same result
    c = gen.generate(model, prompt, 12, gen.Sampling(1.0, 0.8, seed=6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert cache.length == 7 + 11
    ref = gen.generate(model, prompt, 12, s, use_cache=False)  # same seed, same logits: same samples
    assert torch.equal(a, ref)


def test_top_p_keeps_the_nucleus() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = gen.make_generator("cpu", 0)
    seen = {int(gen.sample(logits, gen.Sampling(1.0, 0.75), g)) for _ in range(300)}
    assert seen == {0, 1}
    seen = {int(gen.sample(logits, gen.Sampling(1.0, 0.81), g)) for _ in range(300)}
    assert seen == {0, 1, 2}
    assert int(gen.sample(logits, gen.Sampling(0.0), g)) == 0


def test_sampling_follows_the_distribution() -> None:
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = torch.log(p).repeat(4000, 1)
    draws = gen.sample(logits, gen.Sampling(1.0, 1.0), gen.make_generator("cpu", 1))
    freq = torch.bincount(draws, minlength=4).float() / 4000
    assert torch.allclose(freq, p, atol=0.03)
    top = gen.sample(logits, gen.Sampling(1.0, 0.75), gen.make_generator("cpu", 1))
    freq = torch.bincount(top, minlength=4).float() / 4000  # renormalised nucleus {0, 1}: 0.625 / 0.375
    assert torch.allclose(freq, torch.tensor([0.625, 0.375, 0.0, 0.0]), atol=0.03)


@pytest.mark.timeout(120)
def test_device_position_cache_matches_host_position(model: torch.nn.Module) -> None:
    """The graph path's model hooks (device-tensor position, in-place cache writes, fixed-length buffers with a
    validity mask) give the host-position tokens; greedy and sampled. (CUDA graph capture itself is GPU-only.)"""
    prompt = torch.randint(0, 64_000, (2, GRID.h * GRID.w), generator=torch.Generator().manual_seed(3))
    new = GRID.tokens - prompt.shape[1]
    for s in (gen.Sampling(temperature=0.0), gen.Sampling(1.0, 0.8, seed=4)):
        cache = gen.StaticKVCache(len(model.decoder.layers), GRID.tokens + 5)  # spare positions stay masked
        host = gen.generate(model, prompt, new, s, mode="eager")
        dev = gen.generate(model, prompt, new, s, cache=cache, mode="device")
        assert torch.equal(host, dev)
        assert not cache.on_device and cache.length == GRID.tokens - 1
        again = gen.generate(model, prompt, new, s, cache=cache, mode="device")  # reused buffers, stale tail
        assert torch.equal(host, again)


@pytest.mark.timeout(120)
def test_prefill_in_chunks_gives_the_whole_prompt_tokens(model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """A prompt prefilled in chunks of positions (each attending to the cache so far) leaves the cache and the
    tokens of a whole-prompt prefill: greedy and sampled, eager and device positions."""
    prompt = torch.randint(0, 64_000, (2, GRID.h * GRID.w + 3), generator=torch.Generator().manual_seed(8))
    new = GRID.tokens - prompt.shape[1]
    calls: list[int] = []
    hook = model.register_forward_pre_hook(lambda _m, args, kw: calls.append(args[0].shape[1]), with_kwargs=True)
    try:
        for s in (gen.Sampling(temperature=0.0), gen.Sampling(1.0, 0.8, seed=4)):
            ref = gen.generate(model, prompt, new, s, use_cache=False)
            for mode in ("eager", "device"):
                monkeypatch.setattr(batching, "PREFILL_TOKENS", 10**6)
                calls.clear()
                whole = gen.generate(model, prompt, new, s, mode=mode)
                assert calls[0] == prompt.shape[1] and set(calls[1:]) == {1}
                monkeypatch.setattr(batching, "PREFILL_TOKENS", 2 * 5)  # batch 2: 5 positions a chunk
                calls.clear()
                chunked = gen.generate(model, prompt, new, s, mode=mode)
                assert calls[:5] == [5, 5, 5, 5, 3] and set(calls[5:]) == {1}
                assert torch.equal(chunked, whole) and torch.equal(chunked, ref), (s, mode)
    finally:
        hook.remove()


def test_rope_device_start_equals_slice() -> None:
    from harness.cosmos.rope3d import Rope3D

    rope = Rope3D(GRID, 24, 10_000.0, length=GRID.tokens)
    for start, n in ((0, 1), (7, 1), (5, 4)):
        assert torch.equal(rope(torch.tensor(start), n), rope(start, n))


def test_auto_batch_covers_the_measured_h200_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    """infer.batch_size = 0 sizes batches from free memory; its per-sequence estimate must cover what the H200
    measured (Cosmos-4B whole videos, each prompt prefilled whole: peak memory at batch 64 minus the bf16
    weights), and the batch it picks for an H200's free memory, prompts prefilled whole as in that run, must
    not exceed the measured batch that fitted."""
    monkeypatch.setattr(batching, "PREFILL_TOKENS", 10**9)  # that run's prefill: whole prompts, whole batch
    import json
    from pathlib import Path
    from types import SimpleNamespace

    from harness.core.models import PRESETS
    from harness.cosmos.batching import kv_bytes_per_sequence, max_batch

    p = PRESETS["cosmos-4b"]
    conf = SimpleNamespace(num_query_groups=p.num_query_groups, tensor_model_parallel_size=1, kv_channels=128,
                           params_dtype=torch.bfloat16, ffn_hidden_size=p.ffn_hidden_size, hidden_size=p.hidden_size)
    model = SimpleNamespace(config=conf, decoder=SimpleNamespace(layers=[None] * p.num_layers))
    bench = json.loads((Path(__file__).parents[1] / "results/bench/h200/generate-whole-video.json").read_text())
    row = max((r for r in bench["results"] if "peak_mem_gib" in r), key=lambda r: r["batch"])
    n_ctx, positions = row["context_tokens"], row["context_tokens"] + row["new_tokens"] + 1
    weights = 2 * p.params
    measured = (row["peak_mem_gib"] * 2**30 - weights) / row["batch"]
    assert kv_bytes_per_sequence(model, positions) < measured
    free = 141 * 10**9 - weights  # an H200 after loading the weights
    one = max_batch(model, positions, n_ctx, 2**62, margin=1.0, limit=10**9)
    assert one >= 10**6  # unbounded memory: only the limit binds
    assert max_batch(model, positions, n_ctx, free) <= row["batch"]
    assert max_batch(model, positions, n_ctx, int(measured * row["batch"])) <= row["batch"]  # margin covers it


# ------------------------------------------------------------------ Video2World: the cached cross-attention path

def _sharpen_v2w(m: torch.nn.Module) -> torch.nn.Module:
    """Well separated argmaxes (as for the base model above), and a context strong enough to change the tokens."""
    with torch.no_grad():
        m.output_layer.weight.mul_(20.0)
        for layer in m.decoder.layers:
            layer.cross_attention.linear_proj.weight.mul_(10.0)
    return m


@pytest.fixture(scope="module")
def v2w_model() -> torch.nn.Module:
    parallel.init(1, seed=7)
    torch.manual_seed(7)
    return _sharpen_v2w(build_model(PRESETS["tiny-v2w"], GRID, tp=1, precision="fp32", device="cpu").eval())


def _v2w_inputs(b: int, seed: int, rows: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """BOV + one latent frame of codes, and a T5-shaped context whose rows past `rows` are zero (padding)."""
    from harness.core.tokens import BOV_ID

    g = torch.Generator().manual_seed(seed)
    prompt = torch.cat([torch.full((b, 1), BOV_ID), torch.randint(0, 64_000, (b, GRID.h * GRID.w), generator=g)], 1)
    context = torch.randn(b, 512, PRESETS["tiny-v2w"].crossattn_dim, generator=g)
    context[:, rows:] = 0
    return prompt, context


@pytest.mark.timeout(120)
def test_video2world_decode_steps_keep_the_position_on_the_device(v2w_model: torch.nn.Module,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A device-position step (what the CUDA graph captures) hands the abs-position gather the device position:
    turning it into a host int is a device-to-host sync, which invalidates the capture on a GPU (seen on an
    H100: every Video2World graph-path generation failed with cudaErrorStreamCaptureInvalidated)."""
    from harness.cosmos import video2world

    seen: list[type] = []
    real = video2world.prepare_context

    def spy(model: Any, hidden: torch.Tensor, start: Any, n: int, context: Any) -> Any:
        seen.append(type(start))
        return real(model, hidden, start, n, context)

    monkeypatch.setattr(video2world, "prepare_context", spy)
    prompt, context = _v2w_inputs(1, 2)
    gen.generate(v2w_model, prompt, 4, gen.Sampling(0.0), context=context, mode="device")
    assert seen[0] is int and seen[1:] == [torch.Tensor] * 3  # the prefill at a host position, then 3 steps


@pytest.mark.timeout(120)
def test_video2world_prefill_in_chunks_computes_the_context_once(v2w_model: torch.nn.Module,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks after the first read the context's keys/values the first chunk kept: one projection per layer,
    and the tokens of the uncached path."""
    m, new = v2w_model, 12
    kv_calls: list[int] = []
    hooks = [layer.cross_attention.linear_kv.register_forward_hook(lambda *a: kv_calls.append(1))
             for layer in m.decoder.layers]
    monkeypatch.setattr(batching, "PREFILL_TOKENS", 2 * 6)  # BOV + 20 codes in chunks of 6 positions
    try:
        prompt, context = _v2w_inputs(2, 5)
        ref = gen.generate(m, prompt, new, gen.Sampling(0.0), use_cache=False, context=context)
        kv_calls.clear()
        got = gen.generate(m, prompt, new, gen.Sampling(0.0), context=context, mode="device")
    finally:
        for h in hooks:
            h.remove()
    assert torch.equal(got, ref)
    assert len(kv_calls) == len(m.decoder.layers)


@pytest.mark.timeout(300)
def test_video2world_cached_cross_attention_matches_recompute(v2w_model: torch.nn.Module) -> None:
    """The decode path the CUDA graph captures, run eagerly: cross-attention keys/values computed once by the
    prefill and read from the cache's buffers, abs positions gathered with a device position. Greedy and sampled
    tokens equal the uncached path's (every step re-runs the whole sequence over the context), and a second
    context through the same buffers is not served the first one's keys/values."""
    m, new = v2w_model, 24
    kv_calls: list[int] = []
    hooks = [layer.cross_attention.linear_kv.register_forward_hook(lambda *a: kv_calls.append(1))
             for layer in m.decoder.layers]
    cache = gen.StaticKVCache(len(m.decoder.layers), GRID.tokens + 1 + 3)
    runs = ((0, gen.Sampling(temperature=0.0), ("eager", "device")), (0, gen.Sampling(1.0, 0.8, seed=4), ("device",)),
            (1, gen.Sampling(temperature=0.0), ("device", "eager")))  # the second context reuses the buffers
    seen = []
    try:
        for seed, s, modes in runs:
            prompt, context = _v2w_inputs(2, seed)
            ref = gen.generate(m, prompt, new, s, use_cache=False, context=context)
            for mode in modes:
                kv_calls.clear()
                got = gen.generate(m, prompt, new, s, cache=cache, context=context, mode=mode)
                assert torch.equal(got, ref), (seed, s, mode)
                assert len(kv_calls) == len(m.decoder.layers)  # the prefill's projection only
                assert m.cross_kv is None and all(lay.cross_attention.cross_kv is None for lay in m.decoder.layers)
            seen.append(ref)
    finally:
        for h in hooks:
            h.remove()
    assert not torch.equal(seen[0], seen[2])  # the context changes the greedy tokens
    assert len(set(seen[0][0].tolist())) > 3
    with pytest.raises(ValueError, match="context"):  # without a bound cache, a step still needs the context
        gen.generate(m, _v2w_inputs(1, 0)[0], 2, gen.Sampling(0.0), mode="eager")


def test_video2world_abs_positions_device_gather_equals_slice(v2w_model: torch.nn.Module) -> None:
    """The decode step's device-position gather of the abs-position table equals the host slice; the table is the
    bf16-valued one (upstream's), registered on the fp32 model."""
    from harness.cosmos.video2world import _abs_positions, abs_position_table

    table = v2w_model.abs_pos
    assert torch.equal(table, abs_position_table(GRID, 64, table.shape[0]))
    assert torch.equal(table.to(torch.bfloat16).float(), table) and table.dtype == torch.float32

    for start, n in ((0, 1), (7, 1), (5, 4), (GRID.tokens, 1)):
        assert torch.equal(_abs_positions(v2w_model, torch.tensor(start), n), _abs_positions(v2w_model, start, n))
    assert torch.count_nonzero(_abs_positions(v2w_model, 0, 1)) == 0  # BOV
    with pytest.raises(ValueError, match="exceed"):
        _abs_positions(v2w_model, v2w_model.abs_pos.shape[0], 1)


def _v2w_tp_tokens(ckpt: str, prompt: torch.Tensor, context: torch.Tensor, new: int, tp: int
                   ) -> dict[str, torch.Tensor]:
    """Greedy tokens of a tiny-v2w checkpoint loaded at TP=`tp` on this rank: uncached, and cached per mode."""
    from harness.cosmos.checkpoint import load_model

    parallel.init(tp)
    m = build_model(PRESETS["tiny-v2w"], GRID, tp=tp, precision="fp32", device="cpu")
    load_model(m, Path(ckpt))
    m = _sharpen_v2w(m.eval())
    s = gen.Sampling(0.0)
    out = {"none": gen.generate(m, prompt, new, s, use_cache=False, context=context)}
    cache = gen.StaticKVCache(len(m.decoder.layers), prompt.shape[1] + new)
    out.update({mode: gen.generate(m, prompt, new, s, cache=cache, context=context, mode=mode)
                for mode in ("eager", "device")})
    fp8 = gen.StaticKVCache(len(m.decoder.layers), prompt.shape[1] + new, fp8=True)  # scales per head: TP-invariant
    out.update({f"fp8-{mode}": gen.generate(m, prompt, new, s, cache=fp8, context=context, mode=mode)
                for mode in ("eager", "device")})
    return out


@pytest.mark.timeout(600)
def test_video2world_tensor_parallel_2_generates_the_tp1_tokens(tmp_path: Path) -> None:
    """TP=2 (two gloo ranks): each rank caches its own heads' cross-attention keys/values; fp32 greedy tokens of
    every cached mode equal TP=1's uncached ones, on both ranks, and with the fp8 cache TP=1's fp8 tokens."""
    from cosmos_util import run_ranks
    from harness.cosmos import pretrained

    pretrained.write_tiny_pretrained(tmp_path / "ckpt", PRESETS["tiny-v2w"], seed=9)
    prompt, context = _v2w_inputs(2, 5)
    new = 24
    one = _v2w_tp_tokens(str(tmp_path / "ckpt"), prompt, context, new, 1)
    assert torch.equal(one["eager"], one["none"]) and torch.equal(one["device"], one["none"])
    assert torch.equal(one["fp8-device"], one["fp8-eager"])
    two = run_ranks(_v2w_tp_tokens, (str(tmp_path / "ckpt"), prompt, context, new, 2), 2, tmp_path)
    for rank in two:
        for mode, tokens in rank.items():
            assert torch.equal(tokens, one["fp8-eager" if mode.startswith("fp8") else "none"]), mode
