"""TokenBench's preprocessing (evaluate.protocol = "tokenbench"), written from upstream's documented behaviour
so that its numbers compare with the ones upstream's token_bench.py prints.

Per file, as that tool prepares both directories before it scores them: the first `frames` decoded frames;
the short side resized to `short_side` (the other side scaled and rounded half up) with Lanczos (PIL's, the
filter its media library uses), no crop; the result re-encoded as H.264 at a constant quantiser (qp 28 above
640x480 pixels, else 20; yuv420p, or yuv444p when a side is odd; the encoder's default preset; RGB to YUV
with swscale's bicubic, as the ffmpeg program converts) at the file's frame rate and decoded back. Frame i of one file
is then scored against frame i of the other (the metric
kernels of `harness.lib.metrics`, which compute TokenBench's definitions).

Upstream drives the ffmpeg program for the H.264 round trip and its reads; this module uses PyAV (the same
libx264 settings, swscale for the colour conversions). `results/bench/tokenbench-parity.json` records how far
the two land apart on the same pairs.
"""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from numpy.typing import NDArray

from harness.core.errors import HarnessError
from harness.lib.video import load_frames

FRAMES = 17
SHORT_SIDE = 320
SMALL_PIXELS = 640 * 480
"""At most this many pixels a frame: qp 20; above: qp 28."""


def short_side_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) with the short side at `short_side`, the other scaled and rounded half up."""
    if height <= width:
        return short_side, int(width * short_side / height + 0.5)
    return int(height * short_side / width + 0.5), short_side


def lanczos(frames: NDArray[np.uint8], size: tuple[int, int]) -> NDArray[np.uint8]:
    """uint8 [T, H, W, 3] resized to size = (h, w) frame by frame with PIL's Lanczos (a copy when unchanged)."""
    from PIL import Image

    h, w = size
    if frames.shape[1:3] == (h, w):
        return frames.copy()
    return np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.Resampling.LANCZOS)) for f in frames])


def qp_for(height: int, width: int) -> int:
    return 20 if height * width <= SMALL_PIXELS else 28


def round_trip(frames: NDArray[np.uint8], fps: Fraction | int) -> NDArray[np.uint8]:
    """uint8 [T, H, W, 3] through H.264 at TokenBench's constant quantiser and back, in memory."""
    t, h, w, _ = frames.shape
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p" if h % 2 == 0 and w % 2 == 0 else "yuv444p"
        stream.options = {"qp": str(qp_for(h, w))}
        # x264's frame threads at its automatic count, as the ffmpeg program runs it (PyAV's default, slice
        # threads, cuts each frame into slices: another bitstream, up to 0.09 dB apart on the parity pairs)
        stream.codec_context.thread_type, stream.codec_context.thread_count = "FRAME", 0
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            # the ffmpeg program converts with swscale's bicubic (PyAV's default, bilinear, moves chroma by 1 level)
            for packet in stream.encode(frame.reformat(format=stream.pix_fmt, interpolation="BICUBIC")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    buf.seek(0)
    with av.open(buf, mode="r") as src:
        back = [f.to_ndarray(format="rgb24") for f in src.decode(video=0)]
    if len(back) != t:
        raise HarnessError(f"H.264 round trip returned {len(back)} of {t} frames")
    return np.stack(back)


def frame_rate(path: str | Path) -> Fraction:
    """The file's average frame rate (25 where the container declares none): the rate it is re-encoded at."""
    with av.open(str(path), mode="r") as c:
        rate = c.streams.video[0].average_rate if c.streams.video else None
    return Fraction(rate) if rate else Fraction(25)


def prepare(path: str | Path, frames: int = FRAMES, short_side: int = SHORT_SIDE) -> NDArray[np.uint8]:
    """One file as TokenBench scores it: uint8 [n <= frames, h, w, 3]."""
    clip = load_frames(path, None, frames)
    resized = lanczos(clip, short_side_size(clip.shape[1], clip.shape[2], short_side))
    return round_trip(resized, frame_rate(path))


def prepare_pair(reference: str | Path, generated: str | Path, frames: int = FRAMES,
                 short_side: int = SHORT_SIDE) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """Both files prepared; they must agree in frame count and size, since frame i is scored against frame i
    (upstream's tool stops on a mismatch; here the pair fails with this reason)."""
    ref, gen = prepare(reference, frames, short_side), prepare(generated, frames, short_side)
    if ref.shape != gen.shape:
        raise HarnessError(f"tokenbench protocol: {generated} prepares to {_shape(gen)} but its reference "
                           f"{reference} to {_shape(ref)}; frame i is compared with frame i of the first "
                           f"{frames} at short side {short_side}, so both need the same frame count and aspect")
    return ref, gen


def _shape(a: NDArray[np.uint8]) -> str:
    return f"{a.shape[0]} frames of {a.shape[2]}x{a.shape[1]}"
