"""Where every task of a run stands, from the run directory plus at most one squeue and one sacct.

A task is COMPLETED iff its completion marker exists (markers are written last, so they are the truth);
otherwise its state comes from the LATEST round's submission that contains it: the live squeue entry, else
the accounting record, else the local driver's `local_state.json`. `status`, `wait`, `resume`, `runs` and
`report` all read this one view.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.core import failures
from harness.core.errors import HarnessError, Problem
from harness.launch import slurmcli
from harness.core.plan import Plan
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
MISSING_AFTER_S = 300.0
LOST = "LOST"
"""Local executor: the driver died while this task was running or waiting."""


@dataclass(frozen=True)
class TaskRow:
    stage: str
    task: int
    state: str
    job_id: str = ""
    """Slurm id of the task (`123_7` for array tasks) or the local job's pid."""
    node: str = ""
    elapsed: str = ""
    exit_code: str = ""
    reason: str = ""
    log: str = ""
    """stdout file of the task (stderr: the same name ending in `.err`)."""


@dataclass(frozen=True)
class StageState:
    name: str
    rows: tuple[TaskRow, ...]

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            out[r.state] = out.get(r.state, 0) + 1
        return out

    @property
    def done(self) -> int:
        return sum(r.state == COMPLETED for r in self.rows)


@dataclass(frozen=True)
class RunState:
    paths: RunPaths
    executor: str
    stages: tuple[StageState, ...]
    driver_alive: bool = False

    @property
    def rows(self) -> list[TaskRow]:
        return [r for s in self.stages for r in s.rows]

    @property
    def final(self) -> bool:
        return not any(r.state in ACTIVE for r in self.rows)

    @property
    def complete(self) -> bool:
        return all(r.state == COMPLETED for r in self.rows)

    def summary(self) -> str:
        rows = self.rows
        counts: dict[str, int] = {}
        for r in rows:
            counts[r.state] = counts.get(r.state, 0) + 1
        parts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        return f"{sum(r.state == COMPLETED for r in rows)}/{len(rows)} tasks completed ({parts})"


# ------------------------------------------------------------------------------------------ run lookup
def resolve_run(run: str, workdir: str = "runs") -> RunPaths:
    """A run id (under workdir) or a run directory; one clear line when it is neither."""
    for cand in (Path(run), Path(workdir) / run):
        if (cand / "jobs.json").is_file() and (cand / "plan.json").is_file():
            return RunPaths(cand.absolute())
    raise HarnessError(Problem(run, "", f"no run directory with jobs.json and plan.json here or at "
                                        f"{Path(workdir) / run} (harness runs --workdir {workdir} lists runs)"))


def load_jobs(paths: RunPaths) -> dict[str, Any]:
    try:
        jobs = read_json(paths.jobs_json)
    except (OSError, ValueError) as e:
        raise HarnessError(Problem(str(paths.jobs_json), "", f"cannot read ({e.__class__.__name__}: {e})")) from None
    if jobs.get("executor") not in ("slurm", "local") or not isinstance(jobs.get("submissions"), list):
        raise HarnessError(Problem(str(paths.jobs_json), "executor",
                                   "expected 'slurm' or 'local', with a 'submissions' list"))
    return jobs  # type: ignore[no-any-return]


def done_tasks(paths: RunPaths, stage: str) -> set[int]:
    """Completed task indices of a stage: one directory listing, not one stat per task."""
    try:
        names = os.listdir(paths.marker(stage, 0).parent)
    except FileNotFoundError:
        return set()
    return {int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit()}


# ------------------------------------------------------------------------------------------ slurm
_ARRAY = re.compile(r"^(\d+)_\[([^\]]+)\]$")


def expand_ids(states: dict[str, slurmcli.TaskState]) -> dict[str, slurmcli.TaskState]:
    """sacct shows array tasks that never started as one line, `123_[0-4,7%2]`: expand to `123_0`..."""
    out = dict(states)
    for key, st in states.items():
        m = _ARRAY.match(key)
        if not m:
            continue
        for part in m.group(2).split("%")[0].split(","):
            lo, _, hi = part.partition("-")
            for i in range(int(lo), int(hi or lo) + 1):
                out.setdefault(f"{m.group(1)}_{i}", st)
    return out


