"""The fast metrics equal scikit-image's on random frames and on real decoded mp4 frames."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from harness.lib import metrics
from harness.lib.synth import smooth_clip
from harness.lib.video import ClipShape, load_clip, write_mp4

TOL = {"numba": 1e-6, "torch": 1e-9}
"""SSIM atol per engine: the numba kernel's ratio is float32 (bound 1e-6 a window), torch's float64; the
requirement is 1e-5."""


def _sk_ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([structural_similarity(a[i], b[i], data_range=255, channel_axis=-1) for i in range(len(a))])


def _random_pair(seed: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    noise = rng.integers(-40, 41, shape)
    return a, np.clip(a.astype(int) + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("engine", ["numba", "torch"])
@pytest.mark.parametrize("shape", [(3, 33, 47, 3), (2, 7, 7, 3), (1, 64, 96, 1), (2, 40, 9, 3)])
def test_fast_equals_skimage_random(engine: str, shape: tuple[int, ...]) -> None:
    a, b = _random_pair(sum(shape), shape)
    sse, ssim = metrics.clip_metrics(a, b, "fast", "cpu", engine=engine)  # type: ignore[arg-type]
    np.testing.assert_allclose(ssim, _sk_ssim(a, b), rtol=0, atol=TOL[engine])
    np.testing.assert_array_equal(sse, ((a.astype(np.int64) - b) ** 2).sum(axis=(1, 2, 3)))
    psnr = metrics.psnr_from_mse(int(sse.sum()) / a.size)
    assert abs(psnr - peak_signal_noise_ratio(a, b, data_range=255)) < 1e-6


def test_extreme_values_do_not_overflow() -> None:
    """Saturated frames drive every window sum to its maximum: the int32 bounds must hold."""
    a = np.full((2, 16, 16, 3), 255, np.uint8)
    b = a.copy()
    b[1, ::2] = 0
    for engine in ("numba", "torch"):
        sse, ssim = metrics.clip_metrics(a, b, "fast", "cpu", engine=engine)  # type: ignore[arg-type]
        np.testing.assert_allclose(ssim, _sk_ssim(a, b), atol=TOL[engine])
        assert sse.sum() == int(((a.astype(np.int64) - b) ** 2).sum())


@pytest.mark.parametrize("engine", ["numba", "torch"])
def test_float32_ratio_worst_cases(engine: str) -> None:
    """Where a float32 ratio could lose most: bright flat windows (large means, tiny variances), anti-correlated
    texture whose covariance cancels C2, and full-range noise; every frame within the engine's tolerance."""
    rng = np.random.default_rng(7)
    shape = (1, 24, 40, 3)
    flat = np.full(shape, 250, np.uint8)
    flat_b = (flat - rng.integers(0, 2, shape)).astype(np.uint8)
    base = rng.integers(100, 156, shape)
    anti = np.clip(255 - base + rng.integers(-3, 4, shape), 0, 255).astype(np.uint8)
    noise_a, noise_b = (rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(2))
    for a, b in ((flat, flat_b), (base.astype(np.uint8), anti), (noise_a, noise_b)):
        ssim = metrics.clip_metrics(a, b, "fast", "cpu", engine=engine)[1]  # type: ignore[arg-type]
        np.testing.assert_allclose(ssim, _sk_ssim(a, b), rtol=0, atol=TOL[engine])


def test_fast_equals_skimage_on_decoded_mp4(tmp_path: Path) -> None:
    clip = smooth_clip(9, 64, 96, seed=3)
    write_mp4(tmp_path / "a.mp4", clip, 25, crf=30)
    decoded = load_clip(tmp_path / "a.mp4", ClipShape(9, 64, 96))
    assert not np.array_equal(decoded, clip)  # lossy: a real comparison, not identical arrays
    fast_sse, fast_ssim = metrics.clip_metrics(clip, decoded, "fast", "cpu")
    ref_sse, ref_ssim = metrics.clip_metrics(clip, decoded, "skimage")
    np.testing.assert_array_equal(fast_sse, ref_sse)
    np.testing.assert_allclose(fast_ssim, ref_ssim, atol=TOL["numba"])
    assert abs(metrics.psnr(clip, decoded) - metrics.psnr(clip, decoded, "skimage")) < 1e-6
    assert 20 < metrics.psnr(clip, decoded) < 60 and 0.5 < fast_ssim.mean() < 1


@pytest.mark.parametrize("backend", ["fast", "skimage"])
def test_identical_clips(backend: str) -> None:
    a, _ = _random_pair(1, (2, 20, 20, 3))
    assert metrics.psnr(a, a.copy(), backend) == math.inf
    assert metrics.ssim(a, a.copy(), backend) == pytest.approx(1.0, abs=1e-12)


def test_bad_input_is_rejected() -> None:
    a, b = _random_pair(2, (2, 20, 20, 3))
    with pytest.raises(ValueError, match="shape"):
        metrics.clip_metrics(a, b[:1])
    with pytest.raises(ValueError, match="uint8"):
        metrics.clip_metrics(a.astype(np.float32), b.astype(np.float32))
    with pytest.raises(ValueError, match="backend"):
        metrics.clip_metrics(a, b, "fastest")
