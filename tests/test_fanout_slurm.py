"""Evaluation fan-out on the local cluster: infer and evaluate as arrays of 2 checkpoints x 4 input shards (tiny
preset, the test split of 8 tiny clips, one input per shard). One (checkpoint, shard) infer task is killed while
it runs; its evaluate task is cancelled by the dependency, the report names that shard, `resume` resubmits
exactly that pair (and the report), and the finished report's per-checkpoint means are the means over every
per-video metric of the evaluate shard files."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pytest
from rich.console import Console

import specs
from harness import ops
from harness.core import plan as plan_mod
from harness.core.atomic import read_json
from harness.core.paths import RunPaths, is_done
from harness.launch import slurmcli
from harness.ops import control, state
from harness.ops import submit as launching
from reliability_helpers import tiny_assets

pytestmark = pytest.mark.slurm

CHECKPOINTS, SHARDS = 2, 4
KILLED = (1, 2)
"""The (checkpoint index, shard) whose infer task is killed."""


def fanout_spec(tmp: Path) -> Path:
    a = tiny_assets(tmp, clips=8)
    return specs.write(tmp / "fan.toml", specs.tiny_run(tmp, name="fan", videos=a["videos"], hf=a["hf"]),
                       specs.QUICK_JOBS, {
                           "data": {"split": [1, 1, 2]}, "tokenize": {"shards": 2},
                           "finetune": {"max_steps": CHECKPOINTS, "save_every": 1, "global_batch_size": 1},
                           "infer": {"max_inputs": 8, "inputs_per_task": 1, "cpus_per_task": 1},
                           "evaluate": {"cpus_per_task": 1}})


def _state(paths: RunPaths, plan: plan_mod.Plan, stage: str, task: int) -> str:
    return next(r.state for r in state.collect(paths, plan).rows if r.stage == stage and r.task == task)


def kill_when_running(paths: RunPaths, plan: plan_mod.Plan, task: int, timeout_s: float = 600) -> None:
    """scancel infer[task] once Slurm runs it (the shard's model load alone takes seconds here)."""
    job = next(s.job_id for s in state.load_jobs(paths).submissions if s.stage == "infer")
    deadline = time.monotonic() + timeout_s
    while _state(paths, plan, "infer", task) != "RUNNING":
        assert time.monotonic() < deadline, "infer task never started"
        assert not is_done(paths, "infer", task), "infer task finished before it could be killed"
        time.sleep(0.3)
    slurmcli.scancel([f"{job}_{task}"])


@pytest.mark.timeout(1800)
def test_checkpoints_x_shards_kill_one_pair_resume_and_report(slurm_cluster: str, tmp_path: Path) -> None:
    res = launching.submit(fanout_spec(tmp_path), "slurm")
    paths, plan = res.paths, res.plan
    # 8 clips split 1:1:2 -> a test split of 4 -> 4 shards of 1 input, known at plan time
    assert plan.spec.infer.max_inputs == SHARDS and plan_mod.infer_shards(plan.spec.infer) == SHARDS
    assert plan.stage("infer").tasks == plan.stage("evaluate").tasks == CHECKPOINTS * SHARDS
    killed = plan_mod.infer_task_index(plan.spec, *KILLED)
    kill_when_running(paths, plan, killed)
    assert ops.wait(paths, timeout_s=1200) == 1

    rows = {(r.stage, r.task): r for r in state.collect(paths, plan).rows}
    assert rows[("infer", killed)].state == "CANCELLED"
    assert rows[("evaluate", killed)].state == "CANCELLED"  # aftercorr on a cancelled task: never satisfied
    others = [t for t in range(CHECKPOINTS * SHARDS) if t != killed]
    assert all(rows[(s, t)].state == "COMPLETED" for s in ("infer", "evaluate") for t in others)
    step = plan.checkpoint_steps[KILLED[0]]
    first = read_json(tmp_path / "results" / paths.run_id / "report.json")  # the report stage ran (afterany)
    assert [(m["step"], m["shard"], m["task"]) for m in first["missing_shards"]] == [(step, KILLED[1], killed)]
    assert f"infer[{killed}]" in first["missing_shards"][0]["why"]
    row = next(c for c in first["checkpoints"] if c["step"] == step)
    assert (row["videos"], row["shards"], row["shards_planned"]) == (SHARDS - 1, SHARDS - 1, SHARDS)

    todo = control.resume(paths, Console(record=True))
    assert todo == {"infer": [killed], "evaluate": [killed], "report": [0]}
    new = [s for s in state.load_jobs(paths).submissions if s.round == 1]
    assert [(s.stage, s.tasks) for s in new] == [("infer", ((killed, killed + 1),)),
                                              ("evaluate", ((killed, killed + 1),)), ("report", ((0, 1),))]
    assert ops.wait(paths, timeout_s=900) == 0
    check_report(paths, plan)


def check_report(paths: RunPaths, plan: plan_mod.Plan) -> None:
    """Every shard scored its one input; the report's means are the means over all per-video metrics."""
    assert ops.print_report(paths) == 0
    rep = read_json(Path(plan.spec.run.results_dir) / paths.run_id / "report.json")
    assert rep["missing_shards"] == []
    by_step = {c["step"]: c for c in rep["checkpoints"]}
    for c, step in enumerate(plan.checkpoint_steps):
        videos = []
        for k in range(SHARDS):
            ev = read_json(paths.eval_json(step, k))
            assert ev["failed"] == [] and len(ev["videos"]) == 1 and ev["shard"] == k
            assert [v["name"] for v in ev["videos"]] == read_json(paths.infer_manifest(step, k))["names"]
            videos += ev["videos"]
        assert len({v["name"] for v in videos}) == SHARDS  # disjoint shards covering the whole test split
        row = by_step[step]
        assert (row["videos"], row["shards"]) == (SHARDS, SHARDS)
        assert row["psnr"] == pytest.approx(statistics.fmean(v["psnr"] for v in videos), rel=1e-12)
        assert row["ssim"] == pytest.approx(statistics.fmean(v["ssim"] for v in videos), rel=1e-12)