def job_ids(jobs: dict[str, Any], stage: str | None = None) -> list[str]:
    return [s["job_id"] for s in jobs["submissions"]
            if not str(s["job_id"]).startswith("local:") and (stage is None or s["stage"] == stage)]


def query_slurm(ids: list[str]) -> dict[str, slurmcli.TaskState]:
    """One squeue and one sacct for any number of jobs; live squeue entries win over accounting."""
    if not ids:
        return {}
    live = expand_ids(slurmcli.squeue(ids))  # first: a task leaving the queue meanwhile is then in sacct
    acct = expand_ids(slurmcli.sacct(ids))
    return {**acct, **live}


def latest_ids(paths: RunPaths, jobs: dict[str, Any], stage: str) -> dict[int, tuple[str, str, float]]:
    """task -> (Slurm task id, stdout path, submit time) from the latest round's submission containing it."""
    out: dict[int, tuple[str, str, float]] = {}
    subs = sorted((s for s in jobs["submissions"] if s["stage"] == stage), key=lambda s: s.get("round", 0))
    for sub in subs:  # later rounds overwrite earlier ones
        j = 0
        for a, b in sub["tasks"]:
            for t in range(a, b):
                sid = f"{sub['job_id']}_{j}" if sub.get("array") else str(sub["job_id"])
                out[t] = (sid, str(paths.logs(stage) / sid / f"{sid}_0_log.out"), float(sub.get("time", 0)))
                j += 1
    return out


def _slurm_row(stage: str, task: int, done: bool, sid: str, log: str, submitted: float,
               st: slurmcli.TaskState | None, known: set[str], root: Path | None = None) -> TaskRow:
    if st is None:
        if done:
            return TaskRow(stage, task, COMPLETED, sid, log=log)
        if "_" in sid and sid.split("_")[0] in known:
            # squeue -r lists every queued task and sacct every started one: a task of a known array in
            # neither was cancelled while pending, of which Slurm (22.05) keeps no accounting record.
            return TaskRow(stage, task, "CANCELLED", sid, log=log, reason="cancelled while pending")
        fresh = time.time() - submitted < MISSING_AFTER_S
        return TaskRow(stage, task, "UNKNOWN" if fresh else MISSING, sid, log=log,
                       reason="not in squeue or sacct yet" if fresh else "in neither squeue nor sacct")
    state = COMPLETED if done else st.state
    if state == COMPLETED and not done:
        state = "FAILED"
    return TaskRow(stage, task, state, sid, st.node if st.node not in ("None assigned",) else "",
                   st.elapsed, st.exit_code, explain(state, st, log, done, root), log)


_FINAL_REASONS = {"OUT_OF_MEMORY": "out of memory: raise mem_gb or lower the batch size",
                  "TIMEOUT": "time limit reached: raise time_min (requeue-safe stages resume)",
                  "NODE_FAIL": "node failure: resume resubmits the task",
                  "PREEMPTED": "preempted", "BOOT_FAIL": "node failed to boot", "DEADLINE": "deadline reached"}


def explain(state: str, st: slurmcli.TaskState, log: str, done: bool, root: Path | None = None) -> str:
    """Why a task is where it is. sacct's Reason of a finished task is its last PENDING reason (stale), so
    finished tasks are explained by their state, and failures by the last error line of their log."""
    if state in ("PENDING", "REQUEUED", "REQUEUE_HOLD"):
        return "" if st.reason in ("None", "") else st.reason
    if state == "FAILED":
        if st.state == COMPLETED and not done:
            return "exited 0 but wrote no completion marker"
        return error_line(log, root) or f"exit code {st.exit_code}"
    if state == "CANCELLED":
        if st.cancelled_by:
            return f"cancelled by uid {st.cancelled_by}"
        # no "by <uid>": Slurm cancelled it itself, which for harness jobs (--kill-on-invalid-dep=yes) means a
        # dependency failed; sacct's Reason then reads "Dependency" or "None" depending on scheduler timing
        return "DependencyNeverSatisfied: a task it depends on failed"
    return _FINAL_REASONS.get(state, "")


