"""How many sequences a generation takes at once, and how its prompt is split: the static KV cache's size per
sequence, the prefill's chunks of positions, and the auto batch (`infer.batch_size = 0`) that both bound."""

from __future__ import annotations

from typing import Any

import torch

from harness.core.models import kv_bytes

BLOCK = 128
"""Key block of the decode attention (flex attention's kernel block): buffers hold a whole number of blocks."""
PREFILL_TOKENS = 65_536
"""Tokens (batch x prompt positions) of one prefill forward. Whole prompts at once made the prefill's
activations the peak of a large batch: on the H200, Cosmos-4B whole videos (5,120 prompt positions) at batch 64
peaked at 133.8 GiB, 72 GiB of it beside the weights and the 54 GiB KV cache. In chunks they are bounded by this
count, whatever the batch."""


def prefill_chunk(batch: int, prompt_len: int) -> int:
    """Prompt positions one prefill forward takes: `PREFILL_TOKENS` tokens over the batch (at least one position)."""
    return max(1, min(prompt_len, PREFILL_TOKENS // batch))


def kv_bytes_per_sequence(model: Any, positions: int, *, fp8: bool = False) -> int:
    """This rank's static KV cache for one sequence: keys and values of every layer over whole key blocks."""
    c = model.config
    local_groups = c.num_query_groups // c.tensor_model_parallel_size
    elem = torch.finfo(c.params_dtype).bits // 8
    per_position = kv_bytes(len(model.decoder.layers), local_groups, c.kv_channels, elem, fp8=fp8)
    return per_position * (-(-positions // BLOCK) * BLOCK)


def max_batch(model: Any, positions: int, prompt_len: int, free_bytes: int, *, margin: float = 0.8,
              limit: int = 256, fp8: bool = False) -> int:
    """The largest batch whose KV cache and prefill activations fit in `free_bytes` (after the weights are
    loaded). Prefill is the peak besides the cache: per token of one prefill forward (`prefill_chunk`) the gated
    MLP's [2 x ffn] output, its [ffn] product and hidden-size buffers (the logits are the last position's only),
    counted as 4 x ffn + 8 x hidden elements. Unchunked, on the H200, Cosmos-4B whole videos at batch 64 peaked
    at 133.8 GiB, i.e. ~1.1 GiB of prefill a sequence beside its 0.84 GiB of cache
    (results/bench/h200/generate-whole-video.json), which this count covers with `margin`. `limit` bounds what
    one graph capture is asked to hold. `fp8`: the cache of `infer.kv_cache = "fp8"`, whose prefill also holds
    one layer's keys and values of the prompt so far dequantized (what the prompt's chunks attend to)."""
    c = model.config
    elem = torch.finfo(c.params_dtype).bits // 8
    per_token = (4 * c.ffn_hidden_size // c.tensor_model_parallel_size + 8 * c.hidden_size) * elem
    kv = kv_bytes_per_sequence(model, positions, fp8=fp8)
    if fp8:
        kv += prompt_len * kv_bytes(1, c.num_query_groups // c.tensor_model_parallel_size, c.kv_channels, elem)
    budget = int(free_bytes * margin)
    b = max(1, min(limit, budget // (kv + prompt_len * per_token)))  # a chunk of whole prompts: b x prompt_len
    while b < limit and (b + 1) * kv + (b + 1) * prefill_chunk(b + 1, prompt_len) * per_token <= budget:
        b += 1
    return b
