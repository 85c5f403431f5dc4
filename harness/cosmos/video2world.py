"""Video2World additions to the Cosmos model: cross-attention to the T5 prompt embeddings (GQA, q/k RMSNorm,
key/value input of `crossattn_dim`), Cosmos' absolute sin-cos position embedding added to every layer's input,
the 64,064-row input vocabulary (BOV/PAD ids above the 64,000 codes) and a 64,000-way output layer. Parameter
names follow NeMo's Cosmos Video2World checkpoints (`cross_attention.linear_q/linear_kv/linear_proj`,
`cross_attention.q_layernorm/k_layernorm`, `pre_cross_attn_layernorm`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.transformer.attention import Attention, CrossAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.transformer_config import TransformerConfig

from harness.core.models import ModelPreset
from harness.core.tokens import Grid
from harness.cosmos.layers import TPLinear, TPRowLinear
from harness.cosmos.rope3d import abs_sincos


@dataclass
class CrossAttentionNormSubmodules(CrossAttentionSubmodules):
    q_layernorm: Any = None
    k_layernorm: Any = None


class CosmosCrossAttention(Attention):
    """Queries from the video stream, keys/values from the prompt embedding ([L, b, crossattn_dim])."""

    cross_kv: "CrossLayerKV | None" = None
    """Bound by `cross_kv_bound` while a generation runs: its keys/values, once the prefill has filled it."""

    def __init__(self, config: TransformerConfig, submodules: CrossAttentionNormSubmodules, layer_number: int,
                 attn_mask_type: AttnMaskType = AttnMaskType.no_mask, crossattn_dim: int = 1024, **kw: Any) -> None:
        super().__init__(config=config, submodules=submodules, layer_number=layer_number,
                         attn_mask_type=attn_mask_type, attention_type="cross", **kw)
        common = dict(config=self.config, init_method=self.config.init_method, gather_output=False,
                      bias=False, skip_bias_add=False, is_expert=False)
        self.linear_q = build_module(submodules.linear_q, self.config.hidden_size, self.query_projection_size,
                                     **common)
        self.linear_kv = build_module(submodules.linear_kv, crossattn_dim, 2 * self.kv_projection_size, **common)
        self.linear_kv.sequence_parallel = False  # the prompt is whole on every rank: nothing to all-gather
        d = self.hidden_size_per_attention_head
        self.q_layernorm = build_module(submodules.q_layernorm, config=self.config, hidden_size=d,
                                        eps=self.config.layernorm_epsilon)
        self.k_layernorm = build_module(submodules.k_layernorm, config=self.config, hidden_size=d,
                                        eps=self.config.layernorm_epsilon)

    def get_query_key_value_tensors(self, hidden_states: torch.Tensor, key_value_states: torch.Tensor | None,
                                    *a: Any, **kw: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        slot = self.cross_kv
        if slot is not None and slot.ready and slot.k is not None and slot.v is not None:
            key, value = slot.k, slot.v  # a decode step: the context's keys/values are the prefill's
        else:
            key, value = self._key_value(key_value_states)
            if slot is not None:
                slot.keep(key, value)
        query, _ = self.linear_q(hidden_states)
        query = query.view(*query.shape[:-1], self.num_attention_heads_per_partition,
                           self.hidden_size_per_attention_head)
        return self.q_layernorm(query), key, value

    def _key_value(self, key_value_states: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if key_value_states is None:
            raise ValueError("Video2World cross-attention needs the prompt embedding (context=...)")
        kv, _ = self.linear_kv(key_value_states)
        kv = kv.view(*kv.shape[:-1], self.num_query_groups_per_partition, 2 * self.hidden_size_per_attention_head)
        key, value = tensor_parallel.split_tensor_along_last_dim(kv, 2)
        return self.k_layernorm(key.contiguous()), value.contiguous()


def _keep(buf: torch.Tensor | None, t: torch.Tensor, on_realloc: Callable[[], None]) -> torch.Tensor:
    """`t` in `buf` (same address across generations of one shape); a new buffer calls `on_realloc`."""
    if buf is not None and buf.shape == t.shape and buf.dtype == t.dtype and buf.device == t.device:
        return buf.copy_(t)
    on_realloc()
    return t


class CrossLayerKV:
    """One layer's cross-attention keys/values [L, b, groups, d] (this TP rank's groups) of one generation."""

    def __init__(self, owner: "CrossKVCache") -> None:
        self.owner = owner
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    @property
    def ready(self) -> bool:
        return self.owner.ready

    def keep(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Stored heads-major ([b, groups, L, d] in memory, seen as [L, b, groups, d]): the attention's permute
        then hands its kernel contiguous keys/values, so a decode step copies none of them."""
        self.k = _keep(self.k, _heads_major(k), self.owner.on_realloc)
        self.v = _keep(self.v, _heads_major(v), self.owner.on_realloc)


def _heads_major(t: torch.Tensor) -> torch.Tensor:
    return t.permute(1, 2, 0, 3).contiguous().permute(2, 0, 1, 3)


