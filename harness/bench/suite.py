"""`harness bench suite`: the one-GPU figures the project tracks, each bench in its own process on this machine,
and one summary against the goals: training MFU with the fused path's losses against the unfused path's own
run-to-run spread, attention per backend, generation at batch 1 and 8, whole videos at the infer stage's auto
batch (with the model-dtype and the fp8 KV cache), and Video2World against the base model at each of those.

    python -m harness.bench.suite --out results/bench/h200 --only train attention   # ~7 min on an H200
    python -m harness.bench.suite --out results/bench/h200 --only generate          # ~4 min
    python -m harness.bench.suite --out results/bench/h200 --only whole             # ~8 min
    python -m harness.bench.suite --out results/bench/h200 --only fp8               # ~5 min: whole videos, fp8 cache

Each case is its own process (a bench's CUDA state, compile caches and peak memory are its own) with a time
limit; `suite.json` is rewritten after every case, so a suite stopped part-way keeps what it measured, and its
summary reads every case's result file in the folder, also those an earlier `--only` run wrote. On a CPU,
`--preset tiny --v2w-preset tiny-v2w --seq 256` is a smoke test of the same path.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.bench import at_least
from harness.core.atomic import atomic_write_json
from harness.core.models import PRESETS

GOALS = {"train_mfu": 0.55, "batch1_tokens_per_s": 450.0, "whole_videos_per_gpu_hour": 3000.0,
         "v2w_over_base": 0.90}
"""What the one-GPU work aims at (on one H200): MFU at the bf16 accounting of `harness bench train`, tokens/s
of one sequence, whole 5x40x64 videos per GPU-hour at the auto batch, Video2World over Cosmos-4B tokens/s.
Above the benches' own first goals (`train.GOAL_MFU` 50%, `generate.GOAL_BATCH1_TOKENS_PER_S` 300), met since."""


@dataclass(frozen=True)
class Case:
    name: str
    group: str
    bench: str
    argv: tuple[str, ...]
    timeout_s: int


def cases(preset: str, v2w: str, seq: int, steps: int, cuda: bool) -> list[Case]:
    """The suite: one row per bench process, in the order they run."""
    train = ("--preset", preset, "--seq", str(seq), "--warmup", "2", "--steps", str(steps))
    graph = ("--modes", "graph") if cuda else ()
    whole = ("--batch", "0", "--new-tokens", "0", "--repeats", "1", "--no-checks", *graph)
    return [
        Case("attention", "attention", "attention", ("--preset", preset, "--seq", str(seq)), 300),
        Case("train-fused", "train", "train", train, 300),
        Case("train-unfused", "train", "train", (*train, "--fuse"), 300),
        Case("train-unfused-again", "train", "train", (*train, "--fuse"), 300),
        Case("generate-base", "generate", "generate", ("--preset", preset, "--batch", "1", "8", *graph), 400),
        Case("generate-v2w", "generate", "generate", ("--preset", v2w, "--batch", "1", "8", *graph), 400),
        Case("whole-base", "whole", "generate", ("--preset", preset, *whole), 600),
        Case("whole-v2w", "whole", "generate", ("--preset", v2w, *whole), 600),
        Case("whole-base-fp8", "fp8", "generate", ("--preset", preset, *whole, "--kv-cache", "fp8"), 600),
    ]


def run_case(case: Case, out: Path) -> dict[str, Any]:
    """One bench in a fresh interpreter: its exit status, wall time and, when it failed, its output's tail."""
    cmd = [sys.executable, "-m", f"harness.bench.{case.bench}", *case.argv, "--out", str(out),
           "--name", f"{case.name}.json"]
    start = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=case.timeout_s)
        rc, tail = p.returncode, (p.stdout + p.stderr).splitlines()[-15:]
    except subprocess.TimeoutExpired:
        rc, tail = 124, [f"stopped after {case.timeout_s} s"]
    row = {"case": case.name, "rc": rc, "wall_s": round(time.perf_counter() - start, 1),
           "command": " ".join(["python", *cmd[1:]])}
    return row if rc == 0 and (out / f"{case.name}.json").exists() else {**row, "tail": tail}


def devices(out: Path, names: list[str]) -> list[str]:
    """The GPUs the cases' result files were measured on: a summary mixing two compares nothing."""
    found = {r.get("gpu") or r.get("device") for r in (_load(out, n) for n in names) if r}
    return sorted(d for d in found if d)


def _load(out: Path, name: str) -> dict[str, Any] | None:
    f = out / f"{name}.json"
    return json.loads(f.read_text()) if f.exists() else None


def _rate(result: dict[str, Any] | None, batch: int | None, key: str = "tokens_per_s") -> float | None:
    """The fastest mode's figure at `batch` (None: the only batch, the auto one)."""
    rows = [r for r in (result or {}).get("results", []) if key in r and r[key] is not None
            and (batch is None or r["batch"] == batch)]
    return max(r[key] for r in rows) if rows else None


def _max_diff(a: list[float], b: list[float]) -> float | None:
    return max(abs(x - y) for x, y in zip(a, b, strict=True)) if a and len(a) == len(b) else None


