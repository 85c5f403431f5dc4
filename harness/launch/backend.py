"""What a backend is: it submits a plan's tasks, tells where each task stands, and cancels them.

Two backends implement it, as submitit has one module per executor: `harness.launch.slurm.SlurmBackend`
(sbatch arrays chained by --dependency) and `harness.launch.local.LocalBackend` (a detached driver that runs the
same DAG through submitit's local executor). `ops` picks one from jobs.json (`backend_for`) and never branches on
the executor's name itself. The values that travel between launch and ops (a submission, a task's state, a run's
jobs.json) are frozen types defined here, so both backends and every command read the same fields.
"""

from __future__ import annotations

import os
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

from harness.core import plan as plan_mod
from harness.core import spec as spec_mod
from harness.core.errors import HarnessError, Problem
from harness.core.paths import RunPaths
from harness.core.atomic import read_json

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


@dataclass(frozen=True)
class Submission:
    """One jobs.json entry: one sbatch (one chunk of a stage's array) or one local driver (stage '*')."""

    stage: str
    job_id: str
    tasks: tuple[tuple[int, int], ...]
    """The stage's task indices as [start, stop) runs, in array-index order."""
    array: bool
    time: float
    round: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "job_id": self.job_id, "tasks": [list(r) for r in self.tasks],
                "array": self.array, "time": self.time, "round": self.round}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Submission:
        return cls(str(d["stage"]), str(d["job_id"]), tuple((int(a), int(b)) for a, b in d.get("tasks", [])),
                   bool(d.get("array", False)), float(d.get("time", 0)), int(d.get("round", 0)))


@dataclass(frozen=True)
class Jobs:
    """jobs.json: which backend ran the run, why, and every submission of every round."""

    executor: str
    reason: str
    submissions: tuple[Submission, ...]

    def to_json(self) -> dict[str, Any]:
        return {"executor": self.executor, "reason": self.reason,
                "submissions": [s.to_json() for s in self.submissions]}

    @property
    def next_round(self) -> int:
        return 1 + max((s.round for s in self.submissions), default=-1)


def read_jobs(paths: RunPaths) -> Jobs:
    try:
        raw = read_json(paths.jobs_json)
    except (OSError, ValueError) as e:
        raise HarnessError(Problem(str(paths.jobs_json), "", f"cannot read ({e.__class__.__name__}: {e})")) from None
    if raw.get("executor") not in ("slurm", "local") or not isinstance(raw.get("submissions"), list):
        raise HarnessError(Problem(str(paths.jobs_json), "executor",
                                   "expected 'slurm' or 'local', with a 'submissions' list"))
    return Jobs(raw["executor"], raw.get("reason", ""), tuple(Submission.from_json(s) for s in raw["submissions"]))


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
    spec = spec_mod.from_dict(read_json(paths.spec_json), source=str(paths.spec_json))
    facts = plan_mod.Facts(**read_json(paths.plan_json)["facts"])
    return plan_mod.build(spec, facts)


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
