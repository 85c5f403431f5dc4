"""`harness bench generate`: decode throughput of the harness' real generation path (`harness.cosmos.generate`
on `CosmosModel` with the static KV cache), at the shapes of a real run: a preset's pretraining grid, 2 latent
frames of context prefilled, then top-p sampling one token per step.

Weights are random (speed does not depend on their values), so no checkpoint is needed; bf16 on CUDA, fp32 on
CPU (where `--preset tiny` is a smoke test). tokens/s counts generated tokens of all sequences per second of
decoding (prefill reported separately). Decoding is bound by memory bandwidth, reported two ways: every
parameter's bytes / step time (`weights_gb_per_s`, the older figure), and what a step reads / step time
(`decode_gb_per_s`: `harness.core.models.decode_step_bytes`, the weights a step uses once and every sequence's
cached keys and values at the average attended length; per GPU at TP > 1; `decode_bandwidth_fraction` of
the card's HBM bandwidth where `models.PEAK_BANDWIDTH_TBPS` lists it). Video2World presets get what
generation gives them: a BOV token before the context latents and a T5-shaped context (random
[b, 512, crossattn_dim]; its checks use tiny-v2w).

    python -m harness.bench.generate --preset cosmos-4b --batch 1 8 --out results/bench
    python -m harness.bench.generate --batch 32 64 --new-tokens 0 --modes graph   # whole videos: videos/GPU-hour
    python -m harness.bench.generate --tp 2 --batch 1 8 --out results/bench/h200x2  # 2 GPUs (torchrun)

At --tp N the checks are the fp32 greedy tokens of a tiny checkpoint loaded at TP=N against TP=1's, every mode.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, get_args

import torch

from harness.bench import at_least, ranks
from harness.core.atomic import atomic_write_json
from harness.core.models import PRESETS, Precision, decode_step_bytes, peak_bandwidth_tbps
from harness.core.sections import KVCache
from harness.core.tokens import BOV_ID, Grid

GOAL_BATCH1_TOKENS_PER_S = 300.0
T5_ROWS = 512
"""Rows of a Video2World context (`harness.lib.prompts.MAX_LENGTH`: every T5 row is attended to)."""


def build(preset_name: str, grid: Grid, device: str, tp: int = 1) -> Any:
    from harness.cosmos import parallel
    from harness.cosmos.model import build_model

    parallel.init(tp)
    precision: Precision = "bf16-mixed" if device == "cuda" else "fp32"
    return build_model(PRESETS[preset_name], grid, tp=tp, precision=precision, device=device).eval()


def inputs(model: Any, batch: int, n_ctx: int, device: str, seed: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """A prompt of `n_ctx` random codes [batch, n_ctx] and generate's extra arguments; for Video2World a BOV
    first and a T5-shaped context (random rows, the model's dtype), as the infer stage passes them."""
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, 64_000, (batch, n_ctx), generator=g)
    if not model.preset.video2world:
        return prompt.to(device), {}
    context = torch.randn((batch, T5_ROWS, model.preset.crossattn_dim), generator=g)
    prompt = torch.cat([torch.full((batch, 1), BOV_ID, dtype=torch.int64), prompt], 1)
    return prompt.to(device), {"context": context.to(device, next(model.parameters()).dtype)}