def train_summary(out: Path) -> dict[str, Any]:
    """MFU of the default (fused) path, and its losses against the unfused path's, with the unfused path's own
    run-to-run difference as the tolerance (cuDNN's attention backward does not repeat bit for bit)."""
    fused, base, again = (_load(out, n) for n in ("train-fused", "train-unfused", "train-unfused-again"))
    s: dict[str, Any] = {}
    if fused:
        s.update(mfu=fused["mfu"], step_ms=1e3 * fused["median_step_s"], peak_gib=fused["peak_mem_gib"],
                 mfu_goal_met=fused["mfu"] >= GOALS["train_mfu"])
    if base:
        s.update(unfused_mfu=base["mfu"], unfused_step_ms=1e3 * base["median_step_s"])
    if fused and base:
        s["loss_diff_fused_vs_unfused"] = _max_diff(fused["step_losses"], base["step_losses"])
    if base and again:
        s["loss_tolerance_unfused_vs_unfused"] = _max_diff(base["step_losses"], again["step_losses"])
    if s.get("loss_diff_fused_vs_unfused") is not None and s.get("loss_tolerance_unfused_vs_unfused") is not None:
        s["losses_within_tolerance"] = s["loss_diff_fused_vs_unfused"] <= s["loss_tolerance_unfused_vs_unfused"]
    return s


def generate_summary(out: Path) -> dict[str, Any]:
    """Batch 1 and 8 tokens/s, whole videos per GPU-hour at the auto batch, and Video2World over the base model."""
    base, v2w, wb, wv, w8 = (_load(out, n) for n in ("generate-base", "generate-v2w", "whole-base", "whole-v2w",
                                                     "whole-base-fp8"))
    s: dict[str, Any] = {}
    for b in (1, 8):
        s[f"batch{b}_tokens_per_s"] = _rate(base, b)
        s[f"v2w_batch{b}_tokens_per_s"] = _rate(v2w, b)
    s["whole_videos_per_gpu_hour"] = _rate(wb, None, "videos_per_gpu_hour")
    s["v2w_whole_videos_per_gpu_hour"] = _rate(wv, None, "videos_per_gpu_hour")
    s["whole_auto_batch"] = _rate(wb, None, "batch")
    s["v2w_whole_auto_batch"] = _rate(wv, None, "batch")
    s["fp8_whole_videos_per_gpu_hour"] = _rate(w8, None, "videos_per_gpu_hour")
    s["fp8_whole_auto_batch"] = _rate(w8, None, "batch")
    for key in ("batch1_tokens_per_s", "batch8_tokens_per_s", "whole_videos_per_gpu_hour"):
        if s[key] and s[f"v2w_{key}"]:
            s[f"v2w_over_base_{key.split('_')[0]}"] = s[f"v2w_{key}"] / s[key]
    if s["batch1_tokens_per_s"]:
        s["batch1_goal_met"] = s["batch1_tokens_per_s"] >= GOALS["batch1_tokens_per_s"]
    whole = {k: s[f"{p}whole_videos_per_gpu_hour"] for k, p in (("model", ""), ("fp8", "fp8_"))
             if s[f"{p}whole_videos_per_gpu_hour"]}
    if whole:  # with either cache (infer.kv_cache): the best, and which
        s["whole_goal_met"] = max(whole.values()) >= GOALS["whole_videos_per_gpu_hour"]
        s["whole_best_kv_cache"] = max(whole, key=lambda k: whole[k])
    return {k: v for k, v in s.items() if v is not None}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="harness bench suite")
    ap.add_argument("--preset", default="cosmos-4b", choices=sorted(PRESETS))
    ap.add_argument("--v2w-preset", default="cosmos-5b-v2w", choices=sorted(p for p in PRESETS
                                                                          if PRESETS[p].video2world))
    ap.add_argument("--seq", type=at_least(1), default=12_800, help="training and attention sequence length")
    ap.add_argument("--steps", type=at_least(1), default=18, help="timed training steps (after 2 warm-up steps)")
    ap.add_argument("--only", nargs="+", default=None, choices=["attention", "train", "generate", "whole", "fp8"],
                    help="groups of cases to run (default all)")
    ap.add_argument("--out", default="results/bench")
    return ap


def run(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    a = _parser().parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    every = cases(a.preset, a.v2w_preset, a.seq, a.steps, cuda)
    todo = [c for c in every if a.only is None or c.group in a.only]
    result: dict[str, Any] = {"bench": "suite", "device": torch.cuda.get_device_name() if cuda else "cpu",
                              "goals": GOALS, "runs": []}
    for case in todo:
        result["runs"].append(run_case(case, out))
        result.update(train=train_summary(out), generate=generate_summary(out),
                      measured_on=devices(out, [c.name for c in every]))
        atomic_write_json(out / "suite.json", result)
    result["exit_code"] = 0 if all(r["rc"] == 0 for r in result["runs"]) else 1
    atomic_write_json(out / "suite.json", result)
    return result


if __name__ == "__main__":
    r = run()
    print(json.dumps({k: r[k] for k in ("train", "generate")}, indent=1))
    sys.exit(r["exit_code"])
