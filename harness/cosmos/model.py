"""The Cosmos AR model on megatron-core: a `GPTModel` built from a harness layer spec, with the 3D RoPE injected.

Layer spec: mcore's `SelfAttention`/`MLP`/`TransformerLayer` with tensor-parallel linears, plus three harness
modules: `SDPAttention` (core attention through torch SDPA, flash on GPU; mcore's unfused local attention
materialises S x S scores and runs out of memory at 12,800 tokens), `NormedColumnParallelLinear` (RMSNorm fused
into the following linear, so parameter names match Transformer Engine's `layer_norm_weight`, i.e. the keys of a
NeMo 2 Cosmos checkpoint), and `RMSNorm` for the q/k and final norms.

Stable forward API (used by training, inference and the bench):
    logits = model(tokens, start=0)                      # tokens [b, s] int64 -> [b, s, vocab_out] (gathered)
    logits = model(tokens, last_only=True)               # [b, 1, vocab_out]: the last position's only
    loss = model(tokens, labels=labels)                  # per-token loss [b, s] (float32), TP-exact
    logits = model(tokens, kv_cache=cache)               # incremental decoding: tokens at positions [p, p+s)
        (p = cache.length: an int, or a device tensor when the cache's layers expose `attend`: then they attend
        over whole fixed-length buffers themselves, so a CUDA graph can replay the step)
Video2World adds `context=[b, L, crossattn_dim]` (T5 embeddings, padding rows zero): all L rows are attended to,
unmasked, as upstream does in training and generation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from megatron.core import parallel_state, tensor_parallel
from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.models.gpt.gpt_model import GPTModel
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

from harness.core.models import ModelPreset
from harness.core.tokens import VIDEO2WORLD_PAD, Grid
from harness.cosmos import config as cfg
from harness.cosmos.layers import NormedColumnParallelLinear, ResidualRMSNorm, RMSNorm, TPRowLinear
from harness.cosmos.loss import token_loss
from harness.cosmos.rope3d import Rope3D
from harness.cosmos.video2world import cross_attention_spec


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE of x [b, heads, s, d] with cos/sin [s, d] in mcore's non-interleaved (rotate-half) layout: the same
    arithmetic as megatron-core's unfused `apply_rotary_pos_emb`, which without Transformer Engine costs five
    full passes (two multiplies, a negation, two concatenations) per tensor, forward and backward."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


_rotate_compiled: Any = None


def rotate_fused(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`rotate` as one Inductor kernel (forward and backward) on CUDA; eager elsewhere."""
    global _rotate_compiled
    if not x.is_cuda:
        return rotate(x, cos, sin)
    if _rotate_compiled is None:
        _rotate_compiled = torch.compile(rotate)
    return _rotate_compiled(x, cos, sin)


@dataclass
class LayerKV:
    """One layer's cached keys/values [b, heads_kv, s, d] (this TP rank's heads)."""

    k: torch.Tensor | None = None
    v: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v


@dataclass
class KVCache:
    """Per-layer self-attention caches for incremental decoding; `length` = positions already consumed."""

    layers: list[LayerKV] = field(default_factory=list)

    @property
    def length(self) -> int:
        return 0 if not self.layers or self.layers[0].k is None else int(self.layers[0].k.shape[2])


class SDPAttention(MegatronModule):
    """Core attention through `torch.nn.functional.scaled_dot_product_attention` (flash/efficient kernels on GPU,
    GQA without materialising repeated K/V). Receives mcore's [s, b, heads, d] tensors, returns [s, b, heads*d]."""

    def __init__(self, config: TransformerConfig, layer_number: int, attn_mask_type: AttnMaskType,
                 attention_type: str = "self", softmax_scale: float | None = None, **_: Any) -> None:
        super().__init__(config=config)
        self.attn_mask_type = attn_mask_type
        self.attention_type = attention_type
        self.softmax_scale = softmax_scale
        self.kv: LayerKV | None = None
        """Set by `CosmosModel.forward` while decoding with a cache."""
        self.rope: tuple[torch.Tensor, torch.Tensor] | None = None
        """(cos, sin) [s, head_dim] of this forward's positions, set by `CosmosModel.forward` (self-attention):
        RoPE is applied here, fused, instead of in mcore's attention, before keys enter the cache."""

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any = None,
                attn_mask_type: Any = None, attention_bias: Any = None, packed_seq_params: Any = None,
                **_: Any) -> torch.Tensor:
        sq, b = query.shape[0], query.shape[1]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        if self.rope is not None and self.attention_type == "self":
            q, k = rotate_fused(q, *self.rope), rotate_fused(k, *self.rope)
        if self.kv is not None and self.attention_type == "self":
            k, v = self.kv.append(k, v)
            attend = getattr(self.kv, "attend", None)
            out = attend(q, k, v, self.softmax_scale) if attend is not None else None
            if out is not None:
                return out.permute(2, 0, 1, 3).reshape(sq, b, -1)
        gqa = q.shape[1] != k.shape[1]
        sk = k.shape[2]
        if sq == 1 and self.attention_type == "cross" and attention_mask is None:
            return _one_query(q, k, v, self.softmax_scale).permute(2, 0, 1, 3).reshape(sq, b, -1)
        mask = None
        causal = self.attention_type == "self" and self.attn_mask_type == AttnMaskType.causal
        if causal and sq != sk and sq > 1:
            mask = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(sk - sq)
        elif attention_mask is not None and not causal:
            mask = attention_mask
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and sq == sk and sq > 1,
                                             scale=self.softmax_scale, enable_gqa=gqa)
        return out.permute(2, 0, 1, 3).reshape(sq, b, -1)