def error_line(log: str, root: Path | None = None, tail_bytes: int = 8192) -> str:
    """The reason in a task's stderr (submitit prints the traceback there): `failures.reason`, which maps a full
    disk under `root` (the run directory) to one line."""
    err = Path(log[: -len(".out")] + ".err") if log.endswith(".out") else None
    if err is None or not err.is_file():
        return ""
    with open(err, "rb") as f:
        f.seek(max(0, err.stat().st_size - tail_bytes))
        return failures.reason(f.read().decode(errors="replace"), root)


def slurm_stage(paths: RunPaths, jobs: dict[str, Any], stage: str, tasks: int,
                states: dict[str, slurmcli.TaskState]) -> StageState:
    done = done_tasks(paths, stage)  # after the Slurm queries: a task finishing meanwhile reads COMPLETED
    ids = latest_ids(paths, jobs, stage)
    known = {k.split("_")[0] for k in states if "_" in k}
    rows = []
    for t in range(tasks):
        if t not in ids:
            rows.append(TaskRow(stage, t, COMPLETED if t in done else NOT_SUBMITTED))
            continue
        sid, log, submitted = ids[t]
        rows.append(_slurm_row(stage, t, t in done, sid, log, submitted, states.get(sid), known, paths.root))
    return StageState(stage, tuple(rows))


# ------------------------------------------------------------------------------------------ local
def _pid_alive(pid: int) -> bool:
    """Alive and not a zombie: an exited driver whose parent never reaps it (PID 1 of many containers) is dead."""
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


def local_driver(paths: RunPaths, jobs: dict[str, Any]) -> tuple[int, bool]:
    """pid of the latest local driver and whether it is still running this run."""
    pids = [int(str(s["job_id"]).split(":")[1]) for s in jobs["submissions"] if str(s["job_id"]).startswith("local:")]
    if not pids:
        return 0, False
    finished = (paths.root / "local_done.json").exists()
    return pids[-1], (not finished) and _pid_alive(pids[-1])


def _fmt_elapsed(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def local_stage(paths: RunPaths, entries: dict[str, Any], stage: str, tasks: int, alive: bool) -> StageState:
    done = done_tasks(paths, stage)
    rows = []
    for t in range(tasks):
        e = entries.get(str(t))
        if t in done:
            state = COMPLETED
        elif e is None:
            state = "PENDING" if alive else NOT_SUBMITTED
        else:
            state = e.get("state", "UNKNOWN")
            if state == "RUNNING" and not alive:
                state = LOST
        if e is None:
            rows.append(TaskRow(stage, t, state, reason="driver has not reached it" if alive else ""))
            continue
        start, end = e.get("start"), e.get("end") or (time.time() if state == "RUNNING" else None)
        job = str(e.get("job_id", ""))
        log = e.get("stdout") or (str(paths.logs(stage) / job / f"{job}_0_log.out") if job else "")
        reason = e.get("reason", "") or ("the local driver died" if state == LOST else "")
        rows.append(TaskRow(stage, t, state, job, os.uname().nodename if job else "",
                            _fmt_elapsed(end - start) if start and end else "",
                            "", reason, log))
    return StageState(stage, tuple(rows))


# ------------------------------------------------------------------------------------------ entry
@dataclass
class Snapshot:
    """Slurm states fetched once for several runs (`harness runs`): two queries in all."""

    states: dict[str, slurmcli.TaskState] = field(default_factory=dict)


def collect(paths: RunPaths, plan: Plan, snapshot: Snapshot | None = None) -> RunState:
    jobs = load_jobs(paths)
    if jobs["executor"] == "local":
        pid, alive = local_driver(paths, jobs)
        sp = paths.root / "local_state.json"
        stages = read_json(sp).get("stages", {}) if sp.exists() else {}
        return RunState(paths, "local", tuple(local_stage(paths, stages.get(s.name, {}), s.name, s.tasks, alive)
                                              for s in plan.stages), alive)
    states = snapshot.states if snapshot is not None else query_slurm(job_ids(jobs))
    return RunState(paths, "slurm", tuple(slurm_stage(paths, jobs, s.name, s.tasks, states) for s in plan.stages))
