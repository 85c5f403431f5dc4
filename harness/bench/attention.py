"""`harness bench attention`: the training step's causal self-attention alone, forward and forward + backward,
per SDPA backend, GQA form and layout, and FlexAttention, at a preset's shape (Cosmos-4B: 32 query heads over 8
key/value groups of 128, 12,800 positions).

Attention is the second cost of a Cosmos training step after the GEMMs (on one H200, cuDNN's backward 118 ms and
forward 37 ms of a 689 ms step). The training path (`harness.cosmos.model.SDPAttention`) passes mcore's
[s, b, heads, d] tensors to SDPA as permuted views with `enable_gqa`, and lets PyTorch pick the backend: the case
`auto gqa strided`. The others show what a different choice would give, side by side in one process, so the
model keeps whichever measures fastest. TFLOP/s count the causal half (forward 2 GEMMs, backward 5, over
s^2/2 scores), the accounting of `harness.core.models.train_flops_per_token`.

    python -m harness.bench.attention --out results/bench/h200
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from harness.bench import at_least
from harness.core.atomic import atomic_write_json
from harness.core.models import PRESETS

BACKENDS = {"auto": None, "cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}


def timed_ms(fn: Callable[[], Any], repeats: int, warmup: int = 3) -> float:
    """Median wall time of `fn` in ms between CUDA events (host time on CPU)."""
    for _ in range(warmup):
        fn()
    if not torch.cuda.is_available():
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(ts)
    torch.cuda.synchronize()
    ts = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


class Shape:
    """One attention call's tensors as the model hands them over: [s, b, heads, d] leaves needing grad."""

    def __init__(self, seq: int, heads: int, groups: int, dim: int, device: str, dtype: torch.dtype) -> None:
        g = torch.Generator(device=device).manual_seed(0)
        self.leaves = [torch.randn(seq, 1, n, dim, device=device, dtype=dtype, generator=g).requires_grad_(True)
                       for n in (heads, groups, groups)]
        self.grad_out = torch.randn(1, heads, seq, dim, device=device, dtype=dtype, generator=g)
        self.heads, self.groups = heads, groups

    def qkv(self, expand: bool, contiguous: bool) -> list[torch.Tensor]:
        q, k, v = (t.permute(1, 2, 0, 3) for t in self.leaves)
        if contiguous:
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        if expand:
            k, v = (t.repeat_interleave(self.heads // self.groups, dim=1) for t in (k, v))
        return [q, k, v]

    def zero_grad(self) -> None:
        for t in self.leaves:
            t.grad = None


def sdpa_case(shape: Shape, backend: str, expand: bool, contiguous: bool) -> Callable[[], torch.Tensor]:
    def fwd() -> torch.Tensor:
        q, k, v = shape.qkv(expand, contiguous)
        chosen = BACKENDS[backend]
        if chosen is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=not expand)
        with sdpa_kernel([chosen]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=not expand)
    return fwd


def flex_case(shape: Shape, seq: int) -> Callable[[], torch.Tensor]:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    dev = shape.leaves[0].device.type
    mask = create_block_mask(lambda b, h, q, k: q >= k, None, None, seq, seq, device=dev)
    compiled = torch.compile(flex_attention)

    def fwd() -> torch.Tensor:
        q, k, v = shape.qkv(False, False)
        return compiled(q, k, v, block_mask=mask, enable_gqa=True)
    return fwd


def measure(name: str, fwd: Callable[[], torch.Tensor], shape: Shape, flops: float, repeats: int,
            reference: torch.Tensor | None) -> dict[str, Any]:
    """Forward alone and forward + backward, TFLOP/s of each half, and the output's distance to the first case's."""
    def both() -> None:
        fwd().backward(shape.grad_out)
    try:
        out = fwd().detach().float()
        f_ms = timed_ms(fwd, repeats)
        fb_ms = timed_ms(both, repeats)
    except (RuntimeError, NotImplementedError) as e:
        return {"case": name, "error": str(e).strip().splitlines()[0][:200]}
    finally:
        shape.zero_grad()
    b_ms = max(fb_ms - f_ms, 1e-9)
    return {"case": name, "fwd_ms": f_ms, "fwd_bwd_ms": fb_ms, "bwd_ms": b_ms,
            "fwd_tflops": flops / f_ms / 1e9, "bwd_tflops": 2.5 * flops / b_ms / 1e9,
            "max_abs_diff": None if reference is None else float((out - reference).abs().max())}


def run(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="harness bench attention")
    ap.add_argument("--preset", default="cosmos-4b", choices=sorted(PRESETS))
    ap.add_argument("--seq", type=at_least(1), default=12_800)
    ap.add_argument("--repeats", type=at_least(1), default=10)
    ap.add_argument("--no-flex", action="store_true", help="skip FlexAttention (compiles for ~1 min)")
    ap.add_argument("--name", default="", help="result file name (default attention-<preset>-<seq>.json)")
    ap.add_argument("--out", default="results/bench")
    a = ap.parse_args(argv)
    p = PRESETS[a.preset]
    cuda = torch.cuda.is_available()
    shape = Shape(a.seq, p.num_attention_heads, p.num_query_groups, p.kv_channels, "cuda" if cuda else "cpu",
                  torch.bfloat16 if cuda else torch.float32)
    flops = 4.0 * a.seq * a.seq * p.kv_channels * p.num_attention_heads / 2
    rows: list[dict[str, Any]] = []
    reference = None
    for backend in BACKENDS:
        for expand in (False, True):
            for contiguous in (False, True):
                name = f"{backend} {'expanded' if expand else 'gqa'} {'contiguous' if contiguous else 'strided'}"
                rows.append(measure(name, sdpa_case(shape, backend, expand, contiguous), shape, flops, a.repeats,
                                    reference))
                if reference is None and "error" not in rows[-1]:
                    reference = sdpa_case(shape, backend, expand, contiguous)().detach().float()
    if not a.no_flex:
        rows.append(measure("flex gqa strided", flex_case(shape, a.seq), shape, flops, a.repeats, reference))
    ok = [r for r in rows if "error" not in r]
    out = {"bench": "attention", "preset": a.preset, "seq": a.seq, "heads": p.num_attention_heads,
           "groups": p.num_query_groups, "head_dim": p.kv_channels, "repeats": a.repeats,
           "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
           "cudnn": torch.backends.cudnn.version(), "results": rows,
           "fastest_fwd_bwd": min(ok, key=lambda r: r["fwd_bwd_ms"])["case"] if ok else None,
           "command": "python -m harness.bench.attention " + " ".join(argv or [])}
    Path(a.out).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(a.out) / (a.name or f"attention-{a.preset}-{a.seq}.json"), out)
    return out


if __name__ == "__main__":
    import json
    import sys

    result = run(sys.argv[1:])
    for row in result["results"]:
        print(json.dumps(row))
    print("fastest forward + backward:", result["fastest_fwd_bwd"])
