"""`harness status`, `harness runs` and `harness submit --wait`: one aggregated view per stage (counts by
state), and one row per task only where a task needs attention, so a 1,000-task array stays readable."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from rich.console import Console, Group
from rich.markup import escape
from rich.table import Column, Table

from harness.core import retries
from harness.core.errors import HarnessError
from harness.core.paths import RunPaths
from harness.core.plan import Plan
from harness.core.rundir import open_run
from harness.launch import slurmcli, slurmstate
from harness.launch.backend import load_plan
from harness.ops import gpuhours
from harness.ops.state import (
    ACTIVE,
    COMPLETED,
    RunState,
    Snapshot,
    collect,
    collect_or_stored,
    job_ids,
    load_jobs,
)
from harness.report.tables import fmt

WAIT_RETRIES = 5
"""Consecutive failed Slurm queries `wait` tolerates."""
TASK_ROWS = 20
"""Task rows shown without --all; the stage table still counts every task."""
_STYLE = {COMPLETED: "green", "RUNNING": "cyan", "PENDING": "yellow", "FAILED": "red", "OUT_OF_MEMORY": "red",
          "TIMEOUT": "red", "NODE_FAIL": "red", "CANCELLED": "magenta"}


def verdict(rs: RunState) -> str:
    """One word for a run: running, completed, cancelled (what did not complete was cancelled: a user's cancel and
    the tasks waiting on it), failed (some task ended badly) or incomplete."""
    states = {r.state for r in rs.rows}
    if states & ACTIVE or rs.driver_alive:
        return "running"
    if states == {COMPLETED}:
        return "completed"
    ended = states - {COMPLETED, "NOT_SUBMITTED"}
    return "cancelled" if ended == {"CANCELLED"} else "failed" if ended else "incomplete"


def _counts(counts: dict[str, int]) -> str:
    order = sorted(counts.items(), key=lambda kv: (kv[0] != COMPLETED, -kv[1], kv[0]))
    return ", ".join(f"[{_STYLE.get(s, 'white')}]{n} {s}[/]" for s, n in order)


def stage_table(rs: RunState, plan: Plan | None = None) -> Table:
    """With the plan, each stage's GPU-hours used beside the plan's estimate, and the run's in the caption."""
    jobs = load_jobs(rs.paths)
    used = {u.stage: u for u in gpuhours.usage(rs, plan)} if plan is not None else {}
    total, planned = gpuhours.total_hours(tuple(used.values()))
    t = Table("stage", "done", "states", "job ids", *(("GPU-h used", "GPU-h planned") if used else ()),
              caption=f"GPU-hours used {fmt(total, 'gpu_hours')} (planned {fmt(planned, 'gpu_hours')})"
              if used else None, caption_justify="left")
    for s in rs.stages:
        ids = ", ".join(job_ids(jobs, s.name))  # a local run has none
        hours = (fmt(used[s.name].used, "gpu_hours"), fmt(used[s.name].planned, "gpu_hours")) if s.name in used \
            else ()
        t.add_row(s.name, f"{s.done}/{len(s.rows)}", _counts(s.counts), ids or "-", *hours)
    return t


def task_table(rs: RunState, show_all: bool = False) -> Table | None:
    rows = [r for r in rs.rows if show_all or r.state != COMPLETED]
    if not rows:
        return None
    if not show_all:  # failures first, then running, then waiting tasks
        rows.sort(key=lambda r: (r.state in ACTIVE, r.state != "RUNNING"))
    shown = rows if show_all else rows[:TASK_ROWS]
    t = Table("stage", "task", "job", "state", "node", "elapsed", "exit", Column("reason", overflow="fold"),
              Column("log", overflow="fold"),
              caption=None if len(shown) == len(rows) else f"{len(rows) - len(shown)} more task(s) not shown "
                                                           f"(--all lists every task)")
    for r in shown:
        bad = r.state not in (COMPLETED, "PENDING", "RUNNING")
        log = _short(r.log, rs.paths.root) if r.log and (bad or show_all) else ""
        t.add_row(r.stage, str(r.task), r.job_id or "-", f"[{_STYLE.get(r.state, 'white')}]{r.state}[/]",
                  r.node or "-", r.elapsed or "-", r.exit_code or "-", escape(r.reason or "-"), escape(log or "-"))
    return t


def _short(log: str, root: Path) -> str:
    """Log paths relative to the run directory (printed above the tables): shorter, still exact."""
    try:
        return str(Path(log).relative_to(root))
    except ValueError:
        return log


def view(rs: RunState, show_all: bool = False, plan: Plan | None = None) -> Group:
    parts: list = [f"run {rs.paths.run_id} ({rs.executor}): {escape(str(rs.paths.root))}", stage_table(rs, plan),
                   f"{verdict(rs)}: {rs.summary()}"]
    failed = load_jobs(rs.paths).failed
    if failed:
        parts.append(escape(f"the last submission queued nothing: {failed}. After a passing fault `harness resume "
                            f"{rs.paths.run_id}` submits again; a value sbatch rejects needs a new submit of the "
                            "fixed spec (`harness doctor` tests each script first)"))
    lines = retries.run_lines(rs.paths, [s.name for s in rs.stages])
    parts += [escape(f"infrastructure retry: {line}") for line in lines]
    tasks = task_table(rs, show_all)
    if tasks is not None:
        parts.append(tasks)
    return Group(*parts)


