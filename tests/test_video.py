"""Video I/O: resize-to-cover + center crop, first T frames, last-frame padding, clear errors, atomic mp4s."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.core.errors import HarnessError
from harness.lib import synth
from harness.lib.video import ClipShape, VideoError, cover_size, load_clip, load_frames, try_load, write_mp4


def _bands(frames: int, height: int, width: int) -> np.ndarray:
    """Left third red, middle green, right third blue; brightness rises with the frame number."""
    v = np.zeros((frames, height, width, 3), np.uint8)
    third = width // 3
    for t in range(frames):
        level = 60 + 10 * t
        v[t, :, :third, 0] = level
        v[t, :, third:2 * third, 1] = level
        v[t, :, 2 * third:, 2] = level
    return v


def test_cover_size() -> None:
    assert cover_size(1920, 1080, 512, 320) == (569, 320)
    assert cover_size(480, 640, 512, 320) == (512, 683)
    assert cover_size(512, 320, 512, 320) == (512, 320)
    assert cover_size(100, 100, 64, 48) == (64, 64)


def test_round_trip_at_the_same_size(tmp_path: Path) -> None:
    clip = synth.smooth_clip(9, 48, 64, seed=3)
    write_mp4(tmp_path / "a.mp4", clip, fps=25)
    back = load_clip(tmp_path / "a.mp4", ClipShape(9, 48, 64))
    assert back.shape == (9, 48, 64, 3) and back.dtype == np.uint8
    mse = ((back.astype(float) - clip) ** 2).mean()
    assert 10 * np.log10(255**2 / mse) > 32  # H.264 at crf 12 with 4:2:0 chroma
    assert [p.name for p in tmp_path.iterdir()] == ["a.mp4"]  # no temp files left behind


def test_fast_decode_writes_cavlc_with_the_same_quality(tmp_path: Path) -> None:
    """The infer stage's writer: x264 records its settings in the stream; CAVLC is cabac=0, default is 1."""
    clip = synth.smooth_clip(9, 48, 64, seed=3)
    write_mp4(tmp_path / "fast.mp4", clip, fps=25, fast_decode=True)
    write_mp4(tmp_path / "default.mp4", clip, fps=25)
    assert b"cabac=0" in (tmp_path / "fast.mp4").read_bytes()
    assert b"cabac=1" in (tmp_path / "default.mp4").read_bytes()
    psnr = {}
    for name in ("fast", "default"):
        back = load_clip(tmp_path / f"{name}.mp4", ClipShape(9, 48, 64))
        psnr[name] = 10 * np.log10(255**2 / ((back.astype(float) - clip) ** 2).mean())
    assert abs(psnr["fast"] - psnr["default"]) < 0.5


def test_reused_reformatter_gives_pyav_pixels(tmp_path: Path) -> None:
    """load_frames converts through one swscale context per thread: the same rgb24 as PyAV's own per-frame
    `to_ndarray` / `reformat`, at the video's size and resized to cover."""
    import av

    write_mp4(tmp_path / "a.mp4", synth.smooth_clip(5, 72, 128, seed=4), fps=25)
    with av.open(str(tmp_path / "a.mp4")) as c:
        frames = list(c.decode(c.streams.video[0]))
    own = np.stack([f.to_ndarray(format="rgb24") for f in frames])
    resized = np.stack([f.reformat(width=64, height=36, format="rgb24", interpolation="AREA").to_ndarray()
                        for f in frames])
    np.testing.assert_array_equal(load_frames(tmp_path / "a.mp4"), own)
    np.testing.assert_array_equal(load_frames(tmp_path / "a.mp4", (36, 64), resize="area"), resized)


def test_wide_clip_is_center_cropped(tmp_path: Path) -> None:
    write_mp4(tmp_path / "wide.mp4", _bands(5, 48, 144), fps=25)  # 3:1 -> 1:1 keeps only the middle third
    out = load_clip(tmp_path / "wide.mp4", ClipShape(5, 48, 48))
    mean = out[:, 4:-4, 4:-4].reshape(-1, 3).mean(axis=0)
    assert mean[1] > 50 and mean[0] < 10 and mean[2] < 10


def test_tall_clip_is_resized_to_cover_then_cropped(tmp_path: Path) -> None:
    clip = synth.smooth_clip(5, 96, 48, seed=1)
    write_mp4(tmp_path / "tall.mp4", clip, fps=25)
    out = load_clip(tmp_path / "tall.mp4", ClipShape(5, 32, 64, "area"))  # scale x4/3 -> 128x64, crop rows 48..80
    import av

    with av.open(str(tmp_path / "tall.mp4")) as c:
        f = next(c.decode(video=0)).reformat(width=64, height=128, format="rgb24", interpolation="AREA").to_ndarray()
    assert np.array_equal(out[0], f[48:80])


