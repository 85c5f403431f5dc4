"""Video quality metrics: PSNR and SSIM, as TokenBench defines them, fast.

Definitions (the reference backend computes them with scikit-image itself):
- PSNR: ONE mean squared error over every pixel of every compared frame (peak 255), as TokenBench does;
  identical clips have no finite PSNR: `psnr` returns `math.inf` and callers report it explicitly.
- SSIM: `skimage.metrics.structural_similarity(data_range=255, channel_axis=-1)` with its defaults, per frame,
  then averaged over frames. Those defaults are a 7x7 uniform window, K1=0.01, K2=0.03, sample covariance
  (49/48), the SSIM map averaged per channel over the pixels at least 3 from the border, channels averaged.

The fast backend relies on one fact: inside the cropped region every 7x7 window lies in the image, so the
border mode of skimage's filter never matters, and on uint8 input all window sums are exact integers. Only
the final SSIM ratio is floating point. Two engines compute it: a numba kernel (one fused pass per frame;
CPU; the ratio in float32, each window within 1e-6 of skimage, ~1e-8 measured on decoded clips, against the
required 1e-5) and torch (`harness.lib.metrics_torch`: one TorchScript call a clip pair, ratio in float64,
~1e-14; used on CUDA, also runnable on CPU).
Squared-error sums are exact integers in both, so PSNR equals skimage's to float64 rounding.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    import torch

Backend = Literal["auto", "fast", "skimage"]
Engine = Literal["numba", "torch"]

PEAK = 255.0
WIN = 7
"""skimage's default window (gaussian_weights=False)."""
K1, K2 = 0.01, 0.03
C1, C2 = (K1 * PEAK) ** 2, (K2 * PEAK) ** 2
NP = WIN * WIN
CROP = (WIN - 1) // 2


def check_pair(a: NDArray[Any], b: NDArray[Any]) -> None:
    """Both clips must be uint8 [T,H,W,C] of one shape: the exact-integer fast path depends on uint8."""
    if a.shape != b.shape:
        raise ValueError(f"clips differ in shape: {a.shape} vs {b.shape}")
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"clips must be uint8, got {a.dtype} and {b.dtype}")
    if a.ndim != 4 or a.shape[1] < WIN or a.shape[2] < WIN:
        raise ValueError(f"clips must be [T,H,W,C] with H, W >= {WIN}, got {a.shape}")


def psnr_from_mse(mse: float) -> float:
    return math.inf if mse == 0 else 10.0 * math.log10(PEAK * PEAK / mse)


def sse_per_frame(a: NDArray[Any], b: NDArray[Any]) -> NDArray[Any]:
    """Per-frame sum of squared differences (int64, exact) alone: what PSNR needs when SSIM is not asked for."""
    check_pair(a, b)
    d = a.astype(np.int32) - b.astype(np.int32)
    sse: NDArray[np.int64] = np.einsum("thwc,thwc->t", d, d, dtype=np.int64)
    return sse


# ------------------------------------------------------------------------------------------ reference
def psnr_skimage(a: NDArray[Any], b: NDArray[Any]) -> float:
    from skimage.metrics import mean_squared_error

    check_pair(a, b)
    return psnr_from_mse(float(mean_squared_error(a, b)))


def ssim_skimage(a: NDArray[Any], b: NDArray[Any]) -> NDArray[Any]:
    """Per-frame SSIM, computed by scikit-image itself: the reference the fast path is tested against."""
    from skimage.metrics import structural_similarity

    check_pair(a, b)
    return np.array([structural_similarity(a[i], b[i], data_range=PEAK, channel_axis=-1)
                     for i in range(a.shape[0])], dtype=np.float64)


# ------------------------------------------------------------------------------------------ numba
try:
    import numba
    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - numba is a declared dependency; torch still works without it
    HAVE_NUMBA = False


_i32, _f32 = np.int32, np.float32
RGB = 3
"""Channels the numba kernel is compiled for: its row windows need the channel stride as a constant (with a
runtime stride the window loop ran 6x slower); other channel counts use the torch engine."""