def measure(model: Any, grid: Grid, batch: int, new_tokens: int, context_latents: int, repeats: int,
            device: str, mode: str, *, preset: str, seed: int = 0, fp8: bool = False) -> dict[str, Any]:
    from harness.cosmos.batching import prefill_chunk
    from harness.cosmos.generate import GenStats, Sampling, StaticKVCache, generate

    n_ctx = context_latents * grid.h * grid.w
    new_tokens = min(new_tokens or grid.tokens, grid.tokens - n_ctx)
    prompt, extra = inputs(model, batch, n_ctx, device, seed)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()  # this batch's peak, not an earlier one's
    cache = StaticKVCache(len(model.decoder.layers), prompt.shape[1] + new_tokens, fp8=fp8)
    sampling = Sampling(temperature=1.0, top_p=0.8, seed=seed)
    generate(model, prompt, min(8, new_tokens), sampling, cache=cache, mode=mode, **extra)  # warm-up, capture
    runs = []
    for _ in range(repeats):
        stats = GenStats()
        generate(model, prompt, new_tokens, sampling, cache=cache, stats=stats, mode=mode, **extra)
        runs.append(stats)
    tps = statistics.median(s.tokens_per_s for s in runs)
    step_s = statistics.median(s.decode_s / max(1, s.new_tokens) for s in runs)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    video_s = statistics.median(s.prefill_s + s.decode_s for s in runs)
    gpus = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    elem = next(model.parameters()).element_size()
    step_bytes = decode_step_bytes(PRESETS[preset], batch, n_ctx + new_tokens / 2, elem, fp8=fp8) / gpus
    peak = peak_bandwidth_tbps(torch.cuda.get_device_name()) if device == "cuda" else None
    return {"mode": mode, "kv_cache": "fp8" if fp8 else "model", "batch": batch, "context_tokens": n_ctx,
            "new_tokens": new_tokens, "tokens_per_s": tps,
            "t5_context": list(extra["context"].shape) if extra else None,
            "ms_per_step": 1e3 * step_s, "prefill_s": statistics.median(s.prefill_s for s in runs),
            "prefill_chunk": prefill_chunk(batch, n_ctx + (1 if extra else 0)),
            "batch_s": video_s, "videos_per_gpu_hour": batch * 3600.0 / video_s / gpus if new_tokens + n_ctx ==
            grid.tokens else None, "weights_gb_per_s": weight_bytes / step_s / 1e9,
            "decode_gb_per_s": step_bytes / step_s / 1e9,
            "decode_bandwidth_fraction": step_bytes / step_s / (peak * 1e12) if peak else None, "repeats": repeats,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None}


def profile_decode(model: Any, grid: Grid, batch: int, context_latents: int, steps: int = 32, top: int = 30,
                   fp8: bool = False) -> list[dict[str, Any]]:
    """Kernels of `steps` graph-mode decode steps (after the prefill), by device time: where a step goes."""
    from torch.profiler import ProfilerActivity, profile

    from harness.cosmos.generate import Sampling, StaticKVCache, generate

    prompt, extra = inputs(model, batch, context_latents * grid.h * grid.w, "cuda", 0)
    cache = StaticKVCache(len(model.decoder.layers), prompt.shape[1] + steps + 1, fp8=fp8)
    sampling = Sampling(temperature=1.0, top_p=0.8, seed=0)
    generate(model, prompt, steps + 1, sampling, cache=cache, mode="graph", **extra)  # capture
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        generate(model, prompt, steps + 1, sampling, cache=cache, mode="graph", **extra)
    rows = sorted(prof.key_averages(), key=lambda e: e.self_device_time_total, reverse=True)[:top]
    return [{"name": e.key[:120], "calls": e.count, "us_per_step": e.self_device_time_total / steps} for e in rows]


def agreement(model: Any, grid: Grid, batch: int, new_tokens: int, context_latents: int, device: str,
              fp8: bool = False) -> dict[str, Any]:
    """Greedy tokens of the compiled graph path vs the same steps run eagerly with device positions (flex
    attention's reference implementation) and vs the host-position eager path (SDPA). Random weights give
    near-tied logits, so bf16 rounding differences between kernels may flip an argmax: reported, not required.
    Required: seeded sampled graph runs reproduce."""
    from harness.cosmos.generate import Sampling, StaticKVCache, generate

    prompt, extra = inputs(model, batch, context_latents * grid.h * grid.w, device, 11)
    greedy = Sampling(temperature=0.0)
    cache = StaticKVCache(len(model.decoder.layers), prompt.shape[1] + new_tokens, fp8=fp8)
    out = {m: generate(model, prompt, new_tokens, greedy, cache=cache, mode=m, **extra)
           for m in ("graph", "device", "eager")}
    s = Sampling(1.0, 0.8, seed=3)
    a, b = (generate(model, prompt, new_tokens, s, cache=cache, mode="graph", **extra) for _ in range(2))
    return {"batch": batch, "new_tokens": new_tokens,
            "greedy_graph_vs_device_eager_match_fraction": float((out["graph"] == out["device"]).float().mean()),
            "greedy_graph_vs_host_eager_match_fraction": float((out["graph"] == out["eager"]).float().mean()),
            "greedy_device_vs_host_eager_match_fraction": float((out["device"] == out["eager"]).float().mean()),
            "sampled_graph_reproducible": bool(torch.equal(a, b))}


