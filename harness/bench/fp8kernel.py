"""`harness bench fp8kernel`: one layer's decode attention over the static KV cache as the graph path's compiled
step runs it (`StaticLayerKV.attend` under `torch.compile`): the model-dtype cache (flex attention's
flash-decoding) against the fp8 cache's Triton kernel in each launch variant (keys per block, warps, fp16 dot
products), per batch, at a preset's head layout and one attended length, side by side in one process.

Whole videos are bound by this kernel's share of the card's bandwidth (README, "Measured"): the variant that
moves the most bytes per second at the infer stage's batches is the one `harness.cosmos.kvfp8` should launch.

    python -m harness.bench.fp8kernel --batch 1 8 58 107 --out results/bench/h100
    python -m harness.bench.fp8kernel --bare --batch 8 58 107 --out results/bench/h100 --name fp8kernel-bare.json

On a CPU every fp8 variant runs the torch reference (the kernel is CUDA's): a smoke test of the bench itself.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from pathlib import Path
from typing import Any

import torch

from harness.bench import at_least
from harness.bench.attention import timed_ms
from harness.core.atomic import atomic_write_json
from harness.core.models import PRESETS, kv_bytes, peak_bandwidth_tbps

VARIANTS = [{"F16": f16, "BLOCK_N": block, "WARPS": warps}
            for f16, block, warps in itertools.product((False, True), (64, 128), (4, 8))]
"""Launch variants of the fp8 kernel (`harness.cosmos.kvfp8`'s module constants of the same names)."""
BARE_VARIANTS = [{**v, "STAGES": stages, "PROGRAMS_PER_SM": per_sm}
                 for v, stages, per_sm in itertools.product(VARIANTS, (2, 3, 4), (2, 4, 8, 16))]
"""`--bare`: also the pipeline depth and the splits' target, each launch timed as the op alone: no
`torch.compile` per variant, only Triton's compile of each kernel configuration (the splits are a runtime
argument)."""


def layer(preset: str, batch: int, positions: int, fp8: bool, device: str) -> tuple[Any, torch.Tensor]:
    """A one-layer static cache holding `positions` random keys/values, in device-position mode for the next
    one, and that step's queries [b, heads, 1, d] (bf16 on CUDA, fp32 on CPU)."""
    from harness.cosmos.kvcache import StaticKVCache

    p = PRESETS[preset]
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    g = torch.Generator(device=device).manual_seed(batch)
    shape = (batch, p.num_query_groups, positions, p.kv_channels)
    cache = StaticKVCache(1, positions + 1, fp8=fp8)
    k, v = (torch.randn(shape, generator=g, device=device, dtype=dtype) for _ in "kv")
    cache.layers[0].append(k, v)
    cache.to_device_position(torch.device(device))
    cache.begin(1)
    q = torch.randn((batch, p.num_attention_heads, 1, p.kv_channels), generator=g, device=device, dtype=dtype)
    return cache.layers[0], q


def time_attend(lay: Any, q: torch.Tensor, repeats: int) -> tuple[float, torch.Tensor]:
    """Median ms of the compiled `attend` (compiled afresh: the fp8 variants are module constants)."""
    torch._dynamo.reset()
    fn = torch.compile(lambda x: lay.attend(x, lay.k_buf, lay.v_buf, None), dynamic=False)
    return timed_ms(lambda: fn(q), repeats), fn(q)


def time_bare(lay: Any, q: torch.Tensor, n: int, repeats: int) -> tuple[float, torch.Tensor]:
    """Median ms of the fp8 decode attention called as the op (kernel and split merge, eager) in `n` splits."""
    from harness.cosmos import kvfp8

    def fn() -> torch.Tensor:
        return kvfp8.decode_attention(q, lay.k_buf, lay.scales[0], lay.v_buf, lay.scales[1], lay.cache.pos, None, n)

    return timed_ms(fn, repeats), fn()


def variants(args: argparse.Namespace) -> list[dict[str, Any]]:
    return BARE_VARIANTS if args.bare else VARIANTS


def one_batch(args: argparse.Namespace, batch: int, device: str) -> list[dict[str, Any]]:
    from harness.cosmos import kvfp8

    p = PRESETS[args.preset]
    elem = 2 if device == "cuda" else 4
    peak = peak_bandwidth_tbps(torch.cuda.get_device_name()) if device == "cuda" else None
    n = args.positions + 1  # the valid keys of the step
    rows = []
    for fp8 in (False, True):
        lay, q = layer(args.preset, batch, args.positions, fp8, device)
        moved = batch * n * kv_bytes(1, p.num_query_groups, p.kv_channels, elem, fp8=fp8)
        ref = kvfp8.reference(q.float(), lay.k_buf, lay.scales[0], lay.v_buf, lay.scales[1], lay.cache.pos,
                              None) if fp8 else None
        for variant in variants(args) if fp8 else [{}]:
            saved = {k: getattr(kvfp8, k) for k in variant}
            for k, val in variant.items():
                setattr(kvfp8, k, val)
            try:
                if fp8 and args.bare:
                    bare_splits = kvfp8.device_splits(lay.k_buf)
                    splits: int | None = bare_splits
                    ms, out = time_bare(lay, q, bare_splits, args.repeats)
                else:
                    splits = lay.splits if fp8 else None
                    ms, out = time_attend(lay, q, args.repeats)
            finally:
                for k, val in saved.items():
                    setattr(kvfp8, k, val)
            row = {"cache": "fp8" if fp8 else "model", **variant, "batch": batch, "splits": splits,
                   "us": 1e3 * ms, "gb_per_s": moved / ms / 1e6,
                   "bandwidth_fraction": moved / ms / 1e-3 / (peak * 1e12) if peak else None}
            if ref is not None:
                row["max_rel_diff"] = float((out.float() - ref).abs().max() / ref.abs().max())
            rows.append(row)
    return rows


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="harness bench fp8kernel")
    ap.add_argument("--preset", default="cosmos-4b", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=at_least(1), nargs="+", default=[1, 8, 58, 107])
    ap.add_argument("--positions", type=at_least(1), default=9_000,
                    help="cached positions before the step (a whole video's average: 5,120 + 7,680 / 2)")
    ap.add_argument("--repeats", type=at_least(1), default=30)
    ap.add_argument("--device", default=None, choices=["cpu", "cuda"],
                    help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--bare", action="store_true",
                    help="sweep BARE_VARIANTS with the fp8 op timed alone (the model-dtype row stays compiled)")
    ap.add_argument("--out", default="results/bench")
    ap.add_argument("--name", default="fp8kernel.json")
    return ap


def run(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows = [r for b in args.batch for r in one_batch(args, b, device)]
    best = {}
    for b in args.batch:
        fp8 = [r for r in rows if r["batch"] == b and r["cache"] == "fp8"]
        model = next(r for r in rows if r["batch"] == b and r["cache"] == "model")
        top = min(fp8, key=lambda r: r["us"])
        best[str(b)] = {"variant": {k: top[k] for k in variants(args)[0]}, "us": top["us"], "model_us": model["us"],
                        "speedup_over_model": model["us"] / top["us"]}
    out = {"bench": "fp8kernel", "preset": args.preset, "positions": args.positions, "device": device,
           "gpu": torch.cuda.get_device_name() if device == "cuda" else "", "torch": torch.__version__,
           "median_of": args.repeats, "timed": "op alone" if args.bare else "compiled attend", "results": rows,
           "best": best,
           "fp8_us_median_over_variants": {str(b): statistics.median(r["us"] for r in rows
                                                                     if r["batch"] == b and r["cache"] == "fp8")
                                           for b in args.batch}}
    atomic_write_json(Path(args.out) / args.name, out)
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run()["best"], indent=1))
