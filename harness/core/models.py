"""Cosmos AR model presets: the numbers every other module derives shapes and limits from.

Values follow the public Cosmos-1.0 model cards and NeMo configs (docs/design.md, "The Cosmos recipe"). The `tiny`
presets keep the real vocabulary and layout so the quickstart and the tests exercise the same code paths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, TypedDict

Precision = Literal["bf16-mixed", "fp32"]
"""What training and inference compute in: bf16 with fp32 master weights, or fp32 (CPU)."""

@dataclass(frozen=True)
class ModelPreset:
    name: str
    hf_repo: str
    """The public checkpoint this preset describes ("" for the tiny presets)."""
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    kv_channels: int
    """Head dimension. Not hidden / heads: Cosmos-12B has 5120 / 32 = 160 but kv_channels 128 (upstream
    CosmosConfig12B), so q is 32 x 128 = 4096 wide and `linear_proj` maps 4096 back to 5120."""
    vocab_size: int
    """Rows of the input embedding; Video2World adds BOV/PAD ids above the 64,000 codes."""
    output_vocab_size: int
    seq_length: int
    """Position capacity: a training sample longer than this is rejected."""
    pretrain_grid: tuple[int, int, int]
    """The latent grid (T', H', W') of pretraining; other grids extrapolate the 3D RoPE."""
    pretrain_compression: tuple[int, int, int]
    rotary_base: int = 500_000
    yarn_scale: float = 1.0
    """YaRN factor for the 3D RoPE (12B extends a [3,40,64] grid by 2)."""
    yarn_original_grid: tuple[int, int, int] | None = None
    video2world: bool = False
    """Adds cross-attention to T5 prompt embeddings and absolute sin-cos positions."""
    crossattn_dim: int = 1024
    min_gpus: int = 1
    """GPUs of 80 GB (A100/H100, what the released recipes run on) the training state must be spread over."""
    one_gpu_train_gib: float | None = None
    """Measured peak memory of one training replica on one GPU (TP = 1, micro-batch 1, seq 12,800, bf16-mixed, no
    distributed optimizer); where a GPU holds it, the preset trains on one GPU. None = never measured."""

    @property
    def params(self) -> int:
        """Exact parameter count (embeddings, output layer and norms included), for MFU and memory estimates:
        the sum over the tensors of a checkpoint of this preset (`checkpoint_shapes`, their one home)."""
        return sum(math.prod(shape) for shape in checkpoint_shapes(self).values())


COSMOS_4B_ONE_GPU_GIB = 108.4
"""`python -m harness.bench.train --preset cosmos-4b` on one H200: peak_mem_gib 108.37
(results/bench/h200/train-cosmos-4b-12800.json)."""


class _Shape(TypedDict):
    """The layer shape a base model and its Video2World variant share (keyword arguments of `ModelPreset`)."""
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    kv_channels: int
    seq_length: int
    pretrain_grid: tuple[int, int, int]
    pretrain_compression: tuple[int, int, int]


class _YarnShape(_Shape, total=False):
    """A shape whose positions extend a smaller pretraining grid with YaRN."""
    yarn_scale: float
    yarn_original_grid: tuple[int, int, int]


_COSMOS_4B = _Shape(num_layers=16, hidden_size=4096, ffn_hidden_size=14_336, num_attention_heads=32,
                    num_query_groups=8, kv_channels=128, seq_length=15_360, pretrain_grid=(5, 40, 64),
                    pretrain_compression=(8, 16, 16))
_COSMOS_12B = _YarnShape(num_layers=40, hidden_size=5120, ffn_hidden_size=14_336, num_attention_heads=32,
                         num_query_groups=8, kv_channels=128, seq_length=15_360, pretrain_grid=(5, 40, 64),
                         pretrain_compression=(8, 16, 16), yarn_scale=2.0, yarn_original_grid=(3, 40, 64))
_TINY = _Shape(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=2,
               kv_channels=16, seq_length=4096, pretrain_grid=(3, 6, 8), pretrain_compression=(4, 8, 8))

PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in (
        ModelPreset("cosmos-4b", "nvidia/Cosmos-1.0-Autoregressive-4B", vocab_size=64_000,
                    output_vocab_size=64_000, min_gpus=2, one_gpu_train_gib=COSMOS_4B_ONE_GPU_GIB, **_COSMOS_4B),
        ModelPreset("cosmos-12b", "nvidia/Cosmos-1.0-Autoregressive-12B", vocab_size=64_000,
                    output_vocab_size=64_000, min_gpus=8, **_COSMOS_12B),
        ModelPreset("cosmos-5b-v2w", "nvidia/Cosmos-1.0-Autoregressive-5B-Video2World", vocab_size=64_064,
                    output_vocab_size=64_000, video2world=True, min_gpus=2, **_COSMOS_4B),
        ModelPreset("cosmos-13b-v2w", "nvidia/Cosmos-1.0-Autoregressive-13B-Video2World", vocab_size=64_064,
                    output_vocab_size=64_000, video2world=True, min_gpus=8, **_COSMOS_12B),
        ModelPreset("tiny", "", vocab_size=64_000, output_vocab_size=64_000, **_TINY),
        ModelPreset("tiny-v2w", "", vocab_size=64_064, output_vocab_size=64_000, video2world=True,
                    crossattn_dim=32, **_TINY),
    )
}


