"""`harness resume`, `cancel` and `logs`: act on a run from its directory alone.

Resume resubmits, in plan order, exactly the tasks without a completion marker. Where an `aftercorr` pair
(infer -> evaluate) is resubmitted, both get the same index subset so array index j of the child still
waits on index j of the parent; a parent task that is already complete simply returns at once ("already
complete") when it is part of that subset.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from harness import launch
from harness.core.errors import HarnessError, Problem
from harness.launch import slurmcli
from harness.ops.state import ACTIVE, COMPLETED, RunState, collect, done_tasks, job_ids, load_jobs
from harness.core.plan import Facts, Plan
from harness.core.paths import RunPaths
from harness.core.atomic import atomic_write_json, read_json


def incomplete(plan: Plan, paths: RunPaths) -> dict[str, list[int]]:
    """stage -> task indices to resubmit: those without a completion marker, every task of an afterany
    child (the report summarizes its parent, so it is rebuilt), aftercorr pairs aligned; {} when complete."""
    todo: dict[str, list[int]] = {}
    for s in plan.stages:
        done = done_tasks(paths, s.name)
        missing = [t for t in range(s.tasks) if t not in done]
        if missing:
            todo[s.name] = missing
    for s in plan.stages:
        for dep in s.depends:
            if dep.kind == "afterany" and dep.stage in todo:
                todo[s.name] = list(range(s.tasks))  # a summary of its parent (report): rebuilt after it
            if dep.kind == "aftercorr" and s.name in todo and dep.stage in todo:
                both = sorted(set(todo[s.name]) | set(todo[dep.stage]))
                todo[s.name] = todo[dep.stage] = both
    return todo


def _forget(paths: RunPaths, stage: str, tasks: list[int]) -> None:
    """Drop completion markers of tasks being rerun on purpose (afterany summaries), so they run again."""
    for t in tasks:
        paths.marker(stage, t).unlink(missing_ok=True)


def _refuse_if_active(rs: RunState) -> None:
    active = [r for r in rs.rows if r.state in ACTIVE]
    if active or rs.driver_alive:
        first = ", ".join(f"{r.stage}[{r.task}] {r.state}" for r in active[:3])
        raise HarnessError(Problem(str(rs.paths.root), "", f"{len(active)} task(s) still pending or running "
                                   f"({first}{', ...' if len(active) > 3 else ''}); resume refused: wait for "
                                   f"them or `harness cancel` the run first"))


def resume(paths: RunPaths, console: Console, plan: Plan | None = None) -> dict[str, list[int]]:
    """Resubmit the incomplete tasks; returns what was resubmitted ({} when the run is complete).
    `plan` defaults to the run's saved plan."""
    plan = plan or launch.load_plan(paths)
    with launch.run_lock(paths):
        _refuse_if_active(collect(paths, plan))
        todo = incomplete(plan, paths)
        if not todo:
            console.print(f"run {paths.run_id}: every task is complete; nothing to resubmit")
            return {}
        for s in plan.stages:
            if any(d.kind == "afterany" and d.stage in todo for d in s.depends):
                _forget(paths, s.name, todo[s.name])
        jobs = load_jobs(paths)
        choice = launch.Choice(jobs["executor"], jobs.get("reason", ""))
        prior = jobs["submissions"]
        if choice.executor == "local":
            _resume_local(paths, todo, choice, prior)
        else:
            facts = Facts(**read_json(paths.plan_json)["facts"])
            new = launch.submit_stages(plan, paths, todo, facts, choice, {}, prior)
            for s in new:
                console.print(f"  {s['stage']:<13} job {s['job_id']} (round {s['round']})")
    for stage, tasks in todo.items():
        console.print(f"resubmitted {stage}: {len(tasks)} task(s) {_fmt_tasks(tasks)}")
    return todo


def _resume_local(paths: RunPaths, todo: dict[str, list[int]], choice: launch.Choice, prior: list[dict]) -> None:
    from harness.launch import local

    atomic_write_json(paths.root / "local_only.json", todo)
    (paths.root / "local_done.json").unlink(missing_ok=True)
    pid = local.start_driver(paths)
    rnd = 1 + max((s.get("round", 0) for s in prior), default=-1)
    launch.record_jobs(paths, choice, prior + [{"stage": "*", "job_id": f"local:{pid}", "tasks": [],
                                                "array": False, "time": time.time(), "round": rnd}])


def _fmt_tasks(tasks: list[int]) -> str:
    from harness.launch.slurm import ranges

    runs = ranges(tasks)
    return "[" + ",".join(f"{a}" if b == a + 1 else f"{a}-{b - 1}" for a, b in runs[:20]) + \
        (",..." if len(runs) > 20 else "") + "]"


