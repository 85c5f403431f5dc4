"""`harness bench plan`: `harness plan` end to end (a fresh process: imports, spec, input listing, planning,
rendering) of a spec whose data.videos holds N empty files (1,000,000 by default), median of a few repeats.

The goal: under 5 s for 1,000,000 files (docs/design.md, "Planning at scale") on the 2-core development machine. That
machine is shared, so the load average before and after each repeat is recorded with the figure."""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.bench import at_least
from harness.core.atomic import atomic_write_json
from harness.core.errors import HarnessError, Problem

GOAL_S = 5.0

SPEC = """
[run]
name = "bench-plan"
workdir = "{tmp}/runs"
[model]
preset = "cosmos-4b"
checkpoint = "nvidia/Cosmos-1.0-Autoregressive-4B"
[data]
videos = "{tmp}/videos"
[assets]
hf_home = "{tmp}/hf"
[tokenize]
videos_per_shard = 100
[finetune]
gpus_per_node = 8
tensor_parallel = 8
[infer]
gpus_per_node = 1
"""


def make_files(root: Path, n: int, per_dir: int) -> None:
    """n empty .mp4 files, `per_dir` to a folder (a flat folder of a million is not how datasets are kept)."""
    for d in range(0, n, per_dir):
        sub = root / f"part-{d // per_dir:05d}"
        sub.mkdir(parents=True, exist_ok=True)
        for i in range(d, min(d + per_dir, n)):
            os.close(os.open(sub / f"clip-{i:07d}.mp4", os.O_CREAT | os.O_WRONLY, 0o644))


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _one(spec: Path, src: str = "") -> tuple[float, float, str]:
    """(wall s, CPU s of the child: user + system, the `inputs:` line it printed); `src`: another harness
    source tree to time instead of this one (a baseline, e.g. `git archive` of an older commit)."""
    env = {**os.environ, "PYTHONPATH": src or str(Path(__file__).resolve().parents[2]), "COLUMNS": "200"}
    c0, t0 = _cpu_children(), time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "plan", str(spec)], capture_output=True, text=True,
                          env=env, cwd=spec.parent)
    wall, cpu = time.perf_counter() - t0, _cpu_children() - c0
    if proc.returncode != 0:
        raise RuntimeError(f"harness plan failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("inputs:")), "")
    return wall, cpu, line


def run(argv: list[str]) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="harness bench plan")
    ap.add_argument("--files", type=at_least(1), default=1_000_000)
    ap.add_argument("--per-dir", type=at_least(1), default=1000)
    ap.add_argument("--repeat", type=at_least(1), default=3)
    ap.add_argument("--out", default="results/bench")
    ap.add_argument("--baseline", default="", help="also time the harness source tree in this folder, "
                                                   "interleaved with this one (same load)")
    ap.add_argument("--baseline-label", default="", help="what the baseline tree is, for the record")
    ap.add_argument("--keep", default="", help="create the files in this folder once and reuse them on later runs "
                                               "(a million files take minutes to create on a busy machine)")
    a = ap.parse_args(argv)
    if a.baseline and not (Path(a.baseline) / "harness" / "cli.py").is_file():  # else the installed tree is timed
        raise HarnessError(Problem(a.baseline, "--baseline", "is no harness source tree (no harness/cli.py in it)"))
    runs: list[dict[str, Any]] = []
    baseline: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(a.keep) if a.keep else Path(d)
        t0 = time.perf_counter()
        marker = tmp / f".created-{a.files}-{a.per_dir}"
        if not marker.exists():
            make_files(tmp / "videos", a.files, a.per_dir)
            marker.touch()
        create_s = time.perf_counter() - t0
        spec = tmp / "bench-plan.toml"
        spec.write_text(SPEC.format(tmp=tmp), encoding="utf-8")
        for _ in range(a.repeat):
            before = os.getloadavg()[0]
            wall, cpu, line = _one(spec)
            runs.append({"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "load1_before": before,
                         "load1_after": os.getloadavg()[0]})
            if a.baseline:
                b_wall, b_cpu, _ = _one(spec, a.baseline)
                baseline.append({"wall_s": round(b_wall, 3), "cpu_s": round(b_cpu, 3), "load1_after":
                                 os.getloadavg()[0]})
    walls = [r["wall_s"] for r in runs]
    med = statistics.median(walls)
    result = {"bench": "plan", "files": a.files, "files_per_dir": a.per_dir, "repeat": a.repeat,
              "median_wall_s": med, "min_wall_s": min(walls), "max_wall_s": max(walls),
              "files_per_s": round(a.files / med), "median_cpu_s": statistics.median(r["cpu_s"] for r in runs),
              "files_per_cpu_s": round(a.files / statistics.median(r["cpu_s"] for r in runs)), "runs": runs,
                  "plan_says": line, "create_files_s": round(create_s, 1),
              "cpus": os.cpu_count(), "goal": {"wall_s_below": GOAL_S}, "meets_goal": med < GOAL_S,
              "what": "`harness plan SPEC` in a fresh process, end to end; cpu = its user + system time; load1 = "
                      "1-minute load average of this (shared) machine; the goal is judged on the median wall time",
              "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if baseline:
        result["baseline"] = {"src": a.baseline, "label": a.baseline_label,
            "median_wall_s": statistics.median(r["wall_s"] for r in baseline),
                              "median_cpu_s": statistics.median(r["cpu_s"] for r in baseline), "runs": baseline}
    atomic_write_json(Path(a.out) / "plan.json", result)
    return result