# ------------------------------------------------------------------- checkpoint tensors (names, global shapes)
MODEL_PREFIX = "module."
"""Model tensors of a NeMo 2 checkpoint; others (`optimizer.*`) are not the model's and are not compared."""
UPSTREAM_CONFIGS = {"CosmosConfig4B": "cosmos-4b", "CosmosConfig12B": "cosmos-12b",
                    "CosmosConfigVideo2World5B": "cosmos-5b-v2w", "CosmosConfigVideo2World13B": "cosmos-13b-v2w"}
"""NeMo config classes of the public Cosmos checkpoints (NVIDIA/Cosmos archived-ces2025, nemo/cosmos.py and
nemo/cosmos_video2world.py) -> harness preset, to name the preset of a checkpoint from its `context/model.yaml`."""


def layer_shapes(p: ModelPreset) -> dict[str, tuple[int, ...]]:
    """Global shapes of one decoder layer's weights, mcore names (fc1 holds gate rows then up rows)."""
    h, d, f = p.hidden_size, p.kv_channels, p.ffn_hidden_size
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


def global_shapes(p: ModelPreset) -> dict[str, tuple[int, ...]]:
    """The tensors outside the decoder layers."""
    return {"embedding.word_embeddings.weight": (p.vocab_size, p.hidden_size),
            "decoder.final_layernorm.weight": (p.hidden_size,),
            "output_layer.weight": (p.output_vocab_size, p.hidden_size)}


def checkpoint_shapes(p: ModelPreset, layers: int | None = None) -> dict[str, tuple[int, ...]]:
    """Every model tensor of a checkpoint of `p` (`layers` decoder layers, default the preset's), as stored."""
    n = p.num_layers if layers is None else layers
    out = {MODEL_PREFIX + k: v for k, v in global_shapes(p).items()}
    out.update({f"{MODEL_PREFIX}decoder.layers.{k}": (n, *v) for k, v in layer_shapes(p).items()})
    return out


PROMPT_ROWS = 512
"""Rows of a Video2World prompt embedding: T5 encoder outputs padded or cut to this many tokens, upstream's
length, which the cross-attention attends over in full (`harness.lib.prompts`)."""


KV_FP8_SCALE_BYTES = 4
"""An fp8 KV cache's scale per position and key/value head (fp32: the amax of its channels / 448)."""


def kv_bytes(layers: int, groups: int, kv_channels: int, elem: int, *, fp8: bool = False) -> int:
    """Keys and values one cached position holds over `layers` layers of `groups` key/value heads: `elem` bytes a
    channel, or with `fp8` one byte a channel and a scale a head (`infer.kv_cache = "fp8"`)."""
    head = kv_channels + KV_FP8_SCALE_BYTES if fp8 else kv_channels * elem
    return 2 * layers * groups * head