def check_preset(preset: str) -> str:
    """The tiny preset of the checks: Video2World's when the timed preset is one (its context path is checked)."""
    return "tiny-v2w" if PRESETS[preset].video2world else "tiny"


def _modes(device: str) -> list[str]:
    return ["graph", "device", "eager"] if device == "cuda" else ["device", "eager"]


def exactness(device: str, preset: str = "tiny", new_tokens: int = 150, fp8: bool = False) -> list[dict[str, Any]]:
    """A tiny preset in fp32 on this device: greedy tokens of every decode path (compiled graph, device
    positions, host positions, no cache) must be identical; fp32 leaves no near-tie for rounding to flip. With
    the fp8 cache the reference is the host-position path's (the uncached model attends to exact keys)."""
    from harness.cosmos.generate import Sampling, StaticKVCache, generate
    from harness.cosmos.model import build_model

    grid = Grid(3, 8, 12)
    torch.manual_seed(0)
    model = build_model(PRESETS[preset], grid, tp=1, precision="fp32", device=device).eval()
    rows = []
    for b in (1, 4):
        prompt, extra = inputs(model, b, 96, device, b)
        cache = StaticKVCache(len(model.decoder.layers), prompt.shape[1] + new_tokens, fp8=fp8)
        out = {m: generate(model, prompt, new_tokens, Sampling(0.0), cache=cache, mode=m, **extra)
               for m in _modes(device)}
        ref = out["eager"] if fp8 else generate(model, prompt, new_tokens, Sampling(0.0), use_cache=False, **extra)
        rows.append({"preset": preset, "precision": "fp32", "batch": b, "new_tokens": new_tokens,
                     "kv_cache": "fp8" if fp8 else "model",
                     f"identical_to_{'host_eager' if fp8 else 'no_cache'}": {m: bool(torch.equal(t, ref))
                                                                             for m, t in out.items()}})
    return rows


def _tiny_model(ckpt: Path, preset: str, tp: int, device: str) -> Any:
    from harness.cosmos import parallel
    from harness.cosmos.checkpoint import load_model
    from harness.cosmos.model import build_model

    parallel.init(tp)
    model = build_model(PRESETS[preset], Grid(3, 8, 12), tp=tp, precision="fp32", device=device)
    load_model(model, ckpt)
    return model.eval()


def tp_exactness(ckpt: Path, ref: Path, device: str, tp: int, new_tokens: int = 150) -> list[dict[str, Any]]:
    """One tiny checkpoint, fp32: greedy tokens at TP=`tp` (this process group) against TP=1's, written to `ref`
    by `tp_reference` before the ranks started. Every decode mode must reproduce them exactly."""
    from harness.cosmos.generate import Sampling, StaticKVCache, generate

    want = torch.load(ref)
    model = _tiny_model(ckpt, want["preset"], tp, device)
    rows = []
    for b, prompt in want["prompts"].items():
        extra = {k: v.to(device) for k, v in want["extra"][b].items()}
        cache = StaticKVCache(len(model.decoder.layers), prompt.shape[1] + new_tokens)
        out = {m: generate(model, prompt.to(device), new_tokens, Sampling(0.0), cache=cache, mode=m, **extra).cpu()
               for m in _modes(device)}
        rows.append({"preset": want["preset"], "precision": "fp32", "batch": b, "tensor_parallel": tp,
                     "identical_to_tp1": {m: bool(torch.equal(t, want["tokens"][b])) for m, t in out.items()}})
    return rows


