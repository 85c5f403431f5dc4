"""`harness bench generate`: decode throughput of the harness' real generation path (`harness.cosmos.generate`
on `CosmosModel` with the static KV cache), at the shapes of a real run: a preset's pretraining grid, 2 latent
frames of context prefilled, then top-p sampling one token per step.

Weights are random (speed does not depend on their values), so no checkpoint is needed; bf16 on CUDA, fp32 on
CPU (where `--preset tiny` is a smoke test). tokens/s counts generated tokens of all sequences per second of
decoding (prefill reported separately). The memory-bandwidth bound at batch 1 is also reported: bytes of
weights read per step / step time.

    python -m harness.bench.generate --preset cosmos-4b --batch 1 8 --out results/bench
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import torch

from harness.models import PRESETS
from harness.rundir import atomic_write_json
from harness.tokens import Grid

GOAL_BATCH1_TOKENS_PER_S = 300.0


def build(preset_name: str, grid: Grid, device: str) -> Any:
    from harness.cosmos import parallel
    from harness.cosmos.model import build_model

    parallel.init(1)
    precision = "bf16-mixed" if device == "cuda" else "fp32"
    return build_model(PRESETS[preset_name], grid, tp=1, precision=precision, device=device).eval()


def measure(model: Any, grid: Grid, batch: int, new_tokens: int, context_latents: int, repeats: int,
            device: str, seed: int = 0) -> dict[str, Any]:
    from harness.cosmos.generate import GenStats, Sampling, StaticKVCache, generate

    n_ctx = context_latents * grid.h * grid.w
    new_tokens = min(new_tokens, grid.tokens - n_ctx)
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, 64_000, (batch, n_ctx), generator=g).to(device)
    cache = StaticKVCache(len(model.decoder.layers), n_ctx + new_tokens)
    sampling = Sampling(temperature=1.0, top_p=0.8, seed=seed)
    generate(model, prompt, min(8, new_tokens), sampling, cache=cache)  # warm-up: kernels, allocator, cache
    runs = []
    for _ in range(repeats):
        stats = GenStats()
        generate(model, prompt, new_tokens, sampling, cache=cache, stats=stats)
        runs.append(stats)
    tps = statistics.median(s.tokens_per_s for s in runs)
    step_s = statistics.median(s.decode_s / max(1, s.new_tokens) for s in runs)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"batch": batch, "context_tokens": n_ctx, "new_tokens": new_tokens, "tokens_per_s": tps,
            "ms_per_step": 1e3 * step_s, "prefill_s": statistics.median(s.prefill_s for s in runs),
            "weights_gb_per_s": weight_bytes / step_s / 1e9, "repeats": repeats}


def run(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="harness bench generate")
    ap.add_argument("--preset", default="cosmos-4b", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--new-tokens", type=int, default=256, help="generated tokens per sequence (timed)")
    ap.add_argument("--context-latent-frames", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--out", default="results/bench")
    args = ap.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    preset = PRESETS[args.preset]
    grid = Grid(*preset.pretrain_grid)
    if preset.video2world:
        raise SystemExit(f"--preset {args.preset}: the bench runs base presets (no T5 context)")
    model = build(args.preset, grid, device)
    rows = [measure(model, grid, b, args.new_tokens, args.context_latent_frames, args.repeats, device)
            for b in args.batch]
    out = {"bench": "generate", "preset": args.preset, "grid": str(grid), "device": device,
           "gpu": torch.cuda.get_device_name() if device == "cuda" else "",
           "torch": torch.__version__, "path": "harness.cosmos.generate.generate (static KV cache, eager)",
           "results": rows, "goal": {"batch": 1, "tokens_per_s_min": GOAL_BATCH1_TOKENS_PER_S}}
    b1 = [r for r in rows if r["batch"] == 1]
    if b1:
        out["goal"]["met"] = b1[0]["tokens_per_s"] >= GOAL_BATCH1_TOKENS_PER_S
    Path(args.out).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(args.out) / "generate.json", out)
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
