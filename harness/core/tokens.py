"""Token-grid math: the one place that turns (frames, height, width) and a tokenizer's compression into
latent grids and sequence lengths. The seed tutorial's arithmetic is wrong in places; this computes."""

from __future__ import annotations

from dataclasses import dataclass

from harness.core.models import ModelPreset

VOCAB_CODES = 64_000
"""FSQ levels [8,8,8,5,5,5]: the DV4x8x8 and DV8x16x16 tokenizers share this codebook size."""
BOV_ID = 64_000
PAD_ID = 64_002
VIDEO2WORLD_PAD = 64
"""Video2World samples are [BOV] + video tokens + [PAD] x 64, as the public recipe builds them."""


@dataclass(frozen=True)
class Grid:
    t: int
    h: int
    w: int

    @property
    def tokens(self) -> int:
        return self.t * self.h * self.w

    def __str__(self) -> str:
        return f"{self.t}x{self.h}x{self.w}"


@dataclass(frozen=True)
class TokenMath:
    frames: int
    height: int
    width: int
    compression: tuple[int, int, int]
    grid: Grid
    video2world: bool
    model_max: int
    pretrain_grid: Grid

    @property
    def video_tokens(self) -> int:
        return self.grid.tokens

    @property
    def sample_length(self) -> int:
        """Tokens stored per sample: the video alone, or [BOV] + video + [PAD] x 64 for Video2World."""
        return self.grid.tokens + (1 + VIDEO2WORLD_PAD if self.video2world else 0)

    @property
    def latent_frames(self) -> int:
        return self.grid.t

    def context_frames(self, context_latent_frames: int) -> int:
        """Pixel frames behind the first latent frames of a causal tokenizer: upstream's "last 9 frames"
        are 2 latent frames at t=8; at t=4 the same 2 latent frames are 5 pixel frames."""
        return 1 + (context_latent_frames - 1) * self.compression[0]

    def describe(self) -> str:
        t, h, w = self.compression
        line = (f"{self.frames}x{self.height}x{self.width} @ {t}x{h}x{w} -> {self.grid} = "
                f"{self.grid.tokens:,} tokens (model max {self.model_max:,})")
        if self.video2world:
            line += f"; Video2World sample [BOV]+video+[PAD]x{VIDEO2WORLD_PAD} = {self.sample_length:,}"
        return line


def latent_frames(frames: int, t: int) -> int:
    """A causal tokenizer keeps the first frame alone and compresses the rest by t."""
    return (frames - 1) // t + 1


def compute(frames: int, height: int, width: int, compression: tuple[int, int, int],
            model: ModelPreset) -> TokenMath:
    t, h, w = compression
    grid = Grid(latent_frames(frames, t), height // h, width // w)
    return TokenMath(frames, height, width, compression, grid, model.video2world, model.seq_length,
                     Grid(*model.pretrain_grid))


def problems(tm: TokenMath) -> list[tuple[str, str]]:
    """(key, message) pairs for every reason this geometry cannot train; empty when it can."""
    t, h, w = tm.compression
    out: list[tuple[str, str]] = []
    if (tm.frames - 1) % t:
        lo = (tm.frames - 1) // t * t + 1
        out.append(("video.num_frames", f"= {tm.frames}: must be 1 + k*{t} for temporal compression {t} "
                                        f"(e.g. {lo} or {lo + t})"))
    if tm.height % h:
        out.append(("video.height", f"= {tm.height}: must be divisible by spatial compression {h}"))
    if tm.width % w:
        out.append(("video.width", f"= {tm.width}: must be divisible by spatial compression {w}"))
    if not out and tm.sample_length > tm.model_max:
        out.append(("video", f"{tm.frames}x{tm.height}x{tm.width} @ {t}x{h}x{w} -> {tm.grid} = "
                             f"{tm.sample_length:,} tokens: exceeds the model's maximum sequence length "
                             f"{tm.model_max:,}; use fewer frames or a lower resolution"))
    return out


def warnings(tm: TokenMath) -> list[str]:
    if tm.grid != tm.pretrain_grid:
        return [f"latent grid {tm.grid} differs from the pretraining grid {tm.pretrain_grid}: "
                f"3D RoPE positions beyond it are extrapolated"]
    return []
