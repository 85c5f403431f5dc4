"""`harness bench train`: training throughput of the harness' real finetune path (`harness.stages.finetune.mcore.setup`
and `train_step`: the same CosmosModel, mcore DDP, mcore optimizer, micro-batching and loss as the finetune stage)
at a preset's shape, on synthetic whole-video samples (speed does not depend on token values).

On an H200: bf16 compute, fp32 master weights + Adam, SDPA flash attention. Reports the median step time,
tokens/s, model TFLOP/s (the accounting of `harness.core.models.train_flops_per_token`) and MFU against the
dense bf16 peak (989 TFLOP/s), plus peak GPU memory. Goal: MFU >= 50% for Cosmos-4B at 12,800 tokens (a plain
PyTorch stack reached 534 TFLOP/s). On CPU, `--preset tiny` is a smoke test (fp32).

    python -m harness.bench.train --preset cosmos-4b --seq 12800 --steps 10 --out results/bench
    python -m harness.bench.train --preset cosmos-4b --tp 2 --out results/bench/h200x2   # 2 GPUs (torchrun)
    python -m harness.bench.train --preset cosmos-4b --tp 2 --sp --out results/bench/h200x2   # + sequence parallel
    python -m harness.bench.train --engine nemo --preset cosmos-4b --tp 2 --out results/bench/h200x2
    python -m harness.bench.train --preset cosmos-4b --layers 8 --fuse   # 8 of 16 layers (fits an H100), unfused

The training fusions (`--fuse`, default all: the finetune stage's CUDA path) can be switched off one by one to
time each against the unfused path side by side.

`--engine nemo` times the finetune stage's NeMo engine (`harness.stages.finetune.nemo`: NeMo 2 `llm.api.train`,
MegatronStrategy, the same model, data order and FLOP accounting) instead: `--warmup + --steps + 1` steps, the
median over the `--steps` after the warm-up (its peak memory includes the warm-up steps).

MFU is per GPU: the step's model FLOPs over the step time and the number of ranks.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.bench import at_least, ranks
from harness.core import spec as spec_mod
from harness.core.atomic import atomic_write_json
from harness.core.models import PRESETS
from harness.core.paths import RunPaths
from harness.core.tokens import BOV_ID, PAD_ID, VIDEO2WORLD_PAD
from harness.report.records import PEAK_TFLOPS

GOAL_MFU = 0.50
FUSIONS = {
    "wgrad": "weight-gradient accumulation inside the wgrad GEMM (harness.cosmos.wgrad)",
    "norm": "RMSNorm through torch.compile in training (harness.cosmos.layers.rms_norm)",
    "clip": "the gradient clip as the fused Adam step's grad_scale (harness.stages.finetune.clipfuse)",
    "loss": "the loss in chunks of rows, never all fp32 log-probs at once (harness.cosmos.loss)",
}


def geometry(seq: int, compression: tuple[int, int, int] = (4, 8, 8)) -> dict[str, int]:
    """Video size whose latent grid has `seq` tokens: 12,800 -> 17x320x512 (5x40x64, the pretraining grid);
    otherwise T' in 5..2 latent frames (the largest dividing seq) of H' x W' with W' <= 64."""
    t, h, w = compression
    if seq == 12_800:
        return {"num_frames": 1 + 4 * t, "height": 40 * h, "width": 64 * w}
    frames = next((f for f in (5, 4, 3, 2) if seq % f == 0), 0)
    if not frames:
        raise SystemExit(f"--seq {seq}: needs a multiple of 2, 3, 4 or 5 latent frames")
    per = seq // frames
    cols = max(c for c in range(1, min(64, per) + 1) if per % c == 0)
    return {"num_frames": 1 + (frames - 1) * t, "height": per // cols * h, "width": cols * w}


class SyntheticVideos:
    """A TokenSource of random whole videos (the `harness.stages.dataset.TokenDataset` interface)."""

    def __init__(self, spec: spec_mod.RunSpec, n: int = 4, seed: int = 0) -> None:
        tm = spec.token_math
        rng = np.random.default_rng(seed)
        self.docs = []
        for _ in range(n):
            video = rng.integers(0, 64_000, tm.video_tokens)
            if tm.video2world:
                video = np.concatenate([[BOV_ID], video, [PAD_ID] * VIDEO2WORLD_PAD])
            self.docs.append(video.astype(np.int64))
        self.ctx = rng.standard_normal((512, spec.preset.crossattn_dim)).astype(np.float32)

    def __len__(self) -> int:
        return len(self.docs)

    def tokens(self, i: int) -> np.ndarray:
        return self.docs[i]

    def split(self, name: str) -> list[int]:
        return list(range(len(self.docs))) if name in ("train", "val") else []

    def prompt_embedding(self, i: int) -> np.ndarray:
        return self.ctx


def make_spec(a: argparse.Namespace, cuda: bool) -> spec_mod.RunSpec:
    v2w = PRESETS[a.preset].video2world
    return spec_mod.from_dict({
        "run": {"name": "bench", "recipe": "video2world" if v2w else "base"},
        "model": {"preset": a.preset},
        "video": geometry(a.seq),
        "data": {"jsonl": "/bench.jsonl"} if v2w else {"videos": "/bench"},
        "infer": {"context_latent_frames": 1},
        "finetune": {"engine": a.engine, "tensor_parallel": a.tp, "gpus_per_node": a.tp * a.dp if cuda else 0,
                     "gpu_memory_gib": int(torch.cuda.get_device_properties(0).total_memory / 2**30) if cuda else 80,
                     "global_batch_size": a.micro_batch * a.dp, "micro_batch_size": a.micro_batch,
                         "max_steps": a.warmup + a.steps + 1,
                     "save_every": a.warmup + a.steps + 1, "lr": 1e-5, "min_lr": 1e-5, "max_epochs": 1_000_000,
                     "precision": "bf16-mixed" if cuda else "fp32", "recompute": a.recompute,
                     "sequence_parallel": "on" if a.sp else "off"},
    }, source="<bench>")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="harness bench train")
    ap.add_argument("--preset", default="cosmos-4b", choices=sorted(PRESETS))
    ap.add_argument("--seq", type=at_least(1), default=12_800, help="video tokens per sample (12800 = 5x40x64)")
    ap.add_argument("--steps", type=at_least(1), default=10, help="timed optimizer steps")
    ap.add_argument("--warmup", type=at_least(0), default=2, help="untimed steps first (allocator, kernels)")
    ap.add_argument("--layers", type=at_least(0), default=0,
                    help="time the preset at this depth instead (a card too small for the whole training state "
                         "still compares paths per layer; MFU is then that depth's)")
    ap.add_argument("--micro-batch", type=at_least(1), default=1)
    ap.add_argument("--recompute", default="none", choices=["none", "selective", "full"])
    ap.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS)
    ap.add_argument("--profile", action="store_true", help="one extra step under torch.profiler: top kernels")
    ap.add_argument("--tp", type=at_least(1), default=1, help="tensor-parallel ranks (one per GPU)")
    ap.add_argument("--dp", type=at_least(1), default=1, help="data-parallel replicas (micro-batch each)")
    ap.add_argument("--sp", action="store_true", help="megatron sequence parallelism (needs --tp > 1)")
    ap.add_argument("--engine", default="mcore", choices=["mcore", "nemo"], help="the finetune engine timed")
    ap.add_argument("--validation", action="store_true",
                    help="also time the finetune stage's validation pass: seconds per validation video against a "
                         "training step per video (mcore engine)")
    ap.add_argument("--fuse", nargs="*", default=sorted(FUSIONS), choices=sorted(FUSIONS),
                    help="the training fusions on (default: all, the finetune stage's default; `--fuse` alone times "
                         "the unfused path): " + "; ".join(
                        f"{k}: {v}" for k, v in sorted(FUSIONS.items())))
    ap.add_argument("--name", default="", help="result file name (default train-<preset>-<seq>[...].json)")
    ap.add_argument("--out", default="results/bench")
    return ap


def _mcore_records(spec: spec_mod.RunSpec, root: Path, a: argparse.Namespace, cuda: bool
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The mcore engine's timed steps after the warm-up (peak memory counted from the first timed step), and
    one profiled step when asked."""
    from harness.stages.finetune import mcore as train

    t = train.setup(spec, RunPaths(root), SyntheticVideos(spec))
    warm = [train.train_step(t) for _ in range(a.warmup)]
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    recs = [train.train_step(t) for _ in range(a.steps)]
    recs[0] = {**recs[0], "warmup_losses": [r["loss"] for r in warm]}
    if a.validation:
        recs[-1] = {**recs[-1], "validation": _validation_cost(t, cuda)}
    return recs, (_profile(lambda: train.train_step(t), cuda) if a.profile else None)