def status(paths: RunPaths, console: Console, show_all: bool = False, watch: bool = False,
           interval_s: float = 2.0, plan: Plan | None = None) -> int:
    """One view, or with watch a live one until every task is final."""
    plan = plan or load_plan(paths)
    rs, stale = collect_or_stored(paths, plan)
    if stale:
        console.print(view(rs, show_all, plan))
        console.print(escape(stale), soft_wrap=True)
        return 1
    if not watch:
        console.print(view(rs, show_all, plan))
        return 0
    from rich.live import Live

    with Live(view(rs, show_all, plan), console=console, refresh_per_second=2) as live:
        while not rs.final or rs.driver_alive:
            time.sleep(interval_s)
            rs = collect(paths, plan)
            live.update(view(rs, show_all, plan))
    return 0


def wait(paths: RunPaths, timeout_s: float, console: Console, interval_s: float = 2.0,
         plan: Plan | None = None) -> int:
    """Poll until every task is final; 0 iff all completed. Prints one summary line."""
    plan = plan or load_plan(paths)
    deadline = time.monotonic() + timeout_s
    errors = 0
    while True:
        try:
            rs = collect(paths, plan)
            errors = 0
        except HarnessError:
            errors += 1  # a busy controller or slurmdbd: retry a few polls before giving up
            if errors >= WAIT_RETRIES:
                raise
            time.sleep(interval_s)
            continue
        if rs.final and not rs.driver_alive:
            break
        if time.monotonic() > deadline:
            console.print(f"run {paths.run_id}: still running after {timeout_s:.0f} s: {rs.summary()}",
                          soft_wrap=True)
            return 1
        time.sleep(interval_s)
    word = verdict(rs)
    hint = "" if word == "completed" else f"; harness status {escape(str(paths.root))}"
    console.print(f"run {paths.run_id}: {word}: {rs.summary()}{hint}", soft_wrap=True)
    return 0 if rs.complete else 1


def find_runs(workdir: Path) -> list[RunPaths]:
    if not workdir.is_dir():
        return []
    found = [_open(p.absolute()) for p in workdir.iterdir() if RunPaths(p).is_run]
    return sorted(found, key=lambda p: p.jobs_json.stat().st_mtime)


def _open(root: Path) -> RunPaths:
    """The run's paths; a damaged shared.json leaves the plain layout, for the row that says it is unreadable."""
    try:
        return open_run(root)
    except HarnessError:
        return RunPaths(root)


def runs(workdir: Path, console: Console) -> int:
    """Every run under workdir with its state; Slurm runs share one squeue and one sacct."""
    found = find_runs(workdir)
    if not found:
        console.print(f"no runs under {workdir}", markup=False)
        return 0
    jobs, damaged = {}, {}
    for p in found:
        try:
            jobs[p] = load_jobs(p)
        except HarnessError as e:  # one unreadable run must not hide the others
            damaged[p] = str(e.problems[0])
    try:
        snap: Snapshot | None = Snapshot(slurmstate.query([i for j in jobs.values() for i in job_ids(j)]))
        why = ""
    except slurmcli.SlurmUnreachable as e:  # Slurm runs then show what their directories know; local runs, all
        snap, why = None, slurmcli.gist(str(e))
    t = Table(Column("run", overflow="fold"), "executor", "submitted", "state", Column("tasks", overflow="fold"),
              title=escape(str(workdir)), title_justify="left")
    for p in found:
        if p in damaged:
            t.add_row(p.run_id, "-", "-", "unreadable", escape(damaged[p]))
            continue
        try:
            plan = load_plan(p)
            rs = collect_or_stored(p, plan)[0] if snap is None and jobs[p].executor == "slurm" else \
                collect(p, plan, snap)
            counts: dict[str, int] = {}
            for r in rs.rows:
                counts[r.state] = counts.get(r.state, 0) + 1
            done = counts.pop(COMPLETED, 0)
            state = verdict(rs)
            tasks = ", ".join([f"{done}/{len(rs.rows)} completed"] + [f"{n} {k.lower()}" for k, n in counts.items()])
        except Exception as e:  # noqa: BLE001 - one unreadable run must not hide the others
            state, tasks = "unreadable", f"{e.__class__.__name__}: {e}"[:120]
        subs = jobs[p].submissions
        when = datetime.fromtimestamp(subs[0].time).strftime("%Y-%m-%d %H:%M") if subs else "-"
        t.add_row(p.run_id, jobs[p].executor, when, state, tasks)
    console.print(t)
    if why:
        console.print(f"the Slurm controller does not answer ({why}): Slurm runs show the states stored at their "
                      "last status, or their completion markers", markup=False, soft_wrap=True)
    return 0