def _add_row_py(ar: NDArray[Any], br: NDArray[Any], ao: NDArray[Any], bo: NDArray[Any], c0: NDArray[Any],
                c1: NDArray[Any], c2: NDArray[Any], c3: NDArray[Any],
                c4: NDArray[Any]) -> np.int32:  # pragma: no cover - compiled by numba
    """Slide the 7-row column sums of x, y, x^2, y^2, xy down one row (add row a/b, drop row ao/bo) and return
    the row's sum of squared differences. Column sums are float32 holding exact integers (at most
    7 * 255^2 < 2^24), which keeps the loop 8 lanes wide: numba widens int32 arithmetic to int64."""
    sse = _i32(0)
    for q in range(np.uint64(len(c0))):
        x, y = _f32(ar[q]), _f32(br[q])
        xo, yo = _f32(ao[q]), _f32(bo[q])
        c0[q] += x - xo
        c1[q] += y - yo
        c2[q] += x * x - xo * xo
        c3[q] += y * y - yo * yo
        c4[q] += x * y - xo * yo
        d = x - y
        sse = _i32(sse + _i32(d * d))
    return sse


def _win_py(c: NDArray[Any], q: int) -> np.int32:  # pragma: no cover - compiled by numba
    """7-pixel window sum along a row of interleaved RGB: exact (every partial sum < 2^24), as int32."""
    return _i32(((c[q] + c[q + 3]) + (c[q + 6] + c[q + 9])) + ((c[q + 12] + c[q + 15]) + c[q + 18]))


def _ratio_row_py(c0: NDArray[Any], c1: NDArray[Any], c2: NDArray[Any], c3: NDArray[Any], c4: NDArray[Any],
                  r: NDArray[Any], k1: np.float32, k2: np.float32) -> None:  # pragma: no cover - compiled by numba
    """SSIM of every 7x7 window of one output row into r. The four numerators and denominators are exact
    int32 (at most 2 * (49 * 255)^2 < 2^31); only the ratio is float32, so each window's value has a relative
    error of a few float32 ulps (< 1e-6; SSIM lies in [-1, 1]) and no cancellation can amplify it."""
    r2, r48 = _f32(1.0 / (NP * NP)), _f32(1.0 / (NP * (NP - 1)))
    for q in range(np.uint64(len(r))):
        sx, sy = _win(c0, q), _win(c1, q)
        sxx, syy, sxy = _win(c2, q), _win(c3, q), _win(c4, q)
        sxsy = _i32(sx * sy)
        sq = _i32(_i32(sx * sx) + _i32(sy * sy))
        a1 = _f32(_i32(2 * sxsy)) * r2 + k1
        b1 = _f32(sq) * r2 + k1
        a2 = _f32(_i32(2 * _i32(_i32(NP * sxy) - sxsy))) * r48 + k2
        b2 = _f32(_i32(_i32(NP * _i32(sxx + syy)) - sq)) * r48 + k2
        r[q] = (a1 * a2) / (b1 * b2)


def _row_sum_py(r: NDArray[Any]) -> float:  # pragma: no cover - compiled by numba
    acc = 0.0
    for q in range(np.uint64(len(r))):
        acc += float(r[q])
    return acc


def _clip_kernel_py(a: NDArray[Any], b: NDArray[Any], k1: np.float32, k2: np.float32, ssim_out: NDArray[Any],
                    sse_out: NDArray[Any]) -> None:  # pragma: no cover - compiled by numba
    """a, b: uint8 [T, H, W*3] (rows with channels interleaved, so every pass is contiguous).

    Per frame and row: slide the column sums down (`_add_row`), then the SSIM of every window of the row from
    7-wide sums of the column sums (`_ratio_row`), summed in float64. Fills ssim_out[T] and sse_out[T] (exact
    per-frame sums of squared differences). Every loop is a plain contiguous pass that LLVM vectorises; the
    five column rows are slices of one buffer, offset against 4 KiB aliasing (with separate allocations the
    time flipped by ~25% from run to run)."""
    t_n, h, wc = a.shape
    n = wc - (WIN - 1) * RGB
    stride = (wc + 1023) // 1024 * 1024 + 16
    buf = np.zeros(5 * stride, np.float32)
    c0, c1, c2 = buf[0:wc], buf[stride:stride + wc], buf[2 * stride:2 * stride + wc]
    c3, c4 = buf[3 * stride:3 * stride + wc], buf[4 * stride:4 * stride + wc]
    r = np.zeros(n, np.float32)
    zero = np.zeros(wc, np.uint8)
    for t in range(t_n):
        buf[:] = 0
        total = 0.0
        sse = np.int64(0)
        for i in range(h):
            old_a, old_b = (a[t, i - WIN], b[t, i - WIN]) if i >= WIN else (zero, zero)
            sse += _add_row(a[t, i], b[t, i], old_a, old_b, c0, c1, c2, c3, c4)
            if i >= WIN - 1:
                _ratio_row(c0, c1, c2, c3, c4, r, k1, k2)
                total += _row_sum(r)
        ssim_out[t] = total / ((h - WIN + 1) * n)
        sse_out[t] = sse


