"""`harness bench submit`: plan + submit of a production-sized spec (10,000 videos, 12 checkpoints) to the
cluster that answers here; reports wall time and sbatch calls, then cancels the jobs it made."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.bench import at_least
from harness.core.atomic import atomic_write_json
from harness.launch import slurmcli
from harness.ops import submit as launching

SPEC = """
[run]
name = "bench-submit"
workdir = "{workdir}"
[model]
# the tiny preset: the local cluster has no GPUs, and `submit` rejects a real model without them; planning and
# submitting cost the same for any model
preset = "tiny"
[video]
width = 64
height = 48
num_frames = 9
[data]
videos = "{videos}"
[assets]
hf_home = "{workdir}/hf"
[tokenize]
videos_per_shard = 100
[finetune]
max_steps = {steps}
save_every = 10
"""


def _make_inputs(root: Path, n: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"clip-{i:07d}.mp4").touch()


def _one(tmp: Path, n: int, checkpoints: int, k: int) -> dict[str, Any]:
    spec_path = tmp / f"bench-{k}.toml"
    spec_path.write_text(SPEC.format(workdir=tmp / "runs", videos=tmp / "videos", steps=10 * checkpoints))
    slurmcli.CALLS.clear()
    t0 = time.perf_counter()
    res = launching.submit(spec_path, "slurm", doctor=False)  # the submit path itself; 12 cosmos-4b checkpoints
    # would fail doctor's free-space check in a temp dir
    wall = time.perf_counter() - t0
    ids = [s.job_id for s in res.submissions]
    queued = subprocess.run(["squeue", "-h", "-o", "%F", "-j", ",".join(ids)], capture_output=True, text=True).stdout
    slurmcli.scancel(ids)
    return {"wall_s": wall, "sbatch_calls": len(res.submissions), "distinct_jobs_in_queue": len(set(queued.split())),
            "tasks": sum(s.tasks for s in res.plan.stages), "run_dir": str(res.paths.root)}


def run(argv: list[str]) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="harness bench submit")
    ap.add_argument("--videos", type=at_least(1), default=10_000)
    ap.add_argument("--checkpoints", type=at_least(1), default=12)
    ap.add_argument("--repeat", type=at_least(1), default=5)
    ap.add_argument("--out", default="results/bench")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        _make_inputs(tmp / "videos", a.videos)
        runs = [_one(tmp, a.videos, a.checkpoints, k) for k in range(a.repeat)]
    walls = [r["wall_s"] for r in runs]
    result = {"bench": "submit", "videos": a.videos, "checkpoints": a.checkpoints, "repeat": a.repeat,
              "median_wall_s": statistics.median(walls), "min_wall_s": min(walls), "max_wall_s": max(walls),
              "sbatch_calls": runs[0]["sbatch_calls"], "distinct_jobs_in_queue": runs[0]["distinct_jobs_in_queue"],
              "tasks": runs[0]["tasks"], "goal": {"wall_s_below": 2.0, "sbatch_calls_at_most": 7},
              "cluster": slurmcli.config().get("ClusterName", "?"), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    result["meets_goal"] = result["median_wall_s"] < 2.0 and result["sbatch_calls"] <= 7
    out = Path(a.out) / "submit.json"
    atomic_write_json(out, result)
    return result
