"""Writing a Cosmos NeMo 2 checkpoint (the HF repo's `nemo/` folder) key by key in NeMo's layout rather than
through the harness' own save path: tiny stand-ins of a pretrained checkpoint, so loading them tests compatibility,
and `harness export --format nemo`, so an export is exactly what that loading is tested on:

- `weights/` (or, `flat`, the folder itself: NeMo loads both): an mcore `torch_dist` checkpoint; keys
  `module.<mcore GPTModel key>` with Transformer-Engine names (`linear_qkv.layer_norm_weight`,
  `linear_fc1.layer_norm_weight`), layers stacked on a leading axis (`module.decoder.layers.mlp.linear_fc1.weight`
  is [L, 2F, H], gate rows then up rows), bf16 values (an export: its `--dtype`), plus TE's per-layer
  `_extra_state` objects (as TE saves them without fp8 state); names and shapes from `harness.cosmos.layout`;
- `context/model.yaml`: the model config, as NeMo's io context records it (and, for an export,
  `context/harness.json`: the preset, grid and step it came from).
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping
from pathlib import Path

import torch
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor

from harness.core.atomic import atomic_write_json
from harness.core.models import (
    MODEL_PREFIX,
    UPSTREAM_CONFIGS,
    ModelPreset,
    checkpoint_shapes,
    global_shapes,
    layer_shapes,
)
from harness.cosmos import config as cfg
from harness.cosmos import parallel
from harness.cosmos.checkpoint import in_process_results_queue

_LINEARS_WITH_EXTRA = ("self_attention.linear_qkv", "self_attention.linear_proj", "mlp.linear_fc1", "mlp.linear_fc2")


def reference_state_dict(p: ModelPreset, seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic weights (bf16-representable float32), keyed like an unwrapped TP=1 mcore model."""
    g = torch.Generator().manual_seed(seed)

    def rnd(shape: tuple[int, ...], norm: bool) -> torch.Tensor:
        # scaled in place: the same values as `1.0 + 0.1 * randn` / `randn * scale`, without a temporary as large
        # as the tensor (a real-width stand-in is ~1e9 values: 10.6 -> 8.2 s)
        t = torch.randn(shape, generator=g)
        if norm:
            t.mul_(0.1).add_(1.0)
        else:
            t.mul_(1.0 / shape[-1] ** 0.5)
        return t.to(torch.bfloat16).float()

    sd = {k: rnd(shape, len(shape) == 1) for k, shape in global_shapes(p).items()}
    for i in range(p.num_layers):
        for name, shape in layer_shapes(p).items():
            sd[f"decoder.layers.{i}.{name}"] = rnd(shape, len(shape) == 1)
    return sd


def write_tiny_pretrained(out_dir: str | Path, preset: ModelPreset, seed: int = 0, *, layers: int | None = None,
                          zeros: bool = False, flat: bool = False) -> dict[str, torch.Tensor]:
    """Write a NeMo-2-layout checkpoint of `preset` with random weights to out_dir; returns the reference state
    dict (unwrapped TP=1 mcore keys) so tests can compare against a model given these weights directly.
    `layers`: fewer decoder layers than the preset (a real-width 12B stand-in of one layer); `zeros`: zero weights
    and no reference (shapes only, cheap at real width); `flat`: the weights directly in out_dir, not `weights/`."""
    if layers is not None:
        preset = dataclasses.replace(preset, num_layers=layers)
    ref: dict[str, torch.Tensor] = {} if zeros else reference_state_dict(preset, seed)
    write_nemo(out_dir, preset, ref, flat=flat)
    return ref


def write_nemo(out_dir: str | Path, preset: ModelPreset, sd: Mapping[str, torch.Tensor], *,
               dtype: torch.dtype = torch.bfloat16, flat: bool = False,
               harness_context: Mapping[str, object] | None = None) -> None:
    """Whole (TP=1) tensors `sd` (unwrapped mcore keys, one per layer; empty: zeros) as a NeMo 2 checkpoint of
    `preset` (its `num_layers` layers) in `dtype`: the stand-in writer and `harness export --format nemo` share
    it, so what the export writes is what the pretrained loader is tested to read. `harness_context`: also
    written as `context/harness.json` (the preset the checkpoint names, read before `model.yaml`)."""
    out = Path(out_dir)
    if not torch.distributed.is_initialized():
        parallel.init(1)
    state = _sharded_state(preset, sd, dtype)
    wdir = out if flat else out / "weights"
    if torch.distributed.get_rank() == 0:
        wdir.mkdir(parents=True, exist_ok=True)
    torch.distributed.barrier()
    in_process_results_queue()
    dist_checkpointing.save({"state_dict": state}, str(wdir))
    if torch.distributed.get_rank() == 0:
        _write_context(out / "context", preset)
        if harness_context is not None:
            atomic_write_json(out / "context" / "harness.json", dict(harness_context))
    torch.distributed.barrier()


def te_extra_state() -> io.BytesIO:
    """What Transformer Engine stores as a linear's `_extra_state` when it holds no fp8 scaling state (a
    `torch.save(None)` buffer; TE's `set_extra_state` returns early on None): the object a NeMo model built with
    TE asks the checkpoint for. The harness' own linears have none and never read it."""
    buf = io.BytesIO()
    torch.save(None, buf)
    buf.seek(0)
    return buf


def _sharded_state(preset: ModelPreset, ref: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, object]:
    """Whole (TP=1) tensors in `dtype` under NeMo's keys, layers stacked; zeros where `ref` is empty."""
    L = preset.num_layers

    def value(key: str, shape: tuple[int, ...]) -> torch.Tensor:
        if not ref:
            return torch.zeros(shape, dtype=dtype)
        if key.startswith("decoder.layers."):
            name = key.removeprefix("decoder.layers.")
            # each layer cast before stacking: no stacked copy in the source dtype (fp32, twice bf16's bytes)
            return torch.stack([ref[f"decoder.layers.{i}.{name}"].to(dtype) for i in range(L)])
        return ref[key].to(dtype)

    state: dict[str, object] = {}
    for key, shape in checkpoint_shapes(preset).items():
        state[key] = ShardedTensor.from_rank_offsets(key, value(key.removeprefix(MODEL_PREFIX), shape))
    for lin in _LINEARS_WITH_EXTRA:
        for i in range(L):
            key = f"module.decoder.layers.{lin}._extra_state"
            state[f"{key}.{i}"] = ShardedObject(key, te_extra_state(), (L,), (i,), replica_id=0)
    return state


def _write_context(ctx: Path, p: ModelPreset) -> None:
    ctx.mkdir(parents=True, exist_ok=True)
    fields = dict(num_layers=p.num_layers, hidden_size=p.hidden_size, ffn_hidden_size=p.ffn_hidden_size,
                  num_attention_heads=p.num_attention_heads, num_query_groups=p.num_query_groups,
                  kv_channels=cfg.head_dim(p), vocab_size=p.vocab_size, seq_length=p.seq_length,
                  rotary_base=p.rotary_base, qk_layernorm=True, normalization="RMSNorm")
    upstream = {v: k for k, v in UPSTREAM_CONFIGS.items()}.get(p.name, "CosmosConfig")
    module = "cosmos_video2world" if p.video2world else "cosmos"
    lines = ["_target_: nemo.collections.llm.gpt.model.base.GPTModel", "config:",
             f"  _target_: cosmos1.models.autoregressive.nemo.{module}.{upstream}"]
    lines += [f"  {k}: {v}" for k, v in fields.items()]
    (ctx / "model.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