if HAVE_NUMBA:
    # fast-math without 'arcp': the ratio keeps a true division, so identical windows give exactly 1
    _jit = numba.njit(cache=True, nogil=True, fastmath={"nnan", "ninf", "nsz", "contract", "reassoc", "afn"},
                      error_model="numpy")
    _add_row, _win, _ratio_row, _row_sum = _jit(_add_row_py), _jit(_win_py), _jit(_ratio_row_py), _jit(_row_sum_py)
    _clip_kernel = _jit(_clip_kernel_py)

_NUMBA_SKIPS = ("scipy.linalg.cython_blas", "cffi")
"""What numba imports when it loads its first kernel only to offer features these kernels never use: BLAS for
np.dot/np.linalg in kernels (importing scipy.linalg costs ~0.16 CPU-s, most of it parsing docstrings) and cffi
function calls (~0.03 CPU-s). `harness evaluate` of one pair spends 15 ms in the kernel and was paying both."""
_loaded = threading.Lock()
_kernel_ready = False


def _load_kernel(a: NDArray[Any], b: NDArray[Any], ssim: NDArray[Any], sse: NDArray[Any]) -> None:
    """The first call (numba loads the cached kernel, or compiles it) with the modules of `_NUMBA_SKIPS` hidden
    where nothing has imported them yet (a None entry makes `import` fail at once; numba then records those
    features as absent), restored afterwards so later imports of scipy or cffi work as ever."""
    global _kernel_ready
    with _loaded:
        if _kernel_ready:
            _clip_kernel(a, b, _f32(C1), _f32(C2), ssim, sse)
            return
        hidden = [m for m in _NUMBA_SKIPS if m not in sys.modules]
        for m in hidden:
            sys.modules[m] = None  # type: ignore[assignment]  # None: the import system's 'not importable'
        try:
            _clip_kernel(a, b, _f32(C1), _f32(C2), ssim, sse)
        finally:
            for m in hidden:
                if sys.modules.get(m, 0) is None:
                    del sys.modules[m]
        _kernel_ready = True


def _numba_clip(a: NDArray[Any], b: NDArray[Any]) -> tuple[NDArray[Any], NDArray[Any]]:
    if not HAVE_NUMBA:
        raise ImportError("the fast CPU metrics need numba: pip install numba (or use backend='skimage')")
    t, h, w, c = a.shape
    if c != RGB:
        return clip_torch(a, b, "cpu")
    ssim, sse = np.empty(t, dtype=np.float64), np.empty(t, dtype=np.int64)
    if not _kernel_ready:
        _load_kernel(np.ascontiguousarray(a).reshape(t, h, w * c), np.ascontiguousarray(b).reshape(t, h, w * c),
                     ssim, sse)
        return sse, ssim
    _clip_kernel(np.ascontiguousarray(a).reshape(t, h, w * c), np.ascontiguousarray(b).reshape(t, h, w * c),
                 _f32(C1), _f32(C2), ssim, sse)
    return sse, ssim


# ------------------------------------------------------------------------------------------ torch
def clip_torch(a: NDArray[Any] | torch.Tensor, b: NDArray[Any] | torch.Tensor,
               device: str = "cpu") -> tuple[NDArray[Any], NDArray[Any]]:
    """(per-frame SSE, per-frame SSIM) on torch (`harness.lib.metrics_torch`): the engine used on CUDA."""
    from harness.lib import metrics_torch

    return metrics_torch.clip(a, b, device, WIN, C1, C2)


