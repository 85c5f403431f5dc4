"""Where each task of a Slurm run stands: its completion marker (written last, so the truth), else the live
squeue entry of the LATEST round's submission that contains it, else its accounting record. One squeue and
one sacct for any number of jobs."""

from __future__ import annotations

import dataclasses
import re
import signal
import time
from pathlib import Path
from typing import Mapping

from harness.core import failures
from harness.core.paths import RunPaths
from harness.launch import slurmcli
from harness.launch.backend import COMPLETED, MISSING, NOT_SUBMITTED, Jobs, TaskState, done_tasks

MISSING_AFTER_S = 300.0
SUBMIT_WINDOW_S = (120.0, 5.0)
"""A record is the submission's when Slurm's Submit time lies this many seconds before / after the time the
harness stored once sbatch returned (a busy controller can take a while to answer sbatch)."""


def ours(st: TaskState, run_id: str, submitted: float) -> bool:
    """Whether a Slurm record is still this run's job: its comment (set to the run id at submit) when Slurm shows
    it, else its submit time. Job ids are reused (after MaxJobId wraps, or a controller loses its state), and a
    record of another run's job under a stored id must never be read, let alone cancelled, as this run's."""
    if st.comment:
        return st.comment == run_id
    if st.submitted:
        before, after = SUBMIT_WINDOW_S
        first = min((t for t, _ in since(st, submitted)), default=st.submitted)
        return submitted - before <= first <= submitted + after
    return True


def since(st: TaskState, submitted: float) -> tuple[tuple[float, float], ...]:
    """The accounting records of `st`'s id from the submission at `submitted` on: its first attempt and the
    requeued ones after it (Slurm gives each its own Submit time), not a record of an earlier job that had the
    same id."""
    before, _ = SUBMIT_WINDOW_S
    return tuple(a for a in st.attempts if not a[0] or a[0] >= submitted - before)


def used_gpu_seconds(st: TaskState | None, submitted: float) -> float:
    """GPU-seconds of every attempt of the task submitted at `submitted` under `st`'s id."""
    if st is None:
        return 0.0
    return sum(g for _, g in since(st, submitted)) if st.attempts else st.gpu_seconds
_ARRAY = re.compile(r"^(\d+)_\[([^\]]+)\]$")


def expand_ids(states: dict[str, TaskState]) -> dict[str, TaskState]:
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


def query(ids: list[str]) -> dict[str, TaskState]:
    """One squeue and one sacct for any number of jobs; live squeue entries win over accounting."""
    if not ids:
        return {}
    live = expand_ids(slurmcli.squeue(ids))  # first: a task leaving the queue meanwhile is then in sacct
    acct = expand_ids(slurmcli.sacct(ids))
    return {**acct, **{k: _with_usage(v, acct.get(k)) for k, v in live.items()}}


def _with_usage(live: TaskState, acct: TaskState | None) -> TaskState:
    """A live entry keeps the GPU use accounting has for its id (earlier attempts, the running one so far)."""
    if acct is None:
        return live
    return dataclasses.replace(live, gpu_seconds=acct.gpu_seconds, attempts=acct.attempts)


def all_ids(jobs: Jobs, stage: str) -> dict[int, list[tuple[str, float]]]:
    """task -> (Slurm task id, submit time) of every round's submission containing it, oldest round first."""
    out: dict[int, list[tuple[str, float]]] = {}
    for sub in sorted((s for s in jobs.submissions if s.stage == stage), key=lambda s: s.round):
        j = 0
        for a, b in sub.tasks:
            for t in range(a, b):
                out.setdefault(t, []).append((f"{sub.job_id}_{j}" if sub.array else sub.job_id, sub.time))
                j += 1
    return out


def latest_ids(paths: RunPaths, jobs: Jobs, stage: str) -> dict[int, tuple[str, str, float]]:
    """task -> (Slurm task id, stdout path, submit time) from the latest round's submission containing it."""
    return {t: (sid, str(paths.task_log(stage, sid)), time_) for t, ids in all_ids(jobs, stage).items()
            for sid, time_ in ids[-1:]}


def gpu_seconds(ids: list[tuple[str, float]], states: Mapping[str, TaskState], run_id: str) -> float:
    """GPU-seconds a task used over every round that submitted it (`harness resume` resubmits under a new job
    id) and every attempt of each (a requeue keeps the id); a record that is no longer this run's counts 0."""
    total = 0.0
    for sid, submitted in ids:
        st = states.get(sid)
        if st is not None and (not run_id or ours(st, run_id, submitted)):
            total += used_gpu_seconds(st, submitted)
    return total


