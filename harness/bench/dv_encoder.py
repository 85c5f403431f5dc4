"""A stand-in for the published Cosmos DV4x8x8 encoder, for throughput benchmarks: same interface, same
latent grid, and about the same compute, with random weights (no checkpoint can be downloaded here).

Sized from the public Cosmos tokenizer configuration (discrete video: base channels 128, channel multipliers
[2, 4, 4], 2 residual blocks per level, factorized spatial 3x3 + causal temporal 3 convolutions, a 4x
3D patcher, one spatial downsample for 8x, a mid block with attention, FSQ with 6 levels [8,8,8,5,5,5]).
Written here from that description; about 1.4 TFLOP per 17 x 320 x 512 clip (`flops_per_clip`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

LEVELS = (8, 8, 8, 5, 5, 5)


class FactorizedConv(nn.Module):
    """Spatial 3x3 then causal temporal 3 (padded with the first frame): cheaper than a full 3x3x3."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.spatial = nn.Conv3d(cin, cout, (1, 3, 3), padding=(0, 1, 1))
        self.temporal = nn.Conv3d(cout, cout, (3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.spatial(x)
        x = torch.cat([x[:, :, :1], x[:, :, :1], x], dim=2)
        return self.temporal(x)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(1, cin)
        self.conv1 = FactorizedConv(cin, cout)
        self.norm2 = nn.GroupNorm(1, cout)
        self.conv2 = FactorizedConv(cout, cout)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class SpatialAttention(nn.Module):
    def __init__(self, channels: int, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(1, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = self.norm(x).permute(0, 2, 3, 4, 1).reshape(b * t, h * w, c)
        q, k, v = self.qkv(y).reshape(b * t, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b * t, h * w, c)
        y = self.proj(y).reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)
        return x + y


class DVSizedEncoder(nn.Module):
    """[B,3,T,H,W] in [-1,1] -> (indices [B,(T-1)//4+1,H/8,W/8] int64, codes [B,6,...])."""
    if TYPE_CHECKING:  # buffers (register_buffer); TorchScript cannot read string class annotations
        levels: torch.Tensor
        basis: torch.Tensor

    def __init__(self, channels: int = 128) -> None:
        super().__init__()
        c1, c2 = 2 * channels, 4 * channels
        self.conv_in = FactorizedConv(3 * 64, channels)
        self.down0 = nn.Sequential(ResBlock(channels, c1), ResBlock(c1, c1))
        self.downsample = nn.Conv3d(c1, c1, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        self.down1 = nn.Sequential(ResBlock(c1, c2), ResBlock(c2, c2))
        self.down2 = nn.Sequential(ResBlock(c2, c2), ResBlock(c2, c2))
        self.mid1, self.attn, self.mid2 = ResBlock(c2, c2), SpatialAttention(c2), ResBlock(c2, c2)
        self.norm_out = nn.GroupNorm(1, c2)
        self.conv_out = FactorizedConv(c2, 16)
        self.quant_conv = nn.Conv3d(16, 6, 1)
        self.register_buffer("levels", torch.tensor(LEVELS, dtype=torch.float32))
        self.register_buffer("basis", torch.tensor([1, 8, 64, 512, 2560, 12800], dtype=torch.int64))

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """Causal 4x4x4 space/time-to-depth: the first frame is repeated so T' = (T-1)//4 + 1."""
        x = torch.cat([x[:, :, :1], x[:, :, :1], x[:, :, :1], x], dim=2)
        b, c, t, h, w = x.shape
        t4 = t // 4
        x = x[:, :, : t4 * 4].reshape(b, c, t4, 4, h // 4, 4, w // 4, 4)
        return x.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(b, c * 64, t4, h // 4, w // 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.conv_in(self.patchify(x))
        h = self.down2(self.down1(self.downsample(self.down0(h))))
        h = self.mid2(self.attn(self.mid1(h)))
        z = self.quant_conv(self.conv_out(F.silu(self.norm_out(h)))).float()
        half = (self.levels.view(1, 6, 1, 1, 1) - 1.0) / 2.0
        digits = torch.round((torch.tanh(z) + 1.0) * half)  # FSQ in fp32: exact integer digits
        index = (digits.to(torch.int64) * self.basis.view(1, 6, 1, 1, 1)).sum(dim=1)
        return index, digits / half - 1.0


def flops_per_clip(frames: int = 17, height: int = 320, width: int = 512) -> float:
    """Counted by torch's FlopCounterMode on the meta device (no memory, no compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = DVSizedEncoder()
        x = torch.zeros(1, 3, frames, height, width)
    with FlopCounterMode(display=False) as counter:
        model(x)
    return float(counter.get_total_flops())


def write(out_dir: str, example: tuple[int, int, int] = (17, 64, 64)) -> None:
    """encoder.jit (TorchScript, random weights) into out_dir."""
    torch.manual_seed(0)
    model = torch.jit.script(DVSizedEncoder().eval())
    with torch.no_grad():
        model(torch.zeros(1, 3, *example))
    torch.jit.save(model, f"{out_dir}/encoder.jit")