def tp_reference(ckpt: Path, ref: Path, device: str, preset: str = "tiny", new_tokens: int = 150) -> None:
    """The TP=1 side of `tp_exactness`: a tiny checkpoint and its greedy tokens (no cache), fp32."""
    from harness.cosmos import parallel, pretrained
    from harness.cosmos.generate import Sampling, generate

    pretrained.write_tiny_pretrained(ckpt, PRESETS[preset], seed=5)
    model = _tiny_model(ckpt, preset, 1, device)
    given = {b: inputs(model, b, 96, "cpu", b) for b in (1, 4)}
    tokens = {b: generate(model, p.to(device), new_tokens, Sampling(0.0), use_cache=False,
                          **{k: v.to(device) for k, v in extra.items()}).cpu() for b, (p, extra) in given.items()}
    torch.save({"preset": preset, "prompts": {b: p for b, (p, _) in given.items()},
                "extra": {b: e for b, (_, e) in given.items()}, "tokens": tokens}, ref)
    parallel.shutdown()


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="harness bench generate")
    ap.add_argument("--preset", default="cosmos-4b", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=at_least(0), nargs="+", default=[1, 8], help="0: the infer stage's auto batch")
    ap.add_argument("--new-tokens", type=at_least(0), default=256,
                    help="generated tokens per sequence (timed); 0 = the whole video after the context")
    ap.add_argument("--context-latent-frames", type=at_least(0), default=2)
    ap.add_argument("--repeats", type=at_least(1), default=3)
    ap.add_argument("--device", default=None, choices=["cpu", "cuda"],
                    help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--modes", nargs="+", default=None, help="decode paths (default: eager graph on cuda)")
    ap.add_argument("--tp", type=at_least(1), default=1, help="tensor-parallel ranks (one per GPU; torchrun)")
    ap.add_argument("--no-checks", action="store_true", help="skip the agreement/exactness checks")
    ap.add_argument("--compile-mode", default=None,
                    help="torch.compile mode of the decode step (default: the harness's, "
                         "harness.cosmos.generate.COMPILE_MODE; 'default': Inductor's)")
    ap.add_argument("--kv-cache", default="model", choices=get_args(KVCache),
                    help="the decode cache's keys/values (infer.kv_cache); fp8 adds its quality and kernel checks")
    ap.add_argument("--profile", action="store_true", help="kernels of 32 graph-mode decode steps at the first batch")
    ap.add_argument("--out", default="results/bench")
    ap.add_argument("--name", default="", help="result file name (default generate[-tpN].json)")
    ap.add_argument("--tp-reference", default="", help=argparse.SUPPRESS)
    return ap


def _relaunch(args: argparse.Namespace, argv: list[str], device: str, out_file: Path) -> dict[str, Any]:
    """From the single starting process: start the TP ranks (after writing the TP=1 reference the checks need)."""
    if args.no_checks:
        return ranks.relaunch("harness.bench.generate", argv, args.tp, out_file)
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as d:
        tp_reference(Path(d) / "tiny", Path(d) / "ref.pt", device, check_preset(args.preset))
        return ranks.relaunch("harness.bench.generate", argv + ["--tp-reference", d], args.tp, out_file)


def _timings(model: Any, grid: Grid, args: argparse.Namespace, device: str, modes: list[str]) -> list[dict[str, Any]]:
    rows = []
    for b in (auto_batch(model, grid, args, device) if b == 0 else b for b in args.batch):
        for m in modes:
            try:
                rows.append(measure(model, grid, b, args.new_tokens, args.context_latent_frames, args.repeats,
                                    device, m, preset=args.preset, fp8=args.kv_cache == "fp8"))
            except Exception as e:  # noqa: BLE001 - a diagnostic mode that fails is reported, not fatal
                rows.append({"mode": m, "batch": b, "error": f"{e.__class__.__name__}: {str(e)[:300]}"})
    return rows


def _fp8_checks(model: Any, grid: Grid, args: argparse.Namespace, device: str) -> list[dict[str, Any]]:
    from harness.bench import kvfp8

    n_ctx = args.context_latent_frames * grid.h * grid.w
    prompt, extra = inputs(model, 2, n_ctx, device, 5)
    return [kvfp8.kernel_check(model, device, b, grid.tokens) for b in (1, 4)] + [kvfp8.quality(model, prompt, extra)]


def auto_batch(model: Any, grid: Grid, args: argparse.Namespace, device: str) -> int:
    """`--batch 0`: what the infer stage's `infer.batch_size = 0` picks for these sizes on this device now."""
    from harness.cosmos.batching import max_batch
    from harness.stages.infer import free_memory

    n_ctx = args.context_latent_frames * grid.h * grid.w
    positions = n_ctx + min(args.new_tokens or grid.tokens, grid.tokens - n_ctx) + 1
    return max_batch(model, positions, n_ctx, free_memory(torch.device(device)), fp8=args.kv_cache == "fp8")


def _harness_compile_mode() -> str | None:
    from harness.cosmos import generate as gen_mod

    return gen_mod.COMPILE_MODE


def _summary(args: argparse.Namespace, argv: list[str], grid: Grid, device: str, rows: list[dict[str, Any]],
             checks: list[dict[str, Any]]) -> dict[str, Any]:
    """The result file: timings, checks, and the batch-1 goal (met when any mode reaches it)."""
    out = {"bench": "generate", "preset": args.preset, "grid": str(grid), "device": device, "tensor_parallel": args.tp,
           "command": "python -m harness.bench.generate " + " ".join(a for a in argv if "--tp-reference" not in a),
           "compile_mode": args.compile_mode or _harness_compile_mode(),
           "gpu": torch.cuda.get_device_name() if device == "cuda" else "",
           "torch": torch.__version__, "path": "harness.cosmos.generate.generate (static KV cache; mode "
           "eager = host positions, SDPA; graph = device positions, flex-attention flash-decoding over the cache's "
           "valid key blocks, torch.compile'd step captured as one CUDA graph; Video2World: cross-attention "
           "keys/values of the T5 context computed once at prefill)",
           "results": rows, "checks": checks, "goal": {"batch": 1, "tokens_per_s_min": GOAL_BATCH1_TOKENS_PER_S}}
    by = {(r["mode"], r["batch"]): r["tokens_per_s"] for r in rows if "tokens_per_s" in r}
    out["speedup_graph_vs_eager"] = {b: by[("graph", b)] / by[("eager", b)] for b in args.batch
                                     if ("graph", b) in by and ("eager", b) in by}
    b1 = [r["tokens_per_s"] for r in rows if r["batch"] == 1 and "tokens_per_s" in r]
    if b1:
        out["goal"]["met"] = max(b1) >= GOAL_BATCH1_TOKENS_PER_S
    return out


def run(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    argv = list(argv if argv is not None else sys.argv[1:])
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out_file = Path(args.out) / (args.name or ("generate.json" if args.tp == 1 else f"generate-tp{args.tp}.json"))
    if not ranks.launched(args.tp):
        return _relaunch(args, argv, device, out_file)
    preset = PRESETS[args.preset]
    grid = Grid(*preset.pretrain_grid)
    from harness.cosmos import generate as gen_mod

    if args.compile_mode:
        gen_mod.COMPILE_MODE = args.compile_mode
    model = build(args.preset, grid, device, args.tp)
    modes = args.modes or (["eager", "graph"] if device == "cuda" else ["eager", "device"])
    rows = _timings(model, grid, args, device, modes)
    fp8 = args.kv_cache == "fp8"
    if args.profile and device == "cuda":
        rows[0] = {**rows[0], "profile": profile_decode(model, grid, args.batch[0], args.context_latent_frames,
                                                        fp8=fp8)}
    checks: list[dict[str, Any]] = []
    if not args.no_checks:
        checks = [agreement(model, grid, b, 32, args.context_latent_frames, device, fp8) for b in args.batch] \
            if "graph" in modes and args.tp == 1 else []
        checks += _fp8_checks(model, grid, args, device) if fp8 else []
        del model  # before exactness builds its own model
        checks += exactness(device, check_preset(args.preset), fp8=fp8) if args.tp == 1 else \
            tp_exactness(Path(args.tp_reference) / "tiny", Path(args.tp_reference) / "ref.pt", device, args.tp)
    out = _summary(args, argv, grid, device, rows, checks)
    if ranks.is_rank0():
        out_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_file, out)
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