def _upstream_pixels(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Upstream's dataset preparation, computed here on the whole clip at once: uint8 -> fp32 [-1, 1], the
    bilinear antialiased resize torchvision's functional resize runs on a float tensor, to ceil(scale x size),
    torchvision's center crop offsets, then back to uint8 as the DV encoder's input (rounded to nearest)."""
    import math

    import torch

    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    x = x * 2 - 1
    src_h, src_w = x.shape[2], x.shape[3]
    scale = max(width / src_w, height / src_h)
    size = (int(math.ceil(scale * src_h)), int(math.ceil(scale * src_w)))
    x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    top, left = int(round((size[0] - height) / 2.0)), int(round((size[1] - width) / 2.0))
    x = x[:, :, top:top + height, left:left + width]
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize(("src", "dst"), [
    ((54, 96), (32, 48)),    # down, scale 0.593 -> 32x57: 9 columns cut, torchvision's round(4.5) = 4
    ((96, 48), (32, 64)),    # up x4/3 -> 128x64, rows 48..80
    ((50, 90), (32, 48)),    # scale 0.64 -> 32x57.6: ceil to 58 where round gives 58 too; 10 columns cut
    ((70, 46), (48, 48)),    # 73.04 rows rounded UP to 74: a 26-row excess, 13 each side
    ((48, 64), (48, 64)),    # same size: no resize, the decoded pixels themselves
])
def test_upstream_resize_gives_upstreams_pixels(tmp_path: Path, src: tuple[int, int], dst: tuple[int, int]) -> None:
    """video.resize = "upstream" (the default): for the same decoded frames, the pixels of upstream's preparation."""
    import av

    write_mp4(tmp_path / "v.mp4", synth.smooth_clip(4, *src, seed=7), fps=25)
    with av.open(str(tmp_path / "v.mp4")) as c:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    want = _upstream_pixels(decoded, *dst)
    got = load_clip(tmp_path / "v.mp4", ClipShape(4, *dst))
    np.testing.assert_array_equal(got, want)
    if src != dst:  # the other choice is a different resize: "area" does not give these pixels
        assert not np.array_equal(load_clip(tmp_path / "v.mp4", ClipShape(4, *dst, "area")), want)


def test_upstream_cover_size_rounds_up() -> None:
    from harness.lib.video import upstream_cover_size, upstream_crop

    assert upstream_cover_size(1920, 1080, 512, 320) == (569, 320)  # 568.9 -> 569 (round agrees)
    assert upstream_cover_size(46, 70, 48, 48) == (48, 74)          # 73.04 -> 74 (round: 73)
    assert upstream_crop(320, 569, 320, 512) == (0, 28)             # round(28.5) = 28, half to even
    assert upstream_crop(320, 571, 320, 512) == (0, 30)             # round(29.5) = 30


def test_first_frames_and_padding_with_the_last_frame(tmp_path: Path) -> None:
    write_mp4(tmp_path / "b.mp4", _bands(9, 32, 48), fps=25)
    full = load_clip(tmp_path / "b.mp4", ClipShape(9, 32, 48))
    first = load_clip(tmp_path / "b.mp4", ClipShape(5, 32, 48))
    assert np.array_equal(first, full[:5])
    padded = load_clip(tmp_path / "b.mp4", ClipShape(17, 32, 48))
    assert np.array_equal(padded[:9], full)
    assert all(np.array_equal(padded[t], full[8]) for t in range(9, 17))
    assert full[:, :, 20, 1].mean(axis=1).tolist() == sorted(full[:, :, 20, 1].mean(axis=1).tolist())


def test_broken_files_raise_one_line_errors(tmp_path: Path) -> None:
    paths = synth.make_bad_files(tmp_path)
    shape = ClipShape(9, 32, 32)
    for p in paths:
        with pytest.raises(VideoError) as e:
            load_clip(p, shape)
        assert str(e.value).startswith(str(p) + ": ") and "\n" not in str(e.value)
        clip, reason = try_load(str(p), shape)
        assert clip is None and reason == e.value.reason
    assert try_load(str(tmp_path / "empty.mp4"), shape)[1] == "empty file: 0 bytes"
    assert try_load(str(tmp_path / "notes.mp4"), shape)[1].startswith("cannot decode")
    missing = try_load(str(tmp_path / "missing.mp4"), shape)
    assert missing[0] is None and "No such file" in missing[1]


def test_write_mp4_rejects_bad_frames(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="uint8"):
        write_mp4(tmp_path / "x.mp4", np.zeros((2, 8, 8, 3), np.float32), 25)
    with pytest.raises(HarnessError, match="even"):
        write_mp4(tmp_path / "x.mp4", np.zeros((2, 9, 8, 3), np.uint8), 25)
    assert not list(tmp_path.iterdir())


def test_load_frames_returns_real_frames_only(tmp_path: Path) -> None:
    """The evaluate stage's single-pass loader: native size, no padding, `max_frames` stops early, and the
    cropped path gives the same frames as load_clip."""
    clip = _bands(5, 48, 96)
    write_mp4(tmp_path / "a.mp4", clip, fps=25)
    native = load_frames(tmp_path / "a.mp4")
    assert native.shape == (5, 48, 96, 3) and native.flags.c_contiguous
    assert load_frames(tmp_path / "a.mp4", max_frames=3).shape == (3, 48, 96, 3)
    assert load_frames(tmp_path / "a.mp4", (32, 32), max_frames=9).shape == (5, 32, 32, 3)  # 5 real frames
    padded = load_clip(tmp_path / "a.mp4", ClipShape(9, 32, 32))
    assert np.array_equal(padded[:5], load_frames(tmp_path / "a.mp4", (32, 32))) and (padded[5:] == padded[4]).all()
