"""Video2World additions to the Cosmos model: cross-attention to the T5 prompt embeddings (GQA, q/k RMSNorm,
key/value input of `crossattn_dim`), Cosmos' absolute sin-cos position embedding added to every layer's input,
the 64,064-row input vocabulary (BOV/PAD ids above the 64,000 codes) and a 64,000-way output layer. Parameter
names follow NeMo's Cosmos Video2World checkpoints (`cross_attention.linear_q/linear_kv/linear_proj`,
`cross_attention.q_layernorm/k_layernorm`, `pre_cross_attn_layernorm`)."""

from __future__ import annotations

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
        if key_value_states is None:
            raise ValueError("Video2World cross-attention needs the prompt embedding (context=...)")
        kv, _ = self.linear_kv(key_value_states)
        kv = kv.view(*kv.shape[:-1], self.num_query_groups_per_partition, 2 * self.hidden_size_per_attention_head)
        key, value = tensor_parallel.split_tensor_along_last_dim(kv, 2)
        query, _ = self.linear_q(hidden_states)
        query = query.view(*query.shape[:-1], self.num_attention_heads_per_partition,
                           self.hidden_size_per_attention_head)
        return self.q_layernorm(query), self.k_layernorm(key.contiguous()), value.contiguous()


def cross_attention_spec(core_attention: type, norm: type, crossattn_dim: int = 1024) -> ModuleSpec:
    return ModuleSpec(module=CosmosCrossAttention,
                      params={"attn_mask_type": AttnMaskType.no_mask, "crossattn_dim": crossattn_dim},
                      submodules=CrossAttentionNormSubmodules(linear_q=TPLinear, linear_kv=TPLinear,
                                                              core_attention=core_attention, linear_proj=TPRowLinear,
                                                              q_layernorm=norm, k_layernorm=norm))


def setup_video2world(model: Any, config: TransformerConfig, preset: ModelPreset, grid: Grid, seq_len: int) -> None:
    """Output layer of `output_vocab_size` rows (the input embedding keeps `vocab_size`) and the abs-position table."""
    model.output_layer = tensor_parallel.ColumnParallelLinear(
        config.hidden_size, preset.output_vocab_size, config=config, init_method=config.init_method, bias=False,
        skip_bias_add=False, gather_output=False)
    model.register_buffer("abs_pos", abs_sincos(grid, config.hidden_size, bov=True, length=seq_len),
                          persistent=False)


def prepare_context(model: Any, hidden: torch.Tensor, start: int, n: int,
                    context: torch.Tensor | None) -> dict[str, Any]:
    """Bind the abs positions of [start, start+n) to every layer; context [b, L, c] -> mcore's [L, b, c].
    The cross-attention attends to all L rows, zero (padding) rows included: no mask, as upstream trains and
    generates (`harness.cosmos.data.context_batch` cites the lines)."""
    if context is None:
        raise ValueError("a Video2World model needs context=[batch, prompt_len, crossattn_dim]")
    if start + n > model.abs_pos.shape[0]:
        raise ValueError(f"positions {start}..{start + n} exceed the {model.abs_pos.shape[0]} of grid {model.grid}")
    pos = model.abs_pos[start:start + n].to(hidden.device)[:, None, :]
    if model.config.sequence_parallel:  # this rank's slice of the tokens, as the embedding scattered them
        pos = pos.chunk(parallel_state.get_tensor_model_parallel_world_size())[
            parallel_state.get_tensor_model_parallel_rank()]
    for layer in model.decoder.layers:
        layer.abs_pos = pos
    return {"context": context.to(hidden.dtype).transpose(0, 1).contiguous()}
