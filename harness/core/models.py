"""Cosmos AR model presets: the numbers every other module derives shapes and limits from.

Values follow the public Cosmos-1.0 model cards and NeMo configs (see DESIGN.md section 4). The `tiny`
presets keep the real vocabulary and layout so the quickstart and the tests exercise the same code paths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


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

    @property
    def params(self) -> int:
        """Exact parameter count (embeddings, output layer and norms included), for MFU and memory estimates:
        the sum over the tensors of a checkpoint of this preset (`harness.cosmos.layout`, their one home)."""
        from harness.cosmos.layout import checkpoint_shapes  # noqa: PLC0415 (layout imports this module)

        return sum(math.prod(shape) for shape in checkpoint_shapes(self).values())


_COSMOS_4B = dict(num_layers=16, hidden_size=4096, ffn_hidden_size=14_336, num_attention_heads=32,
                  num_query_groups=8, kv_channels=128, seq_length=15_360, pretrain_grid=(5, 40, 64),
                  pretrain_compression=(8, 16, 16))
_COSMOS_12B = dict(num_layers=40, hidden_size=5120, ffn_hidden_size=14_336, num_attention_heads=32,
                   num_query_groups=8, kv_channels=128, seq_length=15_360, pretrain_grid=(5, 40, 64),
                   pretrain_compression=(8, 16, 16), yarn_scale=2.0, yarn_original_grid=(3, 40, 64))
_TINY = dict(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=2,
             kv_channels=16, seq_length=4096, pretrain_grid=(3, 6, 8), pretrain_compression=(4, 8, 8))

PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in (
        ModelPreset("cosmos-4b", "nvidia/Cosmos-1.0-Autoregressive-4B", vocab_size=64_000,
                    output_vocab_size=64_000, min_gpus=2, **_COSMOS_4B),
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