def _one_query(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> torch.Tensor:
    """A decode step's cross-attention ([b, heads, 1, d] over [b, groups, L, d]) as two batched GEMMs and a
    softmax: deterministic. SDPA's kernels for one query row over the 512 T5 rows are not (measured on an H100,
    bf16: two greedy decodes of Cosmos-5B-Video2World at batch 8 differed), and seeded sampling must repeat."""
    b, h, _, d = q.shape
    g = k.shape[1]
    qg = q.reshape(b, g, h // g, d)
    scores = torch.matmul(qg, k.transpose(-1, -2)).float() * (scale if scale is not None else d ** -0.5)
    out = torch.matmul(torch.softmax(scores, dim=-1).to(v.dtype), v)
    return out.reshape(b, h, 1, d)


class CosmosLayer(TransformerLayer):
    """A TransformerLayer that adds Video2World's absolute position embedding to its input (every layer, as
    Cosmos' `extra_per_block_abs_pos_emb`). `abs_pos` ([s, 1, h]) is set by `CosmosModel.forward`."""

    abs_pos: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kw: Any) -> Any:
        if self.abs_pos is not None:
            hidden_states = hidden_states + self.abs_pos.to(hidden_states.dtype)
        return super().forward(hidden_states, *args, **kw)


def layer_spec(video2world: bool = False, crossattn_dim: int = 1024) -> TransformerBlockSubmodules:
    """The Cosmos decoder spec (mcore modules + the harness' SDPA core attention and fused-norm linears)."""
    cross: dict[str, Any] = {}
    if video2world:
        cross = dict(pre_cross_attn_layernorm=ResidualRMSNorm,
                     cross_attention=cross_attention_spec(SDPAttention, RMSNorm, crossattn_dim),
                     cross_attn_bda=get_bias_dropout_add)
    layer = ModuleSpec(
        module=CosmosLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=IdentityOp,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": AttnMaskType.causal},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=NormedColumnParallelLinear,
                    core_attention=SDPAttention,
                    linear_proj=TPRowLinear,
                    q_layernorm=RMSNorm,
                    k_layernorm=RMSNorm,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=IdentityOp,
            mlp=ModuleSpec(module=MLP, submodules=MLPSubmodules(linear_fc1=NormedColumnParallelLinear,
                                                                linear_fc2=TPRowLinear)),
            mlp_bda=get_bias_dropout_add,
            **cross,
        ),
    )
    return TransformerBlockSubmodules(layer_specs=[layer], layer_norm=ResidualRMSNorm)


