"""3D RoPE and Video2World abs positions against independent scalar computations (plain Python math, loops in
T, H, W order), on the pretraining grid and on other grids, plus the relative-position property of the rotation."""

from __future__ import annotations

import math

import pytest
import torch

from harness.core.tokens import Grid
from harness.cosmos import rope3d
from harness.cosmos.config import Yarn


def reference_angles(grid: Grid, dim: int, base: float, yarn: Yarn | None = None) -> list[list[float]]:
    """Cosmos' layout written out by hand: D_s = 2 * floor(D / 6) per spatial axis, D_t = the rest; angles of
    token (t, h, w) are [t / base^(2i/D_t)] + [h / base^(2i/D_s)] + [w / base^(2i/D_s)], then the list twice."""
    d_s = 2 * (dim // 6)
    d_t = dim - 2 * d_s
    f_t = [base ** (-(2 * i) / d_t) for i in range(d_t // 2)]
    f_s = [base ** (-(2 * i) / d_s) for i in range(d_s // 2)]
    if yarn is not None:
        f_t = [f * yarn_scalar(f, yarn.original_grid[0], yarn) for f in f_t]
        f_s = [f * yarn_scalar(f, yarn.original_grid[1], yarn) for f in f_s]
    rows = []
    for t in range(grid.t):
        for h in range(grid.h):
            for w in range(grid.w):
                half = [t * f for f in f_t] + [h * f for f in f_s] + [w * f for f in f_s]
                rows.append(half + half)
    return rows


def yarn_scalar(freq: float, length: int, y: Yarn) -> float:
    """A frequency completing >= beta_fast turns over `length` positions is kept, <= beta_slow turns is divided
    by the scale, linear ramp (in turns) between."""
    turns = freq * length / (2 * math.pi)
    ramp = min(1.0, max(0.0, (turns - y.beta_slow) / (y.beta_fast - y.beta_slow)))
    return ramp + (1.0 - ramp) / y.scale


@pytest.mark.parametrize("grid,dim", [(Grid(5, 40, 64), 128), (Grid(9, 10, 16), 128), (Grid(3, 4, 4), 16),
                                      (Grid(2, 3, 5), 24)])
def test_angles_match_reference(grid: Grid, dim: int) -> None:
    got = rope3d.rope_angles(grid, dim, 500_000)
    assert got.shape == (grid.tokens, 1, 1, dim)
    ref = torch.tensor(reference_angles(grid, dim, 500_000), dtype=torch.float64)
    assert torch.allclose(got[:, 0, 0].double(), ref, rtol=1e-6, atol=1e-5)


def test_axis_split_of_cosmos_head_dim() -> None:
    assert rope3d.axis_dims(128) == (44, 42, 42)
    assert rope3d.axis_dims(4096) == (1368, 1364, 1364)


def test_yarn_matches_reference_and_bands() -> None:
    y = Yarn(2.0, (3, 40, 64), beta_fast=4, beta_slow=1)
    grid = Grid(5, 40, 64)
    got = rope3d.rope_angles(grid, 128, 500_000, y)[:, 0, 0].double()
    ref = torch.tensor(reference_angles(grid, 128, 500_000, y), dtype=torch.float64)
    assert torch.allclose(got, ref, rtol=1e-6, atol=1e-5)
    f_t, f_s = rope3d.inv_freqs(128, 500_000, y)
    p_t, p_s = rope3d.inv_freqs(128, 500_000, None)
    assert torch.equal(f_s[0], p_s[0])  # 1 rad/position turns 6.4 times over H=40: kept
    assert torch.allclose(f_s[-1], p_s[-1] / 2)  # the slowest spatial frequencies are halved
    assert torch.allclose(f_t, p_t / 2)  # over T=3 even the fastest turns < beta_slow: all temporal halved
    ratio = (f_s / p_s).tolist()
    assert all(a >= b for a, b in zip(ratio, ratio[1:]))  # monotone ramp in between


def _rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """mcore's non-interleaved rotary: x * cos + rotate_half(x) * sin."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * angles.cos() + torch.cat([-x2, x1], dim=-1) * angles.sin()


def test_rotation_depends_on_relative_position_per_axis() -> None:
    """q.k after rotation depends only on (dt, dh, dw): shifting both tokens by the same (t, h, w) offset keeps it."""
    grid = Grid(4, 6, 7)
    ang = rope3d.rope_angles(grid, 32, 10_000)[:, 0, 0].double()
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(32, generator=gen, dtype=torch.float64), torch.randn(32, generator=gen, dtype=torch.float64)

    def idx(t: int, h: int, w: int) -> int:
        return (t * grid.h + h) * grid.w + w

    def score(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
        return float(_rotate(q, ang[idx(*a)]) @ _rotate(k, ang[idx(*b)]))

    base = score((1, 2, 3), (0, 1, 1))
    assert score((3, 5, 6), (2, 4, 4)) == pytest.approx(base, abs=1e-6)  # float32 angles
    assert score((1, 2, 3), (0, 1, 2)) != pytest.approx(base, abs=1e-6)  # a different w offset differs


def test_bov_and_padding_get_zero_angles() -> None:
    grid = Grid(2, 2, 3)
    plain = rope3d.rope_angles(grid, 16, 500_000)
    v2w = rope3d.rope_angles(grid, 16, 500_000, bov=True, length=grid.tokens + 64)
    assert v2w.shape[0] == grid.tokens + 64
    assert torch.count_nonzero(v2w[0]) == 0 and torch.count_nonzero(v2w[grid.tokens + 1:]) == 0
    assert torch.equal(v2w[1:grid.tokens + 1], plain)


def test_abs_sincos_matches_reference() -> None:
    grid, hidden = Grid(3, 4, 5), 48
    got = rope3d.abs_sincos(grid, hidden, bov=True, length=grid.tokens + 3)
    d_s = 2 * (hidden // 6)
    d_t = hidden - 2 * d_s

    def table(d: int, pos: int) -> list[float]:
        om = [1.0 / 10000 ** (i / (d / 2)) for i in range(d // 2)]
        return [math.sin(pos * o) for o in om] + [math.cos(pos * o) for o in om]

    rows = [[0.0] * hidden]
    for t in range(grid.t):
        for h in range(grid.h):
            for w in range(grid.w):
                rows.append(table(d_t, t) + table(d_s, h) + table(d_s, w))
    rows += [[0.0] * hidden] * 2
    assert torch.allclose(got.double(), torch.tensor(rows, dtype=torch.float64), atol=1e-6)


def test_module_slices_positions_and_rejects_overflow() -> None:
    mod = rope3d.Rope3D(Grid(2, 3, 4), 16, 500_000)
    assert torch.equal(mod(5, 7), mod.angles[5:12])
    with pytest.raises(ValueError, match="exceed"):
        mod(20, 5)


def test_fused_rotate_equals_megatron_apply_rotary_pos_emb() -> None:
    """The model applies RoPE in its core attention (`rotate`, one fused kernel on CUDA); it must be the same
    arithmetic as megatron-core's own unfused `apply_rotary_pos_emb` on the same angles."""
    from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd

    from harness.core.tokens import Grid
    from harness.cosmos.model import rotate
    from harness.cosmos.rope3d import rope_angles

    angles = rope_angles(Grid(3, 4, 6), 128, 10_000.0)  # [s, 1, 1, d]
    s = angles.shape[0]
    x = torch.randn(s, 2, 4, 128)  # mcore's [s, b, heads, d]
    ref = _apply_rotary_pos_emb_bshd(x, angles)
    ours = rotate(x.permute(1, 2, 0, 3), angles[:, 0, 0].cos(), angles[:, 0, 0].sin()).permute(2, 0, 1, 3)
    assert torch.allclose(ours, ref, atol=1e-6, rtol=0)
