"""megatron-core `TransformerConfig` for a Cosmos preset: the one place model hyper-parameters become mcore
settings. Cosmos AR is a Llama-3-style decoder (RMSNorm, SwiGLU, no biases, GQA) plus qk-layernorm and a 3D RoPE
that the harness injects itself (so mcore's own position embedding is off)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig

from harness.core.models import ModelPreset, Precision
from harness.cosmos import wgrad

LAYERNORM_EPS = 1e-5
INIT_STD = 0.02
YARN_BETA_FAST = 4.0
YARN_BETA_SLOW = 1.0
"""YaRN band edges of the 12B configs (NeMo's CosmosConfig12B: yarn_beta_fast 4, yarn_beta_slow 1)."""


@dataclass(frozen=True)
class Yarn:
    """YaRN frequency rescaling of the 3D RoPE; only the 12B-family presets use it."""

    scale: float
    original_grid: tuple[int, int, int]
    beta_fast: float = YARN_BETA_FAST
    beta_slow: float = YARN_BETA_SLOW


def head_dim(preset: ModelPreset) -> int:
    """The preset's kv_channels, never hidden / heads (which is 160, not 128, for Cosmos-12B/13B)."""
    return preset.kv_channels


def yarn(preset: ModelPreset) -> Yarn | None:
    if preset.yarn_scale == 1.0 or preset.yarn_original_grid is None:
        return None
    return Yarn(preset.yarn_scale, preset.yarn_original_grid)


def transformer_config(preset: ModelPreset, *, tp: int = 1, precision: Precision = "fp32",
                       recompute: str = "none", sequence_parallel: bool = False,
                       initialize: bool = True) -> TransformerConfig:
    """Fusions that need Apex/TE kernels are switched off: the harness runs on CPU and on GPUs without
    Transformer Engine, and SDPA already fuses the attention. In bf16 (GPU) the two that megatron-core builds
    with `torch.compile` alone are on: SwiGLU (one pass forward, one backward, instead of chunk/silu/mul and
    their backwards) and the residual add; on CPU they stay off (inductor would need a C++ toolchain).
    `sequence_parallel` only takes effect with tp > 1 (megatron's linears switch it off at TP 1 anyway).
    Gradient-accumulation fusion (Apex's, in megatron) is on in bf16 where `harness.cosmos.wgrad` supplies it.
    `initialize` False: weights left as allocated (megatron's `perform_initialization`), for a model whose every
    weight a checkpoint load overwrites: the random init of a real-width model costs ~10 s of CPU each build."""
    bf16 = precision == "bf16-mixed"
    kw: dict[str, object] = dict(
        num_layers=preset.num_layers,
        hidden_size=preset.hidden_size,
        ffn_hidden_size=preset.ffn_hidden_size,
        num_attention_heads=preset.num_attention_heads,
        num_query_groups=preset.num_query_groups,
        kv_channels=head_dim(preset),
        normalization="RMSNorm",
        layernorm_epsilon=LAYERNORM_EPS,
        qk_layernorm=True,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bias_activation_fusion=bf16,
        bias_dropout_fusion=bf16,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=bf16 and wgrad.install(),
        rotary_interleaved=False,
        tensor_model_parallel_size=tp,
        sequence_parallel=sequence_parallel and tp > 1,
        init_method_std=INIT_STD,
        perform_initialization=initialize,
        use_cpu_initialization=not torch.cuda.is_available(),
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        pipeline_dtype=torch.bfloat16 if bf16 else torch.float32,
        autocast_dtype=torch.bfloat16 if bf16 else torch.float32,
    )
    if recompute == "full":
        kw.update(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    elif recompute == "selective":
        kw.update(recompute_granularity="selective")
    return TransformerConfig(**kw)
