"""Autoregressive token generation on the harness' Cosmos model (`CosmosModel.forward` with a KV cache): the
prompt prefilled in chunks, then one token a step, eagerly or as a compiled step captured in a CUDA graph over
the static cache (`harness.cosmos.kvcache`).

Sampling (`harness.cosmos.sampling`, re-exported here): seeded, identical on every tensor-parallel rank.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import torch

from harness.cosmos.batching import prefill_chunk
from harness.cosmos.kvcache import StaticKVCache, takes  # StaticKVCache re-exported: callers import it here
from harness.cosmos.sampling import Sampling, make_generator, sample  # re-exported: callers import them here

COMPILE_MODE: str | None = "max-autotune-no-cudagraphs"
"""`torch.compile`'s mode for the decode step (the step is captured in a CUDA graph here, so not Inductor's own
graphs). Autotuning picks Triton GEMV kernels with the preceding RMSNorm fused in, over cuBLAS's split-K GEMVs:
Cosmos-4B on one H100, graph path, against Inductor's default mode in the same session: batch 1 320 against 294
tokens/s, batch 8 1,839 against 1,797, whole 5x40x64 videos at batch 58 3,692 against 3,316 (a day before); it
costs ~40 s more compilation per batch size. `harness bench generate --compile-mode default` times the default."""

class _DecodeGraph:
    """One decode step (embed -> all layers -> logits -> sample) captured as a CUDA graph for one batch shape;
    replayed per token, it removes megatron-core's per-module Python and launch overhead (~1000 launches).
    The step runs through `torch.compile` first (Inductor fuses the norms, RoPE, SwiGLU and residual adds, and
    turns the flex attention into a flash-decoding kernel; flex's eager reference implementation cannot be
    captured), then is captured. H200, Cosmos-4B, batch 1: 5.3 ms/step with SDPA uncompiled, 2.7 compiled."""

    def __init__(self, model: Any, cache: StaticKVCache, b: int, sampling: Sampling, device: torch.device) -> None:
        self.model, self.cache, self.sampling = model, cache, sampling
        self.fn = _compiled(model)
        self.tok = torch.zeros((b, 1), dtype=torch.int64, device=device)
        self.gen = make_generator(device, sampling.seed)
        self.graph = torch.cuda.CUDAGraph()
        if sampling.temperature != 0:
            self.graph.register_generator_state(self.gen)
        pos = cache.pos
        assert pos is not None  # the cache is in device-position mode here
        start = int(pos)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up off the capture (TorchScript profiling runs, allocator, cuBLAS)
            for _ in range(3):
                pos.fill_(start)
                self._step()
        torch.cuda.current_stream(device).wait_stream(side)
        pos.fill_(start)
        with torch.cuda.graph(self.graph):
            self._step()
        pos.fill_(start)

    def replay(self, out: torch.Tensor) -> None:
        """Fill out[:, 1:] given out[:, 0] (two launches per token: the graph and a 2-byte copy)."""
        assert self.cache.pos is not None  # captured in device-position mode
        n0 = int(self.cache.pos)
        self.tok.copy_(out[:, :1])
        for i in range(1, out.shape[1]):
            self.graph.replay()
            out[:, i:i + 1].copy_(self.tok)
        self.cache.to_host_position(n0 + out.shape[1] - 1)

    def _step(self) -> None:
        self.cache.begin(1)
        logits = self.fn(self.tok, kv_cache=self.cache)[:, -1]
        self.tok.copy_(sample(logits, self.sampling, self.gen)[:, None])
        self.cache.advance(1)


def _compiled(model: Any) -> Any:
    """One compiled wrapper per model (shapes are static per batch size: one compilation each). Each cache's
    block mask closes over its own position tensor, so every cache and batch size is a recompilation of the
    same code; past dynamo's default limit (8) it would silently run the step eagerly, whose flex attention
    cannot be captured in a CUDA graph (seen on the H200 after 4B b1, b8 and tiny b1, b4 in one process)."""
    import torch._dynamo  # noqa: PLC0415

    conf = torch._dynamo.config
    name = "recompile_limit" if hasattr(conf, "recompile_limit") else "cache_size_limit"
    setattr(conf, name, max(getattr(conf, name), 256))
    fn = getattr(model, "_harness_compiled", None)
    if fn is None:
        fn = torch.compile(model, dynamic=False, mode=COMPILE_MODE)
        object.__setattr__(model, "_harness_compiled", fn)
    return fn


def flex_available() -> bool:
    """torch >= 2.5: flex attention with GQA and block masks built from key-block counts."""
    try:
        from torch.nn.attention.flex_attention import BlockMask, flex_attention  # noqa: PLC0415
    except ImportError:
        return False
    return hasattr(BlockMask, "from_kv_blocks") and takes(flex_attention, "enable_gqa")


def graph_supported(device: torch.device) -> bool:
    """CUDA and a torch with flex attention (the cache's decode kernel). Video2World too: the graph reads its
    context's cross-attention keys/values from the prefill's buffers and gathers its abs positions with the
    device position. Tensor parallelism is fine: the step's NCCL all-reduces and the
    logits all-gather are captured with it (2 x H200, Cosmos-4B at TP=2: 441 tokens/s at batch 1, fp32 greedy
    tokens equal TP=1's in every mode; results/bench/h200x2/generate-tp2.json)."""
    return (device.type == "cuda"
            and hasattr(torch.cuda.CUDAGraph, "register_generator_state") and flex_available())


@dataclass
class GenStats:
    prefill_s: float = 0.0
    decode_s: float = 0.0
    new_tokens: int = 0
    batch: int = 0

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens (all sequences of the batch) per second of decoding."""
        return self.new_tokens * self.batch / self.decode_s if self.decode_s else 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def generate(model: Any, prompt: torch.Tensor, new_tokens: int, sampling: Sampling, *, use_cache: bool = True,
             cache: StaticKVCache | None = None, context: torch.Tensor | None = None,
             stats: GenStats | None = None, mode: str = "auto") -> torch.Tensor:
    """Continue `prompt` [b, n0] (int64) by `new_tokens` tokens; returns them [b, new_tokens].

    With `use_cache=False` every step re-runs the whole sequence (the reference the cache is tested against).
    Video2World passes `context` (T5 embeddings, all rows, no mask); the prompt then starts with BOV. With the
    cache, its cross-attention keys/values are computed once, by the prefill (`cache.cross`).
    `mode` (cached decoding): "eager" (host positions), "device" (device positions over fixed-length buffers,
    eager), "graph" (device positions, each step a compiled then captured CUDA graph), "auto" = graph where
    `graph_supported`, else eager. The prompt is always prefilled eagerly."""
    device = prompt.device
    b, n0 = prompt.shape
    if mode == "auto":
        mode = "graph" if use_cache and graph_supported(device) else "eager"
    if use_cache:
        cache = cache or StaticKVCache(len(model.decoder.layers), n0 + new_tokens)
        cache.reset()
    else:
        cache = None
    gen = make_generator(device, sampling.seed)
    out = torch.empty((b, new_tokens), dtype=torch.int64, device=device)
    with _context_bound(model, cache, context):
        t0 = time.perf_counter()
        out[:, 0] = sample(_prefill(model, prompt, cache, context), sampling, gen)
        if cache is not None and mode == "graph" and new_tokens > 1:
            dg = _decode_graph(model, cache, out.shape[0], sampling, device)
            _sync(device)
            t1 = time.perf_counter()  # capture (first call per shape) is counted as prefill
            dg.replay(out)
        else:
            _sync(device)
            t1 = time.perf_counter()
            _decode_eager(model, prompt, out, sampling, gen, cache, mode == "device", context)
    _sync(device)
    if stats is not None:
        stats.prefill_s, stats.decode_s = t1 - t0, time.perf_counter() - t1
        stats.new_tokens, stats.batch = max(0, new_tokens - 1), b
    return out


def _context_bound(model: Any, cache: StaticKVCache | None, context: torch.Tensor | None) -> Any:
    """Video2World with a cache: the cache's cross-attention store, bound to the model for this generation."""
    if cache is None or context is None:
        return contextlib.nullcontext()
    from harness.cosmos.video2world import CrossKVCache, cross_kv_bound  # noqa: PLC0415

    if cache.cross is None or len(cache.cross.layers) != len(model.decoder.layers):
        cache.cross = CrossKVCache(len(model.decoder.layers), cache.graphs.clear)
    return cross_kv_bound(model, cache.cross)


def _prefill(model: Any, prompt: torch.Tensor, cache: StaticKVCache | None, context: torch.Tensor | None
             ) -> torch.Tensor:
    """The last prompt position's logits [b, V]; fills the cache (and the cross-attention store). With a cache,
    the prompt goes in chunks of positions (`prefill_chunk`), each attending to the cache so far, so that the
    activations of one forward stay bounded whatever the batch."""
    extra = {} if context is None else {"context": context}
    if cache is None:
        return model(prompt, last_only=True, **extra)[:, -1]
    step = prefill_chunk(*prompt.shape)
    for i in range(0, prompt.shape[1], step):
        logits = model(prompt[:, i:i + step], kv_cache=cache, last_only=True, **extra)
        if cache.cross is not None and context is not None:
            cache.cross.ready = True  # the context's keys/values are kept: later chunks read them
    return logits[:, -1]


def _decode_eager(model: Any, prompt: torch.Tensor, out: torch.Tensor, sampling: Sampling, gen: torch.Generator,
                  cache: StaticKVCache | None, on_device: bool, context: torch.Tensor | None) -> None:
    """Fill out[:, 1:] step by step: cached (host or device positions), or re-running the whole sequence."""
    extra = {} if context is None else {"context": context}
    n0, new_tokens = prompt.shape[1], out.shape[1]
    if cache is not None and on_device:
        cache.to_device_position(out.device)
    for i in range(1, new_tokens):
        if cache is None:
            logits = model(torch.cat([prompt, out[:, :i]], dim=1), last_only=True, **extra)[:, -1]
        elif on_device:
            cache.begin(1)
            logits = model(out[:, i - 1:i], kv_cache=cache, **extra)[:, -1]
            cache.advance(1)
        else:
            logits = model(out[:, i - 1:i], kv_cache=cache, **extra)[:, -1]
        out[:, i] = sample(logits, sampling, gen)
    if cache is not None and on_device:
        cache.to_host_position(n0 + new_tokens - 1)


def _decode_graph(model: Any, cache: StaticKVCache, b: int, sampling: Sampling, device: torch.device
                  ) -> _DecodeGraph:
    """The cache's graph for this batch shape and sampling, captured on first use, positioned after the prefill.
    Its generator is re-seeded per call: sampled graph runs are reproducible per seed (their draws differ from
    the eager path's, which consumed the same stream in another order)."""
    cache.to_device_position(device)
    key = (id(model), b, sampling.temperature, sampling.top_p)
    dg = cache.graphs.get(key)
    if dg is None:
        dg = cache.graphs[key] = _DecodeGraph(model, cache, b, sampling, device)
    dg.gen.manual_seed(sampling.seed + 1)
    return dg
