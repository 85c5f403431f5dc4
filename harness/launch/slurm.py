"""Submit a plan to Slurm through submitit: one sbatch per stage (per chunk of a split array), in
topological order, each with the real job ids of its parents in --dependency. Returns at once."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import submitit

from harness.launch import render
from harness.launch.task import StageTask
from harness.core.plan import Plan, StagePlan
from harness.core.paths import RunPaths

MAX_REQUEUES = 50
"""Time-limit requeues submitit allows a task (its default, 3, would end a long finetune early)."""

Submission = dict  # {"stage", "job_id", "tasks": [[start, stop], ...], "array": bool, "time": float}


def harness_source() -> Path:
    """The directory that holds the `harness` package: mounted into containers as-is."""
    return Path(__file__).resolve().parents[2]


def pure_python_deps() -> list[Path]:
    """Packages the container may lack that the task bootstrap needs (submitit, cloudpickle)."""
    import cloudpickle

    return [Path(submitit.__file__).parent, Path(cloudpickle.__file__).parent]


def python_for(plan: Plan, stage: StagePlan) -> str:
    return plan.spec.container.python if stage.container else shlex.quote(sys.executable)


def srun_args(plan: Plan, stage: StagePlan, paths: RunPaths) -> list[str]:
    if not stage.container:
        return []
    return render.container_args(plan.spec, paths, harness_source(), pure_python_deps())


def submit_stage(plan: Plan, stage: StagePlan, paths: RunPaths, tasks: list[int],
                 parent_ids: dict[str, list[str]], chunk_size: int) -> list[Submission]:
    """Submit `tasks` (array indices of this stage) in chunks no larger than MaxArraySize."""
    out: list[Submission] = []
    for k, start in enumerate(range(0, len(tasks), chunk_size)):
        part = tasks[start:start + chunk_size]
        params = render.executor_params(plan, stage, paths, render.dependency(stage, parent_ids, k),
                                        srun_args(plan, stage, paths))
        ex = submitit.SlurmExecutor(folder=paths.logs(stage.name) / "%j", python=python_for(plan, stage),
                                    max_num_timeout=MAX_REQUEUES)
        ex.update_parameters(**params)
        with ex.batch():
            jobs = [ex.submit(StageTask(str(paths.root), stage.name, t)) for t in part]
        job_id = str(jobs[0].job_id).split("_")[0]
        out.append({"stage": stage.name, "job_id": job_id, "tasks": ranges(part), "array": len(part) > 1,
                    "time": time.time()})
    return out


def ranges(tasks: list[int]) -> list[list[int]]:
    """Compress task indices into [start, stop) runs: jobs.json stays small for 1,000,000 tasks."""
    out: list[list[int]] = []
    for t in tasks:
        if out and out[-1][1] == t:
            out[-1][1] = t + 1
        else:
            out.append([t, t + 1])
    return out


def expand(runs: list[list[int]]) -> list[int]:
    return [t for a, b in runs for t in range(a, b)]