# ------------------------------------------------------------------------------------------ public
def fast_engine(device: str) -> Engine:
    """numba on CPU (one fused pass, no temporaries); torch where the data lives on a GPU."""
    return "torch" if device.startswith("cuda") else "numba"


def gpu_device_nodes() -> bool:
    """Whether this machine exposes a GPU to processes at all (NVIDIA's /dev/nvidia<N>, ROCm's /dev/kfd)."""
    import glob

    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/kfd")


def default_device() -> str:
    """cuda when torch sees a GPU. Without GPU device nodes there is none to see, and importing torch is
    skipped: on a CPU node it was most of evaluate's start-up (~1.5 s of ~3.6 s before the first pair)."""
    if not gpu_device_nodes():
        return "cpu"
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover
        return "cpu"


def resolve_backend(backend: str) -> Literal["fast", "skimage"]:
    if backend in ("auto", "fast"):
        return "fast"
    if backend == "skimage":
        return "skimage"
    raise ValueError(f"metric backend {backend!r}: must be one of auto, fast, skimage")


def clip_metrics(a: NDArray[Any], b: NDArray[Any], backend: str = "auto", device: str = "cpu",
                 engine: Engine | None = None) -> tuple[NDArray[Any], NDArray[Any]]:
    """(per-frame sum of squared differences (int64), per-frame SSIM) of two aligned uint8 clips.

    Squared-error SUMS (exact integers) rather than PSNR, so that callers pool any subset of frames (all
    compared frames, or only the predicted ones) into one MSE without recomputing."""
    check_pair(a, b)
    if resolve_backend(backend) == "skimage":
        from skimage.metrics import mean_squared_error

        n = a[0].size
        sse = np.array([round(float(mean_squared_error(x, y)) * n) for x, y in zip(a, b)], dtype=np.int64)
        return sse, ssim_skimage(a, b)
    engine = engine or fast_engine(device)
    if engine == "torch":
        return clip_torch(a, b, device)
    return _numba_clip(a, b)


def psnr(a: NDArray[Any], b: NDArray[Any], backend: str = "auto", device: str = "cpu") -> float:
    """PSNR of one MSE over the whole clip; math.inf when the clips are identical."""
    if resolve_backend(backend) == "skimage":
        return psnr_skimage(a, b)
    return psnr_from_mse(int(clip_metrics(a, b, backend, device)[0].sum()) / a.size)


def ssim(a: NDArray[Any], b: NDArray[Any], backend: str = "auto", device: str = "cpu") -> float:
    """Mean over frames of skimage's per-frame SSIM."""
    return float(clip_metrics(a, b, backend, device)[1].mean())


# ------------------------------------------------------------------------------------- the evaluate stage's kernels
def frame_values(a: NDArray[Any], b: NDArray[Any], names: Sequence[str], backend: str = "auto",
                 device: str = "cpu") -> dict[str, NDArray[Any]]:
    """Metric name (`harness.core.metrics_table`) -> per-frame values of two aligned clips, what `REDUCE[name]`
    turns into one number over any subset of frames: PSNR's exact squared-error sums, SSIM per frame. SSIM's
    kernel yields the sums in the same pass; PSNR alone runs only the cheap one."""
    if "ssim" in names:
        sse, ssim_frames = clip_metrics(a, b, backend, device)
        return {"psnr": sse, "ssim": ssim_frames}
    return {"psnr": sse_per_frame(a, b)}


def _psnr_of_sums(sse: NDArray[Any], frame_pixels: int) -> float:
    return psnr_from_mse(int(sse.sum()) / (len(sse) * frame_pixels))


def _mean_of_frames(values: NDArray[Any], frame_pixels: int) -> float:
    return float(values.mean())


REDUCE: Mapping[str, Callable[[NDArray[Any], int], float]] = {"psnr": _psnr_of_sums, "ssim": _mean_of_frames}
"""Metric name -> (its per-frame values over some frames, pixels a frame) -> the metric over those frames;
math.inf where a metric is infinite for identical frames (PSNR)."""
