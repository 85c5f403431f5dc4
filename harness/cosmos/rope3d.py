"""Cosmos 3D rotary position embedding and the Video2World absolute sin-cos embedding.

Layout (learned from the public Cosmos/NeMo code, re-derived here): the head dim D is split into a temporal part
D_t = D - 2 * D_s and two spatial parts D_s = (D // 6) * 2 (height and width share the spatial frequencies). The
rotation angles of one token at latent position (t, h, w) are `[t * f_t, h * f_s, w * f_s]` (D/2 values), repeated
twice to D for mcore's non-interleaved `rotate_half`. Tokens are flattened in T, H, W order. The latent grid comes
from the spec (`spec.token_math.grid`), never a hard-coded 5x40x64.

YaRN (12B family) rescales frequencies only: spatial ones against the original grid's H, temporal ones against its
T. Like NeMo's RotaryEmbedding3D and Cosmos' default "v2" RoPE, no attention-magnitude (mscale) factor is applied.
"""

from __future__ import annotations

import math

import torch

from harness.core.tokens import Grid
from harness.cosmos.config import Yarn


def axis_dims(dim: int) -> tuple[int, int, int]:
    """(D_t, D_h, D_w) of a head (or hidden) dim: 128 -> (44, 42, 42)."""
    d_s = dim // 6 * 2
    return dim - 2 * d_s, d_s, d_s


def _inv_freq(dim: int, base: float) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))


def yarn_factors(inv_freq: torch.Tensor, original_len: int, y: Yarn) -> torch.Tensor:
    """1 for high frequencies (more than beta_fast turns over the original length), 1/scale for low ones (fewer
    than beta_slow turns), linear in between."""
    hi = 2 * math.pi * y.beta_fast / original_len
    lo = 2 * math.pi * y.beta_slow / original_len
    mask = ((inv_freq - lo) / (hi - lo)).clamp(0.0, 1.0)
    return (1 - mask) / y.scale + mask


def inv_freqs(head_dim: int, base: float, y: Yarn | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(temporal, spatial) inverse frequencies, float64."""
    d_t, d_s, _ = axis_dims(head_dim)
    f_t, f_s = _inv_freq(d_t, base), _inv_freq(d_s, base)
    if y is not None:
        f_t = f_t * yarn_factors(f_t, y.original_grid[0], y)
        f_s = f_s * yarn_factors(f_s, y.original_grid[1], y)
    return f_t, f_s


def grid_positions(grid: Grid) -> torch.Tensor:
    """[T*H*W, 3] integer (t, h, w) of each token in T, H, W flattening order."""
    t, h, w = torch.meshgrid(torch.arange(grid.t), torch.arange(grid.h), torch.arange(grid.w), indexing="ij")
    return torch.stack([t.reshape(-1), h.reshape(-1), w.reshape(-1)], dim=1)


def rope_angles(grid: Grid, head_dim: int, base: float, y: Yarn | None = None, *, bov: bool = False,
                length: int | None = None) -> torch.Tensor:
    """Rotation angles [S, 1, 1, head_dim] (float32), the `freqs` mcore's `apply_rotary_pos_emb` takes.

    `bov`: a Video2World sample starts with a BOV token that gets angle 0 (no rotation). `length`: pad with zero
    angles (the trailing PAD tokens) or cut to this many positions."""
    f_t, f_s = inv_freqs(head_dim, base, y)
    pos = grid_positions(grid).to(torch.float64)
    half = torch.cat([pos[:, :1] * f_t, pos[:, 1:2] * f_s, pos[:, 2:3] * f_s], dim=1)
    emb = torch.cat([half, half], dim=1)
    emb = _frame(emb, bov, length)
    return emb.to(torch.float32)[:, None, None, :]


def _sincos_1d(dim: int, n: int) -> torch.Tensor:
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = torch.arange(n, dtype=torch.float64)[:, None] * omega[None, :]
    return torch.cat([out.sin(), out.cos()], dim=1)


def abs_sincos(grid: Grid, hidden: int, *, bov: bool = True, length: int | None = None) -> torch.Tensor:
    """Video2World's absolute position embedding [S, hidden] (float32): per-axis 1D sin-cos tables over the same
    (D_t, D_h, D_w) split of the hidden size, concatenated [t, h, w]; zero rows for BOV and PAD."""
    d_t, d_h, d_w = axis_dims(hidden)
    pos = grid_positions(grid)
    emb = torch.cat([_sincos_1d(d_t, grid.t)[pos[:, 0]], _sincos_1d(d_h, grid.h)[pos[:, 1]],
                     _sincos_1d(d_w, grid.w)[pos[:, 2]]], dim=1)
    return _frame(emb, bov, length).to(torch.float32)


def _frame(emb: torch.Tensor, bov: bool, length: int | None) -> torch.Tensor:
    if bov:
        emb = torch.cat([emb.new_zeros(1, emb.shape[1]), emb], dim=0)
    if length is not None:
        if length > emb.shape[0]:
            emb = torch.cat([emb, emb.new_zeros(length - emb.shape[0], emb.shape[1])], dim=0)
        emb = emb[:length]
    return emb


class Rope3D(torch.nn.Module):
    """Holds the angles of one sample layout; `forward(start, n)` returns positions [start, start+n) so that
    incremental decoding rotates new tokens at their true latent positions."""
    angles: torch.Tensor

    def __init__(self, grid: Grid, head_dim: int, base: float, y: Yarn | None = None, *, bov: bool = False,
                 length: int | None = None) -> None:
        super().__init__()
        self.grid = grid
        self.register_buffer("angles", rope_angles(grid, head_dim, base, y, bov=bov, length=length),
                             persistent=False)

    def forward(self, start: int | torch.Tensor, n: int) -> torch.Tensor:
        """`start` may be a 0-dim device tensor (a decode position kept on the GPU, so that one captured CUDA
        graph serves every step): then the rows are gathered with `index_select`, and range is not checked
        (that would need a host sync)."""
        if isinstance(start, torch.Tensor):
            idx = start.reshape(1).to(self.angles.device) + torch.arange(n, device=self.angles.device)
            return self.angles.index_select(0, idx)
        if start + n > self.angles.shape[0]:
            raise ValueError(f"positions {start}..{start + n} exceed the {self.angles.shape[0]} of grid {self.grid}")
        return self.angles[start:start + n]
