"""What a backend is: it submits a plan's tasks, tells where each task stands, and cancels them.

Two backends implement it, as submitit has one module per executor: `harness.launch.slurm.SlurmBackend`
(sbatch arrays chained by --dependency) and `harness.launch.local.LocalBackend` (a detached driver that runs the
same DAG through submitit's local executor). `ops` picks one from jobs.json (`backend_for`) and never branches on
the executor's name itself. The values that travel between launch and ops (a submission, a task's state, a run's
jobs.json) are frozen types, defined here (jobs.json's in `harness.core.rundir`, its one reader), so both
backends and every command read the same fields.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Protocol

from harness.core import plan as plan_mod
from harness.core import rundir
from harness.core.paths import RunPaths
from harness.core.rundir import Jobs, Submission

COMPLETED = "COMPLETED"
ACTIVE = frozenset({"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_FED",
                    "REQUEUE_HOLD", "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "STOPPED",
                    "UNKNOWN"})
"""States that may still change: `wait` keeps polling and `resume` refuses while any task is in one.
UNKNOWN counts as active: right after sbatch a job can be missing from accounting for a moment."""
NOT_SUBMITTED = "NOT_SUBMITTED"
MISSING = "MISSING"
"""Slurm knows nothing of the task long after its submission (accounting purged or lost): final."""
LOST = "LOST"
"""Local executor: the driver died while this task was running or waiting."""


@dataclass(frozen=True)
class TaskState:
    """One task's state, as Slurm reports it (stage '' and task -1 before it is matched to the plan) or as a
    backend reports it for a plan's task."""

    stage: str
    task: int
    state: str
    job_id: str = ""
    """Slurm id of the task (`123_7` for array tasks, or a plain job id) or the local job's pid."""
    node: str = ""
    elapsed: str = ""
    exit_code: str = ""
    reason: str = ""
    log: str = ""
    """stdout file of the task (stderr: the same name ending in `.err`)."""
    cancelled_by: str = ""
    """uid from sacct's `CANCELLED by <uid>` (a user's scancel); '' when Slurm itself cancelled the task."""
    signal: int = 0
    """The signal that ended the task's steps (sacct's DerivedExitCode `0:9`): the allocation's own ExitCode of a
    SIGKILLed step reads `9:0`, srun's exit status, which looks like an exit code of the program."""
    time_limit: str = ""
    """sacct's Timelimit (`00:10:00`, `1-00:00:00`), to say which limit a TIMEOUT reached."""
    comment: str = ""
    """squeue's job comment: the harness sets it to the run id, so a reused job id can be told apart."""
    submitted: float = 0.0
    """sacct's Submit time (epoch seconds; 0 when unknown): accounting keeps no comment unless the cluster
    stores it, so a record is matched to the submission that made it by its time."""
    gpu_seconds: float = 0.0
    """Elapsed seconds x GPUs allocated, of every attempt of the task: from accounting on a cluster (ElapsedRaw
    x AllocTRES gres/gpu of each record of each round's job, `attempts`), wall x the stage's planned GPUs of each
    attempt the local driver recorded; 0 where unknown."""
    attempts: tuple[tuple[float, float], ...] = ()
    """(Submit time, GPU-seconds) of every accounting record of this job id (sacct --duplicates: a requeued
    job's earlier attempts, and any other job that had the id before), oldest first; () where not from sacct."""


@dataclass(frozen=True)
class Query:
    """A backend's answer for one run: every task's state per stage, and whether a local driver still runs."""

    stages: tuple[tuple[str, tuple[TaskState, ...]], ...]
    driver_alive: bool = False


Record = Callable[[list[Submission]], None]
"""Called after each sbatch with what this call submitted so far, so jobs.json never misses a live job."""


class Backend(Protocol):
    name: str

    def submit(self, plan: plan_mod.Plan, paths: RunPaths, todo: dict[str, list[int]], chunk_size: int,
               round_: int, parent_ids: dict[str, list[str]], record: Record) -> list[Submission]:
        """Submit the listed tasks of each stage; on a failure, cancel what this call submitted and raise."""

    def query(self, paths: RunPaths, plan: plan_mod.Plan, jobs: Jobs,
              known: Mapping[str, TaskState] | None = None) -> Query:
        """Where every task stands; `known` (Slurm) reuses states fetched once for several runs."""

    def cancel(self, paths: RunPaths, plan: plan_mod.Plan, jobs: Jobs, stage: str | None) -> str:
        """Stop the run's (or one stage's) tasks; returns one line saying what was done."""

    def log(self, paths: RunPaths, plan: plan_mod.Plan, jobs: Jobs, stage: str, task: int) -> str:
        """stdout path of the task's latest attempt, '' when it has not started."""


def load_plan(paths: RunPaths) -> plan_mod.Plan:
    """Rebuild the identical plan from the run directory alone (the local driver, status, resume)."""
    return plan_mod.build(rundir.read_spec(paths), rundir.read_facts(paths))


def done_tasks(paths: RunPaths, stage: str) -> set[int]:
    """Completed task indices of a stage: one directory listing, not one stat per task."""
    try:
        names = os.listdir(paths.markers_dir(stage))
    except FileNotFoundError:
        return set()
    return {int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit()}


def pid_alive(pid: int) -> bool:
    """The one process-alive check (the local driver): signal 0 probes without touching the process, and a zombie
    (an exited driver whose parent never reaps it, as PID 1 of many containers does not) counts as dead, or
    `resume` would refuse forever."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def ranges(tasks: list[int]) -> tuple[tuple[int, int], ...]:
    """Compress task indices into [start, stop) runs: jobs.json stays small for 1,000,000 tasks."""
    out: list[list[int]] = []
    for t in tasks:
        if out and out[-1][1] == t:
            out[-1][1] = t + 1
        else:
            out.append([t, t + 1])
    return tuple((a, b) for a, b in out)


def expand(runs: tuple[tuple[int, int], ...] | list[list[int]]) -> list[int]:
    return [t for a, b in runs for t in range(a, b)]