def cancel(paths: RunPaths, console: Console, stage: str | None = None, plan: Plan | None = None) -> int:
    plan = plan or launch.load_plan(paths)
    if stage is not None and stage not in [s.name for s in plan.stages]:
        raise HarnessError(Problem("cancel", "stage", f"unknown {stage!r} (stages: {', '.join(s.name for s in plan.stages)})"))
    jobs = load_jobs(paths)
    if jobs["executor"] == "local":
        if stage is not None:
            raise HarnessError(Problem("cancel", "stage", "a local run is cancelled as a whole (one driver runs "
                                                          "every stage)"))
        return _cancel_local(paths, plan, jobs, console)
    ids = job_ids(jobs, stage)
    slurmcli.scancel(ids)
    console.print(f"run {paths.run_id}: scancel {' '.join(ids) or '(no jobs)'}")
    return 0


def _cancel_local(paths: RunPaths, plan: Plan, jobs: dict[str, Any], console: Console) -> int:
    from harness.launch import local
    from harness.ops.state import local_driver

    pid, alive = local_driver(paths, jobs)
    if alive:
        os.killpg(pid, signal.SIGTERM)  # the driver runs in its own session with its tasks
        for _ in range(50):
            if not _alive(pid):
                break
            time.sleep(0.1)
    sp = local.state_path(paths)
    state = read_json(sp) if sp.exists() else {"stages": {}}
    done = {s.name: done_tasks(paths, s.name) for s in plan.stages}
    for s in plan.stages:
        entries = state["stages"].setdefault(s.name, {})
        for t in range(s.tasks):
            e = entries.get(str(t))
            if t not in done[s.name] and (e is None or e.get("state") in ("RUNNING", "PENDING")):
                entries[str(t)] = {**(e or {}), "state": "CANCELLED", "reason": "harness cancel",
                                   "end": time.time()}
    atomic_write_json(sp, state)
    atomic_write_json(paths.root / "local_done.json", {"time": time.time(), "cancelled": True})
    console.print(f"run {paths.run_id}: local driver {pid} {'stopped' if alive else 'was not running'}")
    return 0


def _alive(pid: int) -> bool:
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


def log_path(paths: RunPaths, stage: str, task: int, plan: Plan | None = None, stderr: bool = False) -> Path:
    """The task's stdout (or stderr) file of its latest attempt; no Slurm query needed."""
    plan = plan or launch.load_plan(paths)
    names = [s.name for s in plan.stages]
    if stage not in names:
        raise HarnessError(Problem("logs", "stage", f"unknown {stage!r} (stages: {', '.join(names)})"))
    size = plan.stage(stage).tasks
    if not 0 <= task < size:
        raise HarnessError(Problem("logs", "task", f"{stage} has tasks 0..{size - 1}, not {task}"))
    jobs = load_jobs(paths)
    if jobs["executor"] == "local":
        from harness.ops.state import local_stage

        sp = paths.root / "local_state.json"
        entries = read_json(sp)["stages"].get(stage, {}) if sp.exists() else {}
        out = local_stage(paths, entries, stage, size, False).rows[task].log
    else:
        from harness.ops.state import latest_ids

        out = latest_ids(paths, jobs, stage).get(task, ("", "", 0.0))[1]
    if not out:
        raise HarnessError(Problem(str(paths.root), "", f"{stage}[{task}] has not been started (no log yet)"))
    p = Path(out)
    return p.with_name(p.name[: -len(".out")] + ".err") if stderr else p


def show_logs(paths: RunPaths, stage: str, task: int, console: Console, follow: bool = False,
              stderr: bool = False, interval_s: float = 1.0) -> int:
    plan = launch.load_plan(paths)
    p = log_path(paths, stage, task, plan, stderr)
    if not follow:
        if not p.exists():
            raise HarnessError(Problem(str(p), "", "does not exist (yet); the task may still be pending"))
        console.print(p.read_text(errors="replace"), end="", markup=False, highlight=False, soft_wrap=True)
        return 0
    return _follow(paths, plan, stage, task, p, console, interval_s)


def _follow(paths: RunPaths, plan: Plan, stage: str, task: int, p: Path, console: Console,
            interval_s: float) -> int:
    """Print the file as it grows until the task reaches a final state (one status query per poll)."""
    pos, final = 0, False
    while True:
        if p.exists():
            with open(p, errors="replace") as f:
                f.seek(pos)
                chunk = f.read()
                pos = f.tell()
            if chunk:
                console.print(chunk, end="", markup=False, highlight=False, soft_wrap=True)
        if final:
            return 0
        row = next(r for r in collect(paths, plan).rows if r.stage == stage and r.task == task)
        final = row.state not in ACTIVE or row.state == COMPLETED
        if not final:
            time.sleep(interval_s)
