"""Autoregressive token generation on the harness' Cosmos model (`CosmosModel.forward` with a KV cache).

The model's own `LayerKV` grows its cache with `torch.cat`, which copies the whole cache every step (O(n^2)
memory traffic: the 21 tokens/s of the eager calibration). `StaticKVCache` duck-types the model's `KVCache`
(`layers[i].append(k, v)`, `length`) over buffers allocated once per batch shape and reused across batches,
so a decode step writes one position and reads views: no per-step allocation of cache memory.

Sampling: temperature (0 = greedy) and nucleus top-p in fp32, from a seeded torch.Generator, so a run's
outputs are reproducible; under tensor parallelism every rank sees the same gathered logits and the same
generator state, hence samples the same token without a broadcast.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    """0 = greedy (argmax)."""
    top_p: float = 1.0
    seed: int = 0


class StaticLayerKV:
    """One layer's keys/values [b, heads_kv, max_len, d]; `append` writes in place and returns views."""

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len
        self.k_buf: torch.Tensor | None = None
        self.v_buf: torch.Tensor | None = None
        self.n = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, h, s, d = k.shape
        if self.k_buf is None or self.k_buf.shape != (b, h, self.max_len, d) or self.k_buf.dtype != k.dtype \
                or self.k_buf.device != k.device:
            self.k_buf = torch.empty((b, h, self.max_len, d), dtype=k.dtype, device=k.device)
            self.v_buf = torch.empty_like(self.k_buf)
        assert self.v_buf is not None
        if self.n + s > self.max_len:
            raise ValueError(f"KV cache of {self.max_len} positions cannot take {self.n} + {s}")
        self.k_buf[:, :, self.n:self.n + s].copy_(k)
        self.v_buf[:, :, self.n:self.n + s].copy_(v)
        self.n += s
        return self.k_buf[:, :, :self.n], self.v_buf[:, :, :self.n]

    @property
    def k(self) -> torch.Tensor | None:
        return None if self.k_buf is None else self.k_buf[:, :, :self.n]


@dataclass
class StaticKVCache:
    """Drop-in for `harness.cosmos.model.KVCache`; `reset()` reuses the buffers for the next batch."""

    num_layers: int
    max_len: int
    layers: list[StaticLayerKV] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.layers = [StaticLayerKV(self.max_len) for _ in range(self.num_layers)]

    @property
    def length(self) -> int:
        return self.layers[0].n if self.layers else 0

    def reset(self) -> None:
        for layer in self.layers:
            layer.n = 0


def sample(logits: torch.Tensor, s: Sampling, generator: torch.Generator | None) -> torch.Tensor:
    """[b, V] logits -> [b] token ids. Draws with the exponential-race trick (argmax of p / Exp(1) is a
    sample of p): no normalisation, no multinomial, and the same kernels every step."""
    if s.temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / s.temperature, dim=-1)
    if s.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(dim=-1) - sorted_p >= s.top_p  # keep the smallest prefix whose mass reaches top_p
        drop[:, 0] = False
        race = sorted_p.masked_fill_(drop, 0.0) / torch.empty_like(sorted_p).exponential_(generator=generator)
        return order.gather(-1, race.argmax(dim=-1, keepdim=True)).squeeze(-1)
    return (probs / torch.empty_like(probs).exponential_(generator=generator)).argmax(dim=-1)


def make_generator(device: torch.device | str, seed: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


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
             context_mask: torch.Tensor | None = None, stats: GenStats | None = None) -> torch.Tensor:
    """Continue `prompt` [b, n0] (int64) by `new_tokens` tokens; returns them [b, new_tokens].

    With `use_cache=False` every step re-runs the whole sequence (the reference the cache is tested against).
    Video2World passes `context` (T5 embeddings) and `context_mask`; the prompt then starts with BOV."""
    device = prompt.device
    b, n0 = prompt.shape
    gen = make_generator(device, sampling.seed)
    extra: dict[str, Any] = {}
    if context is not None:
        extra = {"context": context, "context_mask": context_mask}
    out = torch.empty((b, new_tokens), dtype=torch.int64, device=device)
    t0 = time.perf_counter()
    if use_cache:
        cache = cache or StaticKVCache(len(model.decoder.layers), n0 + new_tokens)
        cache.reset()
        logits = model(prompt, kv_cache=cache, **extra)[:, -1]
    else:
        seq = prompt
        logits = model(seq, **extra)[:, -1]
    out[:, 0] = sample(logits, sampling, gen)
    _sync(device)
    t1 = time.perf_counter()
    for i in range(1, new_tokens):
        if use_cache:
            logits = model(out[:, i - 1:i], kv_cache=cache, **extra)[:, -1]
        else:
            seq = torch.cat([prompt, out[:, :i]], dim=1)
            logits = model(seq, **extra)[:, -1]
        out[:, i] = sample(logits, sampling, gen)
    _sync(device)
    if stats is not None:
        stats.prefill_s, stats.decode_s = t1 - t0, time.perf_counter() - t1
        stats.new_tokens, stats.batch = max(0, new_tokens - 1), b
    return out
