"""The Cosmos discrete-video (DV) tokenizer: the one place that loads its TorchScript `encoder.jit` /
`decoder.jit` and calls them, for the tokenize and infer stages and the benches. It takes a file, a device and
(optionally) a dtype, and knows nothing of run specs or run directories.

Numerics follow the public Cosmos AR code (NVIDIA/Cosmos, branch archived-ces2025):
- TorchScript's tensor-expression fuser is switched off before every `torch.jit.load`
  (`cosmos1/models/autoregressive/tokenizer/discrete_video.py:23-25` at import and `:37-41` in `load_jit_model`;
  also `nemo/inference/general.py:42`, `nemo/inference/video2world.py:40`, `inference/base.py:114`,
  `inference/video2world.py:147`): with it on, repeated calls of the same module can return different outputs
  (pytorch/pytorch#74534). Upstream sets no other TorchScript flag (no profiling-executor or fusion-strategy
  change), so neither does this module.
- Pixels become [-1, 1] in fp32 (`x.float() / 255.0`, then `* 2 - 1`: `nemo/utils.py:76-77`,
  `utils/inference.py:294-295`) and only then take the model dtype (`discrete_video.py:120,126`
  `self.encoder(state.to(self.dtype))`): one rounding, not a bf16 cast followed by bf16 arithmetic.
- Modules run in bf16 on CUDA (`is_bf16=True`, `discrete_video.py:82,233,246`), fp32 on a CPU (the published
  .jit files may hold bf16 weights; CPU bf16 convolutions are slow and not what upstream ran).

Pipelining (the tokenize stage's encoder-busy figures, `results/bench/h200/tokenize-dv-cuda.json`): `submit`
copies a pinned uint8 batch to the GPU, normalises there and starts the encoder without waiting; the spans of
CUDA events give the encoder's busy time on the GPU's own timeline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from numpy.typing import NDArray

from harness.core.errors import HarnessError


def model_dtype(device: torch.device) -> torch.dtype:
    """The dtype the DV modules and their inputs take on `device` (upstream's bf16 on a GPU)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def disable_texpr_fuser() -> None:
    """Upstream's `torch._C._jit_set_texpr_fuser_enabled(False)` (discrete_video.py:39): process-wide, so every
    TorchScript module this process runs afterwards is unfused too."""
    torch._C._jit_set_texpr_fuser_enabled(False)


def load_jit(path: str | Path, device: torch.device, dtype: torch.dtype | None = None,
             role: str = "module") -> Any:
    """A DV TorchScript module in eval mode on `device`, in `dtype` (default `model_dtype(device)`), frozen."""
    disable_texpr_fuser()
    try:
        module = torch.jit.load(str(path), map_location=device).eval()
    except (RuntimeError, OSError, ValueError) as e:
        raise HarnessError(f"{path}: cannot load TorchScript {role}: {str(e).splitlines()[0]}") from None
    for p in module.parameters():  # discrete_video.py:231-232
        p.requires_grad_(False)
    return module.to(dtype or model_dtype(device))


def normalise(clips: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 [B,T,H,W,3] -> contiguous [B,3,T,H,W] in [-1, 1]: scaled in fp32 in place (one fp32 copy, in
    the channels-first layout convolutions want), then one cast to `dtype`."""
    x = clips.permute(0, 4, 1, 2, 3).to(torch.float32, memory_format=torch.contiguous_format)
    x.div_(255.0).mul_(2.0).sub_(1.0)
    return x.to(dtype)


def to_uint8(video: torch.Tensor) -> NDArray[Any]:
    """Decoder output [B,3,T,H,W] in [-1, 1] -> uint8 [B,T,H,W,3] on the host (fp32, rounded to nearest)."""
    v = ((video.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return v.permute(0, 2, 3, 4, 1).cpu().numpy()


def indices_of(out: Any) -> torch.Tensor:
    """Cosmos DV encoders return (indices, codes, ...); the indices come first."""
    indices: torch.Tensor = out[0] if isinstance(out, (tuple, list)) else out
    return indices


def span_seconds(spans: list[tuple[Any, Any]], cuda: bool) -> tuple[float, float]:
    """(time inside the spans, time from the first start to the last end) in seconds, of (start, end) pairs:
    CUDA events (on the GPU's timeline; all recorded and complete) or perf_counter readings."""
    if not spans:
        return 0.0, 0.0
    if cuda:
        return (sum(a.elapsed_time(b) for a, b in spans) / 1000.0,
                spans[0][0].elapsed_time(spans[-1][1]) / 1000.0)
    return sum(b - a for a, b in spans), spans[-1][1] - spans[0][0]


@dataclass
class Pending:
    indices: torch.Tensor
    done: Any
    start: Any
    end: Any
    keep: Any
    """The pinned input buffer, held until the copy that reads it has finished."""


@dataclass
class Encoder:
    """encoder.jit on a device, timed so the busy fraction can be reported."""

    module: Any
    device: torch.device
    dtype: torch.dtype
    spans: list[tuple[Any, Any]] = field(default_factory=list)
    """Per submitted batch (start, end): CUDA events on the GPU's timeline, perf_counter seconds on a CPU."""

    @staticmethod
    def load(path: str | Path, device: torch.device, dtype: torch.dtype | None = None) -> "Encoder":
        dtype = dtype or model_dtype(device)
        return Encoder(load_jit(path, device, dtype, "encoder"), device, dtype)

    @torch.no_grad()
    def encode(self, clips: NDArray[Any] | torch.Tensor) -> torch.Tensor:
        """uint8 [B,T,H,W,3] -> int64 indices [B,T',H',W'] on the device (synchronous, untimed)."""
        x = torch.as_tensor(clips).to(self.device)
        return indices_of(self.module(normalise(x, self.dtype))).to(torch.int64)

    @torch.no_grad()
    def submit(self, clips: torch.Tensor) -> Pending:
        """Start encoding uint8 [B,T,H,W,3]; on CUDA this returns before the GPU finishes."""
        if self.device.type != "cuda":
            t0 = time.perf_counter()
            idx = indices_of(self.module(normalise(clips, self.dtype))).to(torch.int64)
            self.spans.append((t0, time.perf_counter()))
            return Pending(idx, None, None, None, None)
        host_in = clips if clips.is_pinned() else clips.pin_memory()
        x = host_in.to(self.device, non_blocking=True)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        idx = indices_of(self.module(normalise(x, self.dtype))).to(torch.int64)
        end.record()
        self.spans.append((start, end))
        host = torch.empty(idx.shape, dtype=torch.int64, pin_memory=True)
        host.copy_(idx, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return Pending(host, done, start, end, host_in)

    def wait(self, p: Pending) -> NDArray[Any]:
        if p.done is not None:
            p.done.synchronize()
        return p.indices.numpy()

    @property
    def busy_s(self) -> float:
        """Seconds spent encoding (read once every batch was waited for)."""
        return span_seconds(self.spans, self.device.type == "cuda")[0]

    def steady_busy(self, skip: int = 2) -> float:
        """Fraction of the encoder's own timeline (the GPU's, on CUDA) spent encoding, from the start of batch
        `skip` (the first ones run TorchScript's profiling passes and cuDNN's autotuning) to the end of the
        last: gaps are time the encoder waited for decoded clips. Call after every batch was waited for."""
        busy, total = span_seconds(self.spans[min(skip, len(self.spans) - 1):], self.device.type == "cuda")
        return busy / total if total > 0 else 0.0


@dataclass
class Decoder:
    """decoder.jit on a device (indices in, uint8 video out)."""

    module: Any
    device: torch.device

    @staticmethod
    def load(path: str | Path, device: torch.device, dtype: torch.dtype | None = None) -> "Decoder":
        return Decoder(load_jit(path, device, dtype, "decoder"), device)

    @torch.no_grad()
    def decode(self, indices: torch.Tensor) -> NDArray[Any]:
        """int64 indices [B,T',H',W'] -> uint8 [B,T,H,W,3] on the host."""
        return to_uint8(self.module(indices.to(self.device)))
