"""A tiny stand-in for a pretrained Cosmos NeMo 2 checkpoint (the HF repo's `nemo/` folder), built key by key in
NeMo's layout rather than through the harness' own save path, so loading it tests compatibility:

- `weights/`: an mcore `torch_dist` checkpoint; keys `module.<mcore GPTModel key>` with Transformer-Engine names
  (`linear_qkv.layer_norm_weight`, `linear_fc1.layer_norm_weight`), layers stacked on a leading axis
  (`module.decoder.layers.mlp.linear_fc1.weight` is [L, 2F, H], gate rows then up rows), bf16 values, plus TE's
  per-layer `_extra_state` objects;
- `context/model.yaml`: the model config, as NeMo's io context records it.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor

from harness.cosmos import config as cfg, parallel
from harness.models import ModelPreset

_LINEARS_WITH_EXTRA = ("self_attention.linear_qkv", "self_attention.linear_proj", "mlp.linear_fc1", "mlp.linear_fc2")


def layer_shapes(p: ModelPreset) -> dict[str, tuple[int, ...]]:
    """Per-layer weights (global, TP=1 shapes) of one Cosmos decoder layer, mcore names."""
    h, d, f = p.hidden_size, cfg.head_dim(p), p.ffn_hidden_size
    q, kv = p.num_attention_heads * d, p.num_query_groups * d
    out = {
        "self_attention.linear_qkv.weight": (q + 2 * kv, h),
        "self_attention.linear_qkv.layer_norm_weight": (h,),
        "self_attention.q_layernorm.weight": (d,),
        "self_attention.k_layernorm.weight": (d,),
        "self_attention.linear_proj.weight": (h, q),
        "mlp.linear_fc1.weight": (2 * f, h),
        "mlp.linear_fc1.layer_norm_weight": (h,),
        "mlp.linear_fc2.weight": (h, f),
    }
    if p.video2world:
        out.update({
            "pre_cross_attn_layernorm.weight": (h,),
            "cross_attention.linear_q.weight": (q, h),
            "cross_attention.linear_kv.weight": (2 * kv, p.crossattn_dim),
            "cross_attention.q_layernorm.weight": (d,),
            "cross_attention.k_layernorm.weight": (d,),
            "cross_attention.linear_proj.weight": (h, q),
        })
    return out


def reference_state_dict(p: ModelPreset, seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic weights (bf16-representable float32), keyed like an unwrapped TP=1 mcore model."""
    g = torch.Generator().manual_seed(seed)

    def rnd(shape: tuple[int, ...], norm: bool) -> torch.Tensor:
        if norm:
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            t = torch.randn(shape, generator=g) * (1.0 / shape[-1] ** 0.5)
        return t.to(torch.bfloat16).float()

    sd = {"embedding.word_embeddings.weight": rnd((p.vocab_size, p.hidden_size), False),
          "decoder.final_layernorm.weight": rnd((p.hidden_size,), True),
          "output_layer.weight": rnd((p.output_vocab_size, p.hidden_size), False)}
    for i in range(p.num_layers):
        for name, shape in layer_shapes(p).items():
            sd[f"decoder.layers.{i}.{name}"] = rnd(shape, len(shape) == 1)
    return sd


def write_tiny_pretrained(out_dir: str | Path, preset: ModelPreset, seed: int = 0) -> dict[str, torch.Tensor]:
    """Write a NeMo-2-layout checkpoint of `preset` with random weights to out_dir; returns the reference state
    dict (unwrapped TP=1 mcore keys) so tests can compare against a model given these weights directly."""
    out = Path(out_dir)
    if not torch.distributed.is_initialized():
        parallel.init(1)
    ref = reference_state_dict(preset, seed)
    L = preset.num_layers
    state: dict[str, object] = {}
    for key in ("embedding.word_embeddings.weight", "decoder.final_layernorm.weight", "output_layer.weight"):
        state[f"module.{key}"] = ShardedTensor.from_rank_offsets(f"module.{key}", ref[key].to(torch.bfloat16))
    for name in layer_shapes(preset):
        stacked = torch.stack([ref[f"decoder.layers.{i}.{name}"] for i in range(L)]).to(torch.bfloat16)
        key = f"module.decoder.layers.{name}"
        state[key] = ShardedTensor.from_rank_offsets(key, stacked)
    for lin in _LINEARS_WITH_EXTRA:
        for i in range(L):
            key = f"module.decoder.layers.{lin}._extra_state"
            state[f"{key}.{i}"] = ShardedObject(key, io.BytesIO(b"te-fp8-meta"), (L,), (i,), replica_id=0)
    if torch.distributed.get_rank() == 0:
        (out / "weights").mkdir(parents=True, exist_ok=True)
        _write_context(out / "context", preset)
    torch.distributed.barrier()
    dist_checkpointing.save({"state_dict": state}, str(out / "weights"))
    torch.distributed.barrier()
    return ref


def _write_context(ctx: Path, p: ModelPreset) -> None:
    ctx.mkdir(parents=True, exist_ok=True)
    fields = dict(num_layers=p.num_layers, hidden_size=p.hidden_size, ffn_hidden_size=p.ffn_hidden_size,
                  num_attention_heads=p.num_attention_heads, num_query_groups=p.num_query_groups,
                  kv_channels=cfg.head_dim(p), vocab_size=p.vocab_size, seq_length=p.seq_length,
                  rotary_base=p.rotary_base, qk_layernorm=True, normalization="RMSNorm")
    lines = ["_target_: nemo.collections.llm.gpt.model.base.GPTModel", "config:",
             "  _target_: cosmos1.models.autoregressive.nemo.cosmos.CosmosConfig"]
    lines += [f"  {k}: {v}" for k, v in fields.items()]
    (ctx / "model.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