class CosmosModel(GPTModel):
    """GPTModel with the Cosmos 3D RoPE (and, for Video2World, abs positions, cross-attention, 64,000 outputs)."""

    def __init__(self, preset: ModelPreset, grid: Grid, config: TransformerConfig, seq_len: int) -> None:
        spec = layer_spec(preset.video2world, preset.crossattn_dim)
        spec.layer_specs = [spec.layer_specs[0]] * preset.num_layers
        super().__init__(config=config, transformer_layer_spec=spec, vocab_size=preset.vocab_size,
                         max_sequence_length=preset.seq_length, share_embeddings_and_output_weights=False,
                         position_embedding_type="none", parallel_output=True)
        self.preset, self.grid, self.seq_len = preset, grid, seq_len
        self.train_fusions = config.bias_activation_fusion or config.bias_dropout_fusion
        """The torch.compile'd SwiGLU / residual-add fusions run only in training: at decode sizes the compiled
        functions' per-call guards cost more than they save (eager batch-1 decoding: 57 -> 36 tokens/s)."""
        self.rope = Rope3D(grid, cfg.head_dim(preset), preset.rotary_base, cfg.yarn(preset),
                           bov=preset.video2world, length=seq_len)
        if preset.video2world:
            from harness.cosmos.video2world import setup_video2world  # noqa: PLC0415
            setup_video2world(self, config, preset, grid, seq_len)

    def forward(self, tokens: torch.Tensor, *, start: int | torch.Tensor = 0, labels: torch.Tensor | None = None,
                kv_cache: KVCache | None = None, context: torch.Tensor | None = None,
                last_only: bool = False) -> torch.Tensor:
        n = tokens.shape[1]
        pad = self._sequence_pad(n, kv_cache, last_only)
        if pad:  # causal: a padded tail leaves the first n positions' outputs unchanged
            tokens = F.pad(tokens, (0, pad))
            labels = None if labels is None else F.pad(labels, (0, pad))
            out = self.forward(tokens, start=start, labels=labels, context=context)
            return out[:, :n]
        if kv_cache is not None:
            start = kv_cache.length  # an int, or a 0-dim device tensor for a graph-captured static cache
        hidden = self.embedding(input_ids=tokens, position_ids=None)
        angles = self.rope(start, n).to(hidden.device)[:, 0, 0]
        self._bind(kv_cache, (angles.cos().to(hidden.dtype), angles.sin().to(hidden.dtype)))
        extra: dict[str, Any] = {}
        if self.preset.video2world:
            from harness.cosmos.video2world import prepare_context  # noqa: PLC0415
            extra = prepare_context(self, hidden, start, n, context)  # a device position in a captured step
        hidden = self.decoder(hidden_states=hidden, attention_mask=None, rotary_pos_emb=None, **extra)
        if last_only:  # a prefill needs the next token's logits only: [b, 5120, 64000] would be ~0.7 GB a sequence
            hidden = hidden[-1:]
        logits, _ = self.output_layer(hidden)
        if labels is not None:
            return token_loss(logits, labels)
        logits = tensor_parallel.gather_from_tensor_model_parallel_region(logits)
        return logits.transpose(0, 1).contiguous()

    def _sequence_pad(self, n: int, kv_cache: KVCache | None, last_only: bool) -> int:
        """Positions to append so that sequence parallelism can split the sequence evenly over the TP ranks (a
        base-recipe sample feeds 12,799 positions). Decoding splits nothing: the inference model is built without
        sequence parallelism (`checkpoint.load_for_inference`)."""
        if not self.config.sequence_parallel:
            return 0
        if kv_cache is not None or last_only:
            raise ValueError("a sequence-parallel model is for training: build the inference model without it")
        return -n % parallel_state.get_tensor_model_parallel_world_size()

    def train(self, mode: bool = True) -> "CosmosModel":
        super().train(mode)
        if getattr(self, "train_fusions", False):  # megatron reads these flags on every forward
            self.config.bias_activation_fusion = self.config.bias_dropout_fusion = mode
        return self

    def _bind(self, kv_cache: KVCache | None, cos_sin: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Hand each self-attention this forward's cache layer and RoPE tables."""
        attns = [layer.self_attention.core_attention for layer in self.decoder.layers]
        if kv_cache is not None and not kv_cache.layers:
            kv_cache.layers.extend(LayerKV() for _ in attns)
        for i, attn in enumerate(attns):
            attn.kv = kv_cache.layers[i] if kv_cache is not None else None
            attn.rope = cos_sin


def build_model(preset: ModelPreset, grid: Grid, *, tp: int = 1, precision: cfg.Precision = "fp32",
                recompute: str = "none", seq_len: int | None = None, device: str | torch.device | None = None,
                sequence_parallel: bool = False, initialize: bool = True) -> CosmosModel:
    """Build on this rank (torch.distributed and mcore parallel state must be initialised; see `train.init_parallel`).
    `seq_len` is the longest input the RoPE tables cover (default: a whole sample of this grid).
    `sequence_parallel` (training only): megatron sequence parallelism over the TP ranks; same parameters and
    checkpoint layout as without it. `initialize` False: no random init (`cfg.transformer_config`), only for a
    model whose weights are all loaded next."""
    if parallel_state.get_tensor_model_parallel_world_size() != tp:
        raise ValueError(f"model TP {tp} != initialised tensor-parallel size "
                         f"{parallel_state.get_tensor_model_parallel_world_size()}")
    conf = cfg.transformer_config(preset, tp=tp, precision=precision, recompute=recompute,
                                  sequence_parallel=sequence_parallel, initialize=initialize)
    if seq_len is None:
        seq_len = grid.tokens + (VIDEO2WORLD_PAD if preset.video2world else 0)
    if conf.sequence_parallel:
        seq_len += -seq_len % tp  # room for `CosmosModel._sequence_pad`
    model = CosmosModel(preset, grid, conf, seq_len)
    dev = device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(dev)