def _validation_cost(t: Any, cuda: bool, repeats: int = 3) -> dict[str, Any]:
    """Seconds per validation video of the finetune stage's own validation pass (`core.validation_loss`: eval
    mode, no gradients, the training ranks and layout) over the synthetic videos, median of `repeats` passes."""
    from harness.cosmos import parallel
    from harness.stages.finetune import core

    def once() -> float:
        t.model.eval()
        start = time.perf_counter()
        core.validation_loss(lambda b: t.model(b["tokens"], labels=b["labels"], context=b.get("context")),
                             t.val_samples, t.plan, micro_batch_size=t.spec.finetune.micro_batch_size,
                             dp_rank=parallel.dp_rank(), dp_group=None, device=t.device, dtype=t.dtype)
        if cuda:
            torch.cuda.synchronize()
        t.model.train()
        return time.perf_counter() - start

    once()  # warm-up: the eval-mode graph's first run
    videos = min(t.plan.val_videos, len(t.val_samples))
    return {"videos": videos, "s_per_video": statistics.median(once() for _ in range(repeats)) / videos}


def run(argv: list[str] | None = None) -> dict[str, Any]:
    a = _parser().parse_args(argv)
    _select_fusions(a)
    a.preset = _at_depth(a.preset, a.layers)
    name = f"train-{a.preset}-{a.seq}" + ("" if a.tp * a.dp == 1 else f"-tp{a.tp}-dp{a.dp}{'-sp' if a.sp else ''}")
    out = Path(a.out) / (a.name or name + ("-nemo" if a.engine == "nemo" else "") + ".json")
    if a.sp and a.tp == 1:
        raise SystemExit("--sp: sequence parallelism needs --tp > 1")
    if not ranks.launched(a.tp * a.dp):
        return ranks.relaunch("harness.bench.train", list(argv if argv is not None else sys.argv[1:]),
                              a.tp * a.dp, out)
    from harness.core import trainplan
    from harness.cosmos import parallel

    cuda = torch.cuda.is_available()
    spec = make_spec(a, cuda)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as d:
        if a.engine == "nemo":
            recs, profile = _nemo_records(spec, Path(d), a.warmup, a.steps), None
        else:
            recs, profile = _mcore_records(spec, Path(d), a, cuda)
    rank0 = parallel.rank_env().rank == 0
    if not recs:  # the NeMo engine's metrics are rank 0's
        parallel.shutdown()
        return {}
    step_s = statistics.median(r["step_time_s"] for r in recs)
    tflops = statistics.median(r["tflops"] for r in recs)
    result = {
        "bench": "train", "engine": a.engine, "preset": a.preset, "seq": a.seq, "tensor_parallel": a.tp,
        "data_parallel": a.dp, "sequence_parallel": trainplan.of(spec, cuda=cuda).sequence_parallel,
        "gpus": a.tp * a.dp, "grid": str(spec.token_math.grid),
        "command": "python -m harness.bench.train " + " ".join(argv if argv is not None else sys.argv[1:]),
        "nccl_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(("NCCL_", "CUDA_DEVICE_MAX"))},
        "device": torch.cuda.get_device_name() if cuda else "cpu", "precision": spec.finetune.precision if cuda
        else "fp32", "micro_batch": a.micro_batch, "recompute": a.recompute, "steps": a.steps,
        "median_step_s": step_s, "tokens_per_s": statistics.median(r["tokens_per_s"] for r in recs),
        "tflops": tflops, "mfu": tflops / a.peak_tflops, "peak_tflops": a.peak_tflops, "goal_mfu": GOAL_MFU,
        "losses": [r["loss"] for r in recs],
        "step_losses": recs[0].get("warmup_losses", []) + [r["loss"] for r in recs],
        "fusions": _fusions(),
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "torch": torch.__version__, "megatron_core": _mcore_version(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "profile": profile,
    }
    if "validation" in recs[-1]:
        v = recs[-1]["validation"]
        per_video = step_s / spec.finetune.global_batch_size
        result["validation"] = {**v, "train_step_s_per_video": per_video, "ratio_to_training": v["s_per_video"]
                                / per_video}
    rank0 = rank0 and ranks.is_rank0()
    parallel.shutdown()
    if rank0:
        atomic_write_json(out, result)
    return result


def _at_depth(preset: str, layers: int) -> str:
    """`--layers`: the preset with that many layers, registered under its own name in this process (and in every
    rank, which parses the same arguments), as a shape of no public checkpoint and no measured memory."""
    if not layers or layers == PRESETS[preset].num_layers:
        return preset
    name = f"{preset}-{layers}l"
    PRESETS[name] = dataclasses.replace(PRESETS[preset], name=name, num_layers=layers, hf_repo="", min_gpus=1,
                                        one_gpu_train_gib=None)
    return name


def _select_fusions(a: argparse.Namespace) -> None:
    """The training fusions `--fuse` names on, the others off (set before the model and its config are built), so
    that runs with and without each time the paths side by side."""
    from harness.cosmos import layers, loss, wgrad
    from harness.stages.finetune import clipfuse

    loss.chunked = "loss" in a.fuse
    wgrad.enabled = "wgrad" in a.fuse
    layers.compiled_norm = "norm" in a.fuse
    clipfuse.enabled = "clip" in a.fuse


def _fusions() -> dict[str, bool]:
    from harness.cosmos import layers, loss, wgrad
    from harness.stages.finetune import clipfuse

    return {"chunked_loss": loss.chunked, "wgrad_accumulation": wgrad.enabled and wgrad.available(),
            "compiled_norm": layers.compiled_norm,
            "clip_in_adam": clipfuse.enabled and bool(clipfuse._owners)}


def _nemo_records(spec: spec_mod.RunSpec, root: Path, warmup: int, steps: int) -> list[dict[str, Any]]:
    """The NeMo engine's per-step metrics after the warm-up steps (rank 0; [] on the other ranks)."""
    from harness.cosmos import data as data_mod
    from harness.stages.finetune import nemo as nemo_engine

    source = SyntheticVideos(spec)
    samples = data_mod.VideoSamples(source, spec.token_math, "train", where="<bench>",
                                    context_dim=spec.preset.crossattn_dim if spec.video2world else None)
    recs = nemo_engine.time_steps(spec, RunPaths(root), samples)
    return [r for r in recs if r["step"] > warmup][:steps]


def _profile(step: Any, cuda: bool, top: int = 25) -> list[dict[str, Any]]:
    """Operators of one training step by self device time (CPU time on CPU), to see where a step goes."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        step()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    rows = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0.0), reverse=True)[:top]
    return [{"name": e.key[:120], "calls": e.count, "self_ms": getattr(e, key, 0.0) / 1e3} for e in rows]


def _mcore_version() -> str:
    try:
        from megatron.core import package_info

        return str(package_info.__version__)
    except ImportError:
        return "unknown"


def main(argv: list[str] | None = None) -> None:
    r = run(argv)
    if not r:
        return
    print(f"[{r['engine']} TP={r['tensor_parallel']}] ", end="")
    print(f"{r['preset']} seq {r['seq']}: {r['median_step_s'] * 1e3:.0f} ms/step, {r['tokens_per_s']:,.0f} tok/s, "
          f"{r['tflops']:.0f} TFLOP/s, MFU {r['mfu']:.1%} (goal {r['goal_mfu']:.0%})")


if __name__ == "__main__":
    main()