class CrossKVCache:
    """The T5 context of one generation and every layer's cross-attention keys/values over it. They do not
    change across decode steps, so the prefill computes them once (`ready` is then set) and each step projects
    only its query: per step and layer that saves the [L, b, crossattn_dim] x [crossattn_dim, 2 x kv] projection
    and the k-norm. The buffers keep their addresses across generations of one shape, so a CUDA graph captured
    over them stays valid; `on_realloc` (the owner's graph cache clear) runs when a shape changes."""

    def __init__(self, num_layers: int, on_realloc: Callable[[], None]) -> None:
        self.on_realloc = on_realloc
        self.layers = [CrossLayerKV(self) for _ in range(num_layers)]
        self.states: torch.Tensor | None = None
        """The context in mcore's layout [L, b, c], the model's dtype: what every layer's cross-attention reads."""
        self.ready = False

    def keep_states(self, states: torch.Tensor) -> torch.Tensor:
        self.states = _keep(self.states, states, self.on_realloc)
        return self.states


@contextmanager
def cross_kv_bound(model: Any, cache: CrossKVCache) -> Iterator[None]:
    """Hand the cache to the model's cross-attentions for one generation (not ready until its prefill is done),
    and take it back afterwards, so that no later forward (training, an uncached generation) reads it."""
    layers = [layer.cross_attention for layer in model.decoder.layers]
    if len(layers) != len(cache.layers):
        raise ValueError(f"a cross-attention cache of {len(cache.layers)} layers for a model of {len(layers)}")
    cache.ready = False
    for attn, slot in zip(layers, cache.layers):
        attn.cross_kv = slot
    model.cross_kv = cache
    try:
        yield
    finally:
        model.cross_kv = None
        for attn in layers:
            attn.cross_kv = None


def cross_attention_spec(core_attention: type, norm: type, crossattn_dim: int = 1024) -> ModuleSpec:
    return ModuleSpec(module=CosmosCrossAttention,
                      params={"attn_mask_type": AttnMaskType.no_mask, "crossattn_dim": crossattn_dim},
                      submodules=CrossAttentionNormSubmodules(linear_q=TPLinear, linear_kv=TPLinear,
                                                              core_attention=core_attention, linear_proj=TPRowLinear,
                                                              q_layernorm=norm, k_layernorm=norm))


def abs_position_table(grid: Grid, hidden: int, length: int) -> torch.Tensor:
    """The abs-position table [length, hidden] (float32) holding the bf16 values upstream adds: upstream builds
    its sin-cos tables in float64 and stores them in bf16 (NVIDIA/Cosmos archived-ces2025,
    cosmos1/models/autoregressive/modules/embedding.py, `SinCosPosEmbAxisTE`, dtype default bfloat16), so an
    fp32 run must see the bf16-rounded values too (the unrounded ones differ by ~5e-4 relative in the hidden
    states and can flip greedy near-ties). torch rounds float64 to bf16 through float32, as done here."""
    return abs_sincos(grid, hidden, bov=True, length=length).to(torch.bfloat16).to(torch.float32)


def setup_video2world(model: Any, config: TransformerConfig, preset: ModelPreset, grid: Grid, seq_len: int) -> None:
    """Output layer of `output_vocab_size` rows (the input embedding keeps `vocab_size`) and the abs-position table."""
    model.output_layer = tensor_parallel.ColumnParallelLinear(
        config.hidden_size, preset.output_vocab_size, config=config, init_method=config.init_method, bias=False,
        skip_bias_add=False, gather_output=False)
    model.register_buffer("abs_pos", abs_position_table(grid, config.hidden_size, seq_len), persistent=False)
    model.cross_kv = None


def _abs_positions(model: Any, start: int | torch.Tensor, n: int) -> torch.Tensor:
    """Rows [start, start+n) of the table. A 0-dim device `start` (a decode step captured in a CUDA graph) is
    gathered on the device, unchecked (a range check would sync with the host)."""
    table = model.abs_pos
    if isinstance(start, torch.Tensor):
        return table.index_select(0, start.reshape(1).to(table.device) + torch.arange(n, device=table.device))
    if start + n > table.shape[0]:
        raise ValueError(f"positions {start}..{start + n} exceed the {table.shape[0]} of grid {model.grid}")
    return table[start:start + n]


def prepare_context(model: Any, hidden: torch.Tensor, start: int | torch.Tensor, n: int,
                    context: torch.Tensor | None) -> dict[str, Any]:
    """Bind the abs positions of [start, start+n) to every layer; context [b, L, c] -> mcore's [L, b, c].
    The cross-attention attends to all L rows, zero (padding) rows included: no mask, as upstream trains and
    generates (`harness.cosmos.data.context_batch` cites the lines). In a generation with a `CrossKVCache`
    bound, the prefill keeps the converted context and the layers' keys/values; its decode steps read those
    (`context` is then not needed)."""
    cross: CrossKVCache | None = getattr(model, "cross_kv", None)
    if cross is not None and cross.ready:
        states = cross.states
    elif context is None:
        raise ValueError("a Video2World model needs context=[batch, prompt_len, crossattn_dim]")
    else:
        states = context.to(hidden.dtype).transpose(0, 1).contiguous()
        if cross is not None:
            states = cross.keep_states(states)
    pos = _abs_positions(model, start, n).to(hidden.device)[:, None, :]
    if model.config.sequence_parallel:  # this rank's slice of the tokens, as the embedding scattered them
        pos = pos.chunk(parallel_state.get_tensor_model_parallel_world_size())[
            parallel_state.get_tensor_model_parallel_rank()]
    for layer in model.decoder.layers:
        layer.abs_pos = pos
    return {"context": states}