def decode_weight_bytes(p: ModelPreset, elem: int = 2) -> int:
    """Weight bytes one decode step reads: every decoder layer, the final norm and the output layer; not the input
    embedding (one row a token) nor Video2World's cross-attention key/value projection (applied to the prompt
    once, at prefill)."""
    layer = sum(math.prod(s) for k, s in layer_shapes(p).items() if k != "cross_attention.linear_kv.weight")
    rest = sum(math.prod(s) for k, s in global_shapes(p).items() if k != "embedding.word_embeddings.weight")
    return elem * (p.num_layers * layer + rest)


def decode_step_bytes(p: ModelPreset, batch: int, positions: float, elem: int = 2, *, fp8: bool = False) -> float:
    """Bytes one decode step reads at `batch` sequences attending to `positions` cached positions each: the
    weights once, every sequence's keys and values (`fp8`: the fp8 cache's codes and scales), and for
    Video2World its prompt's cross-attention keys and values (the model's dtype). Generation is bound by this
    count over memory bandwidth (README, "Measured")."""
    cached = kv_bytes(p.num_layers, p.num_query_groups, p.kv_channels, elem, fp8=fp8)
    prompt = PROMPT_ROWS * kv_bytes(p.num_layers, p.num_query_groups, p.kv_channels, elem) if p.video2world else 0
    return decode_weight_bytes(p, elem) + batch * (positions * cached + prompt)


def tp_problems(p: ModelPreset, tp: int) -> list[str]:
    """Dimensions that tensor parallelism of size `tp` would have to split unevenly."""
    dims = {"attention heads": p.num_attention_heads, "query groups": p.num_query_groups,
            "FFN width": p.ffn_hidden_size, "input vocabulary rows": p.vocab_size,
            "output vocabulary rows": p.output_vocab_size}
    return [f"{name} ({n}) not divisible by TP {tp}" for name, n in dims.items() if n % tp]


PEAK_TFLOPS = 989.0
"""Dense bf16 peak of one H100/H200 SXM GPU, TFLOP/s: the one MFU denominator of the project (the report, the
training event files, the bench)."""
PEAK_BANDWIDTH_TBPS = {"H100": 3.35, "H200": 4.8}
"""HBM bandwidth of one SXM card by model (NVIDIA's data sheets; the H100 80GB HBM3 and the H200 141GB), TB/s:
what decoding is bound by (`decode_step_bytes`)."""


def peak_bandwidth_tbps(gpu_name: str) -> float | None:
    """The card's HBM bandwidth from its device name ("NVIDIA H100 80GB HBM3"); None for a card not listed."""
    return next((v for k, v in PEAK_BANDWIDTH_TBPS.items() if k in gpu_name.split()), None)


def train_flops_per_token(preset: ModelPreset, seq: int) -> float:
    """Model FLOPs per trained token (forward + backward = 3x forward): 2 x matmul parameters (embedding lookup
    excluded, output layer included) + causal attention 2 x L x seq x H (QK^T and AV over on average seq/2 keys).
    For Cosmos-4B at 12,800 tokens this is the accounting behind the 534 TFLOP/s calibration (docs/design.md,
    "Measured calibration")."""
    h, f, L = preset.hidden_size, preset.ffn_hidden_size, preset.num_layers
    kv = preset.kv_channels * preset.num_query_groups
    q = preset.kv_channels * preset.num_attention_heads
    per_layer = h * (q + 2 * kv) + q * h + 3 * h * f
    attn_fwd = 2 * L * seq * q
    if preset.video2world:
        per_layer += h * q + q * h  # cross-attention q and output projections (K/V over the prompt are per sample)
    fwd = 2 * (L * per_layer + h * preset.output_vocab_size) + attn_fwd
    return 3.0 * fwd