def _row(stage: str, task: int, done: bool, sid: str, log: str, submitted: float,
         st: TaskState | None, known: set[str], root: Path | None = None, run_id: str = "") -> TaskState:
    if st is not None and run_id and not ours(st, run_id, submitted):
        st = None  # that id is another job's now: this run's task is in neither query
    if st is None:
        if done:
            return TaskState(stage, task, COMPLETED, sid, log=log)
        if "_" in sid and sid.split("_")[0] in known and not Path(log).exists():
            # squeue -r lists every queued task and sacct every started one: a task of a known array in
            # neither, that never started (no log), was cancelled while pending, of which Slurm (22.05) keeps no
            # accounting record. One that started may just have ended, before accounting has its record: its
            # state is not known yet, and guessing CANCELLED there showed a killed task as cancelled.
            return TaskState(stage, task, "CANCELLED", sid, log=log, reason="cancelled while pending")
        fresh = time.time() - submitted < MISSING_AFTER_S
        return TaskState(stage, task, "UNKNOWN" if fresh else MISSING, sid, log=log,
                         reason="not in squeue or sacct yet" if fresh else "in neither squeue nor sacct")
    state = COMPLETED if done else st.state
    if state == COMPLETED and not done:
        state = "FAILED"
    return TaskState(stage, task, state, sid, st.node if st.node not in ("None assigned",) else "",
                     st.elapsed, st.exit_code, explain(state, st, log, done, root), log, signal=st.signal,
                     time_limit=st.time_limit, gpu_seconds=st.gpu_seconds)


_FINAL_REASONS = {"OUT_OF_MEMORY": "out of memory{on}: raise mem_gb or lower the batch size",
                  "TIMEOUT": "time limit{limit} reached: raise time_min (requeue-safe stages resume)",
                  "NODE_FAIL": "node failure{on}: resume resubmits the task",
                  "PREEMPTED": "preempted", "BOOT_FAIL": "node failed to boot{on}", "DEADLINE": "deadline reached"}


def _limit(time_limit: str) -> str:
    """sacct's `[D-]HH:MM:SS` as ` of N min` (or hours / days when whole)."""
    days, _, hms = time_limit.rpartition("-")
    parts = hms.split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts) or (days and not days.isdigit()):
        return ""
    minutes = int(days or 0) * 1440 + int(parts[0]) * 60 + int(parts[1]) + (int(parts[2]) + 59) // 60
    if minutes % 1440 == 0:
        return f" of {minutes // 1440} d"
    return f" of {minutes // 60} h" if minutes % 60 == 0 and minutes >= 120 else f" of {minutes} min"


def killed_by(st: TaskState) -> str:
    """`killed by signal 9 (SIGKILL) on n1`: what ended a task's program, when a signal did."""
    if not st.signal:
        return ""
    try:
        name = f" ({signal.Signals(st.signal).name})"
    except ValueError:
        name = ""
    return f"killed by signal {st.signal}{name}" + (f" on {st.node}" if st.node else "")


def explain(state: str, st: TaskState, log: str, done: bool, root: Path | None = None) -> str:
    """Why a task is where it is. sacct's Reason of a finished task is its last PENDING reason (stale), so
    finished tasks are explained by their state, and failures by the last error line of their log."""
    if state in ("PENDING", "REQUEUED", "REQUEUE_HOLD"):
        return "" if st.reason in ("None", "") else st.reason
    if state == "FAILED":
        if st.state == COMPLETED and not done:
            return "exited 0 but wrote no completion marker"
        return killed_by(st) or error_line(log, root) or f"exit code {st.exit_code}"
    if state == "CANCELLED":
        if st.cancelled_by:
            return f"cancelled by uid {st.cancelled_by}"
        # no "by <uid>": Slurm cancelled it itself, which for harness jobs (--kill-on-invalid-dep=yes) means a
        # dependency failed or was cancelled; sacct's Reason reads "Dependency" or "None" by scheduler timing
        return "DependencyNeverSatisfied: a task it depends on failed or was cancelled"
    on = f" on {st.node}" if st.node and st.node != "None assigned" else ""
    return _FINAL_REASONS.get(state, "").format(on=on, limit=_limit(st.time_limit))


def error_line(log: str, root: Path | None = None, tail_bytes: int = 8192) -> str:
    """The reason in a task's stderr (submitit prints the traceback there): `failures.reason`, which maps a full
    disk under `root` (the run directory) to one line."""
    err = Path(log[: -len(".out")] + ".err") if log.endswith(".out") else None
    if err is None or not err.is_file():
        return ""
    with open(err, "rb") as f:
        start = max(0, err.stat().st_size - tail_bytes)
        f.seek(start)
        text = f.read().decode(errors="replace")
    if start:  # the window began mid-line: that fragment ("ARNING submitit: ...") is no line of the log
        text = text.partition("\n")[2]
    return failures.reason(text, root)


def stage_rows(paths: RunPaths, jobs: Jobs, stage: str, tasks: int,
               states: Mapping[str, TaskState]) -> tuple[TaskState, ...]:
    done = done_tasks(paths, stage)  # after the Slurm queries: a task finishing meanwhile reads COMPLETED
    every = all_ids(jobs, stage)
    known = {k.split("_")[0] for k in states if "_" in k}
    run_id = paths.stage_run_id(stage)
    rows = []
    for t in range(tasks):
        if t not in every:
            rows.append(TaskState(stage, t, COMPLETED if t in done else NOT_SUBMITTED))
            continue
        sid, submitted = every[t][-1]
        row = _row(stage, t, t in done, sid, str(paths.task_log(stage, sid)), submitted, states.get(sid), known,
                   paths.root, run_id)
        rows.append(dataclasses.replace(row, gpu_seconds=gpu_seconds(every[t], states, run_id)))
    return tuple(rows)
