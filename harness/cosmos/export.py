"""A checkpoint's model weights as files that leave the harness (`harness export`).

Every harness checkpoint is a megatron-core torch_dist checkpoint with Adam state, sharded by tensor parallelism;
upstream's inference scripts cannot read one from the mcore engine (it has no NeMo io context) and nothing else
reads it at all. An export holds the weights only, whole (TP shards merged), in one of three formats:

- `pytorch`: `model.pt`, a state dict under upstream's plain-PyTorch names (`model.tok_embeddings.weight`,
  `model.layers.{i}.attention.wq.weight`, ...): the names and layouts upstream's PyTorch-to-NeMo importer reads
  (NVIDIA/Cosmos `cosmos1/models/autoregressive/nemo/cosmos.py`, `PTCosmosImporter.convert_state`, and
  `cosmos_video2world.py` for the cross-attention), so q/k/v are three tensors and the SwiGLU's gate (`w1`) and up
  (`w3`) projections two, split back out of megatron's fused, per-query-group interleaved `linear_qkv` and its
  `linear_fc1`; plus `config.json`;
- `safetensors`: the same tensors in `model.safetensors`, plus `config.json` (model shape and tokenizer);
- `nemo`: a NeMo 2 checkpoint folder (`weights/` torch_dist + `context/`), written by the same writer as the
  pretrained stand-ins the harness' loader is tested on (`harness.cosmos.pretrained.write_nemo`); `context/`
  carries NeMo's `io.json` from the NeMo checkpoint the weights were trained from (`carry_context`), which is
  what upstream's NeMo inference builds its model from.

The weights are read without building a model: each model tensor is loaded whole (its global shape, from the
checkpoint's metadata), which is how megatron-core's dist_checkpointing merges a checkpoint saved at any TP size;
optimizer state is never read. Host memory: about twice the model at the export dtype.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from megatron.core import dist_checkpointing
from torch.distributed.checkpoint.api import CheckpointException

from harness.core.atomic import file_mode, temp_prefix
from harness.core.errors import HarnessError
from harness.core.models import MODEL_PREFIX, PRESETS, ModelPreset, checkpoint_shapes
from harness.cosmos import config as cfg
from harness.cosmos import layout, parallel

Format = Literal["pytorch", "safetensors", "nemo"]
FORMATS: tuple[Format, ...] = ("pytorch", "safetensors", "nemo")
DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp32": torch.float32}
UPSTREAM_PREFIX = "model."
"""Upstream's AR model keeps its transformer as `self.model`; its `model.pt` keys carry this prefix, which the
importer's mapping spells and upstream's own loader strips (cosmos1/models/autoregressive/model.py)."""

_GLOBAL = {"embedding.word_embeddings.weight": "tok_embeddings.weight",
           "decoder.final_layernorm.weight": "norm.weight",
           "output_layer.weight": "output.weight"}
"""mcore name -> upstream name outside the layers (the importer's mapping read right to left)."""
_RENAMED = {"self_attention.linear_proj.weight": "attention.wo.weight",
            "self_attention.q_layernorm.weight": "attention.q_norm.weight",
            "self_attention.k_layernorm.weight": "attention.k_norm.weight",
            "self_attention.linear_qkv.layer_norm_weight": "attention_norm.weight",
            "mlp.linear_fc2.weight": "feed_forward.w2.weight",
            "mlp.linear_fc1.layer_norm_weight": "ffn_norm.weight",
            "pre_cross_attn_layernorm.weight": "cross_attention_norm.weight",
            "cross_attention.linear_q.weight": "cross_attention.wq.weight",
            "cross_attention.q_layernorm.weight": "cross_attention.q_norm.weight",
            "cross_attention.k_layernorm.weight": "cross_attention.k_norm.weight",
            "cross_attention.linear_proj.weight": "cross_attention.wo.weight"}
"""mcore name -> upstream name of one decoder layer's tensors that move unchanged."""


def _split_qkv(t: torch.Tensor, p: ModelPreset) -> tuple[torch.Tensor, ...]:
    """Inverse of the importer's q/k/v fusion: megatron's rows are, per query group, that group's query heads,
    then its key head, then its value head."""
    groups, d = p.num_query_groups, cfg.head_dim(p)
    per = p.num_attention_heads // groups
    g = t.reshape(groups, per + 2, d, t.shape[-1])
    return (g[:, :per].reshape(groups * per * d, -1), g[:, per].reshape(groups * d, -1),
            g[:, per + 1].reshape(groups * d, -1))


def _split_kv(t: torch.Tensor, p: ModelPreset) -> tuple[torch.Tensor, ...]:
    """Inverse of the importer's cross-attention k/v fusion: per query group its key head, then its value head."""
    groups, d = p.num_query_groups, cfg.head_dim(p)
    g = t.reshape(groups, 2, d, t.shape[-1])
    return g[:, 0].reshape(groups * d, -1), g[:, 1].reshape(groups * d, -1)


def _split_fc1(t: torch.Tensor, p: ModelPreset) -> tuple[torch.Tensor, ...]:
    """Inverse of the importer's `cat((w1, w3))`: gate rows, then up rows."""
    return t[:p.ffn_hidden_size], t[p.ffn_hidden_size:]


_SPLIT: dict[str, tuple[tuple[str, ...], Callable[[torch.Tensor, ModelPreset], tuple[torch.Tensor, ...]]]] = {
    "self_attention.linear_qkv.weight": (("attention.wq.weight", "attention.wk.weight", "attention.wv.weight"),
                                         _split_qkv),
    "mlp.linear_fc1.weight": (("feed_forward.w1.weight", "feed_forward.w3.weight"), _split_fc1),
    "cross_attention.linear_kv.weight": (("cross_attention.wk.weight", "cross_attention.wv.weight"), _split_kv),
}


def to_upstream(sd: Mapping[str, torch.Tensor], p: ModelPreset) -> dict[str, torch.Tensor]:
    """Unwrapped TP=1 mcore tensors (one key per layer, as `CosmosModel.state_dict()` names them) -> upstream's
    plain-PyTorch state dict. Every model tensor is used exactly once; one the table does not know is an error,
    never silently left out of the export. Values may be views of `sd`'s tensors."""
    rest = {k: v for k, v in sd.items() if not k.endswith("_extra_state")}
    out = {UPSTREAM_PREFIX + up: rest.pop(mc) for mc, up in _GLOBAL.items()}
    for i in range(p.num_layers):
        src, dst = f"decoder.layers.{i}.", f"{UPSTREAM_PREFIX}layers.{i}."
        for name in list(rest):
            if not name.startswith(src):
                continue
            local = name.removeprefix(src)
            if local in _RENAMED:
                out[dst + _RENAMED[local]] = rest.pop(name)
            elif local in _SPLIT:
                names, split = _SPLIT[local]
                out.update(zip((dst + n for n in names), split(rest.pop(name), p)))
    if rest:
        raise HarnessError(f"no upstream name for {len(rest)} model tensors: {', '.join(sorted(rest)[:4])}")
    return out


# ------------------------------------------------------------------------------------------ reading
@dataclass(frozen=True)
class Source:
    root: Path
    """The NeMo 2 checkpoint folder (weights/ + context/, or weights in the folder)."""
    preset: ModelPreset
    """The named preset with the number of decoder layers the checkpoint stores."""
    context: Mapping[str, Any]
    """The harness checkpoint's `context/harness.json` ({} for a foreign NeMo checkpoint)."""


def open_source(directory: Path, preset: str | None = None) -> Source:
    """The checkpoint in `directory`, its preset (`preset`, else the one it names) and layer count, every model
    tensor checked against the preset's names and global shapes (metadata only) before a byte is read."""
    root = layout.resolve_pretrained(directory)
    name = layout.preset_name(root, preset)
    stored = layout.stored_shapes(layout.weights_dir(root))
    fc2 = stored.get(f"{MODEL_PREFIX}decoder.layers.mlp.linear_fc2.weight")
    shape = dataclasses.replace(PRESETS[name], num_layers=fc2[0] if fc2 else PRESETS[name].num_layers)
    blocking = [m.line() for m in layout.compare(stored, checkpoint_shapes(shape)) if m.kind != "unexpected"]
    if blocking:
        raise HarnessError(f"{root}: not a {name} checkpoint ({len(blocking)} tensors): {'; '.join(blocking[:3])}")
    return Source(root, shape, layout.read_context(root))


def read_weights(src: Source) -> dict[str, torch.Tensor]:
    """Every model tensor whole (TP shards merged), in its stored dtype, under unwrapped mcore keys one per
    layer; optimizer state is not read. One process, whatever launcher variables are set: an export inside a
    Slurm allocation of several tasks must not wait for ranks that never come."""
    parallel.init(1, env=parallel.rank_env({}))
    wdir = str(layout.weights_dir(src.root))
    wanted = checkpoint_shapes(src.preset)
    try:
        meta = dist_checkpointing.load_tensors_metadata(wdir)
        loaded = dist_checkpointing.load({k: v for k, v in meta.items() if k in wanted}, wdir,
                                         validate_access_integrity=False)
    except (Exception, CheckpointException) as e:  # noqa: BLE001 - whatever the reader raises (torch's
        # CheckpointException is a BaseException), the stored weights are damaged or missing
        cause = next(iter(e.failures.values()))[0] if isinstance(e, CheckpointException) and e.failures else e
        first = (str(cause).strip().splitlines() or [""])[0][:300]
        raise HarnessError(f"{wdir}: the weights cannot be read ({cause.__class__.__name__}: {first}); the "
                           f"checkpoint's files are missing or damaged") from None
    sd: dict[str, torch.Tensor] = {}
    for key, t in loaded.items():
        if key not in wanted:  # the common state (common.pt: the optimizer's param groups) comes back with them
            continue
        name = key.removeprefix(MODEL_PREFIX)
        if name.startswith("decoder.layers."):
            local = name.removeprefix("decoder.layers.")
            sd.update({f"decoder.layers.{i}.{local}": t[i] for i in range(src.preset.num_layers)})
        else:
            sd[name] = t
    return sd


# ------------------------------------------------------------------------------------------ writing
@dataclass(frozen=True)
class Exported:
    out: Path
    format: Format
    dtype: str
    preset: str
    layers: int
    tensors: int
    """Tensors written (upstream's names for pytorch/safetensors, NeMo's stacked ones for nemo)."""
    bytes: int
    """Size of the folder written."""


@dataclass(frozen=True)
class Extras:
    """What the checkpoint folder alone does not know."""

    tokenizer: Mapping[str, Any] | None = None
    """The run's video tokenizer, for config.json."""
    context: Path | None = None
    """A NeMo io context folder (`nemo_context`) to carry into a nemo export."""
    preset: str | None = None
    """The model preset, where the checkpoint names none."""


def model_config(src: Source, dtype: str, tokenizer: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`config.json`: the model's shape under the names of upstream's model config (`n_layers`, `dim`,
    `n_heads`, `n_kv_heads`, `head_dim`, `ffn_hidden_size`, `rope_theta`, ...), the video tokenizer the
    weights were trained on, and where they came from."""
    p, ctx = src.preset, src.context
    model: dict[str, Any] = {
        "n_layers": p.num_layers, "dim": p.hidden_size, "n_heads": p.num_attention_heads,
        "n_kv_heads": p.num_query_groups, "head_dim": cfg.head_dim(p), "ffn_hidden_size": p.ffn_hidden_size,
        "vocab_size": p.vocab_size, "output_vocab_size": p.output_vocab_size, "norm_type": "rmsnorm",
        "norm_eps": cfg.LAYERNORM_EPS, "use_qk_normalization": True, "rope_theta": p.rotary_base,
        "max_seq_len": p.seq_length, "video2world": p.video2world,
    }
    if p.video2world:
        model["context_dim"] = p.crossattn_dim
    if (y := cfg.yarn(p)) is not None:
        model.update(apply_yarn=True, yarn_scale=y.scale, yarn_beta_fast=y.beta_fast, yarn_beta_slow=y.beta_slow,
                     original_latent_shape=list(y.original_grid))
    tok = {"compression": list(ctx.get("compression", p.pretrain_compression)),
           "latent_shape": list(ctx.get("grid", p.pretrain_grid)), **(tokenizer or {})}
    return {"preset": p.name, "dtype": dtype, "model": model, "tokenizer": tok,
            "source": {"checkpoint": str(src.root), "step": ctx.get("step"), "engine": ctx.get("engine")}}


def _upstream_tensors(sd: Mapping[str, torch.Tensor], p: ModelPreset, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Own, contiguous copies (safetensors refuses tensors sharing storage; torch.save would store a shared
    stacked tensor whole for each view)."""
    return {k: v.to(dtype, copy=True).contiguous() for k, v in to_upstream(sd, p).items()}


def nemo_context(directory: Path) -> Path:
    """The NeMo io context folder (holding `io.json`) of a NeMo 2 checkpoint folder, an HF snapshot holding
    `nemo/`, or the context folder itself."""
    for cand in (directory, directory / "context", directory / "nemo" / "context"):
        if (cand / "io.json").is_file():
            return cand
    raise HarnessError(f"{directory}: --context: no io.json here, in context/ or in nemo/context/ (the context "
                       f"folder NeMo writes beside a checkpoint's weights)")


def check_context(context: Path, p: ModelPreset) -> None:
    """A carried context must describe as many layers as the weights (its yaml's `num_layers`, where it has one):
    checked before a byte of weights is read."""
    for y in sorted(context.glob("*.yaml")):
        m = re.search(r"^\s*num_layers:\s*(\d+)\s*$", y.read_text(encoding="utf-8"), re.MULTILINE)
        if m and int(m.group(1)) != p.num_layers:
            raise HarnessError(f"{y}: --context: num_layers {m.group(1)}, but the checkpoint exported has "
                               f"{p.num_layers} layers; name the context of the model these weights came from")


def carry_context(context: Path, dest: Path) -> None:
    """Upstream's NeMo inference builds its model from `context/io.json` (NeMo's serialized model and config,
    which only NeMo writes: `io.load_context(..., subpath="model")`), so a nemo export carries the context of the
    NeMo checkpoint the weights were trained from (the same architecture; `check_context`)."""
    for f in sorted(context.iterdir()):
        if f.is_file() and f.name != "harness.json":
            shutil.copy2(f, dest / f.name)


def _write(tmp: Path, fmt: Format, src: Source, sd: dict[str, torch.Tensor], dtype: str,
           extra: Extras) -> int:
    """The export's files into `tmp`; returns the number of tensors written."""
    if fmt == "nemo":
        from harness.cosmos.pretrained import write_nemo

        context = {**src.context, "exported_from": str(src.root), "dtype": dtype}
        context["preset"] = src.preset.name
        write_nemo(tmp, src.preset, sd, dtype=DTYPES[dtype], harness_context=context)
        if extra.context is not None:
            carry_context(extra.context, tmp / "context")
        return len(checkpoint_shapes(src.preset))
    tensors = _upstream_tensors(sd, src.preset, DTYPES[dtype])
    if fmt == "pytorch":
        torch.save(tensors, tmp / "model.pt")
    else:
        from safetensors.torch import save_file

        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(model_config(src, dtype, extra.tokenizer), indent=2) + "\n",
                                     encoding="utf-8")
    return len(tensors)


def export(directory: Path, out: Path, fmt: Format, dtype: str = "bf16", extra: Extras = Extras()) -> Exported:
    """Export the checkpoint in `directory` to the new folder `out`, atomically: everything is written into a
    hidden sibling folder, renamed to `out` only when complete (an interrupted export leaves no `out`)."""
    if fmt not in FORMATS or dtype not in DTYPES:
        raise HarnessError(f"format {fmt!r} / dtype {dtype!r}: allowed {', '.join(FORMATS)} / {', '.join(DTYPES)}")
    if out.exists():
        raise HarnessError(f"{out}: exists; --to names a new folder")
    src = open_source(directory, extra.preset)
    if fmt == "nemo" and extra.context is not None:
        check_context(extra.context, src.preset)
    sd = read_weights(src)
    tmp = out.parent / f"{temp_prefix(out.name)}partial-{os.getpid()}"  # a long --to keeps a legal temp name
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        n = _write(tmp, fmt, src, sd, dtype, extra)
        for f in (f for f in tmp.rglob("*") if f.is_file()):
            os.chmod(f, file_mode())  # safetensors writes 0600: weights on a shared filesystem are for others too
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return Exported(out, fmt, dtype, src.preset.name, src.preset.num_layers, n, size)
