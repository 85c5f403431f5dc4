"""`harness resume`, `cancel` and `logs`: act on a run from its directory alone.

Resume resubmits, in plan order, exactly the tasks without a completion marker, and those whose result file
(infer's manifest, evaluate's result, merge's summary) has gone since they completed. Where an `aftercorr` pair
(infer -> evaluate) is resubmitted, both get the same index subset so array index j of the child still
waits on index j of the parent; a parent task that is already complete simply returns at once ("already
complete") when it is part of that subset.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from harness.core.errors import HarnessError, Problem
from harness.core.paths import CACHED_STAGES, SHARED_STAGES, CacheEntry, RunPaths
from harness.core.plan import Plan, infer_task
from harness.core.rundir import json_object, read_facts, read_plan_record
from harness.launch.backend import load_plan, ranges
from harness.ops import cache
from harness.ops import submit as launching
from harness.ops.state import ACTIVE, COMPLETED, RunState, backend_for, collect, done_tasks, load_jobs


def _result_file(plan: Plan, paths: RunPaths, stage: str, task: int) -> Path | None:
    """The file a task's stage writes last before its marker, where later stages and the report read one
    (None: a stage whose outputs are not one file)."""
    if stage in ("infer", "evaluate"):
        t = infer_task(plan.spec, task)
        return paths.infer_manifest(t.step, t.key) if stage == "infer" else paths.eval_json(t.step, t.key)
    return paths.dataset_summary if stage == "merge" else None


def lost(plan: Plan, paths: RunPaths) -> dict[str, list[int]]:
    """stage -> tasks marked complete whose result file has gone since (deleted, or a disk cleaned) or is no
    longer a JSON object (cut short, edited): done by their marker, yet what they wrote is not there for the
    stages and the report that read it."""
    out: dict[str, list[int]] = {}
    for s in plan.stages:
        for t in sorted(done_tasks(paths, s.name)):
            f = _result_file(plan, paths, s.name, t)
            if f is not None and not _whole(f):
                out.setdefault(s.name, []).append(t)
    return out


def _whole(f: Path) -> bool:
    try:
        json_object(f)
    except (OSError, ValueError):
        return False
    return True


def incomplete(plan: Plan, paths: RunPaths, gone: dict[str, list[int]] | None = None) -> dict[str, list[int]]:
    """stage -> task indices to resubmit: those without a completion marker or whose result file is `lost`,
    every task of an afterany child (the report summarizes its parent, so it is rebuilt), aftercorr pairs
    aligned; {} when complete. `gone`: `lost`, where the caller has it already."""
    todo: dict[str, list[int]] = {}
    gone = lost(plan, paths) if gone is None else gone
    for s in plan.stages:
        done = done_tasks(paths, s.name)
        missing = [t for t in range(s.tasks) if t not in done or t in gone.get(s.name, ())]
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


def _refuse_if_active(rs: RunState, ignore: tuple[str, ...] = ()) -> None:
    active = [r for r in rs.rows if r.state in ACTIVE and r.stage not in ignore]
    if active or rs.driver_alive:
        first = ", ".join(f"{r.stage}[{r.task}] {r.state}" for r in active[:3])
        raise HarnessError(Problem(str(rs.paths.root), "", f"{len(active)} task(s) still pending or running "
                                   f"({first}{', ...' if len(active) > 3 else ''}); resume refused: wait for "
                                   f"them or `harness cancel` the run first"))


def resume(paths: RunPaths, console: Console, plan: Plan | None = None,
           shared_parents: dict[str, list[str]] | None = None) -> dict[str, list[int]]:
    """Resubmit the incomplete tasks; returns what was resubmitted ({} when the run is complete).
    `plan` defaults to the run's saved plan. A campaign member whose data another run prepares never resubmits
    the shared stages: `shared_parents` are the job ids that run's resume just gave them (its campaign's resume;
    {} where it resubmitted none, or its local driver, which this run's driver waits for, runs them)."""
    plan = plan or load_plan(paths)
    ignore = SHARED_STAGES if paths.shared is not None else CACHED_STAGES if _cached_elsewhere(paths) else ()
    with launching.run_lock(paths):
        _refuse_if_active(collect(paths, plan), ignore)
        gone = lost(plan, paths)
        todo = incomplete(plan, paths, gone)
        _check_shared(paths, todo, ignore, shared_parents)
        todo = {k: v for k, v in todo.items() if k not in ignore}
        _check_reused_image(plan, todo)
        if not todo:
            console.print(f"run {paths.run_id}: every task is complete; nothing to resubmit")
            return {}
        _note_edited_spec(paths, console)
        for s in plan.stages:
            if any(d.kind == "afterany" and d.stage in todo for d in s.depends):
                _forget(paths, s.name, todo[s.name])
        for stage, tasks in gone.items():
            if stage in todo:
                _forget(paths, stage, tasks)  # their results are gone: run them again
        jobs = load_jobs(paths)
        choice = launching.Choice(jobs.executor, jobs.reason)  # type: ignore[arg-type]  # submit wrote slurm or local
        known = read_facts(paths)
        new = launching.submit_stages(plan, paths, todo, known, choice, dict(shared_parents or {}), jobs.submissions)
        cache.record_rebuild(paths, new)
        for sub in new:
            console.print(f"  {sub.stage:<13} job {sub.job_id} (round {sub.round})")
    for stage, tasks in todo.items():
        console.print(f"resubmitted {stage}: {len(tasks)} task(s) {_fmt_tasks(tasks)}")
    return todo


def _note_edited_spec(paths: RunPaths, console: Console) -> None:
    """Resume runs the spec the run was submitted with (spec.json); an edit of the run's spec.toml copy since
    is not read, which a user who made it must hear."""
    want = read_plan_record(paths).get("spec_toml_sha256")
    try:
        now = launching.text_digest(paths.spec_toml.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        now = ""
    if want and now != want:
        console.print(f"note: {paths.spec_toml} has changed since submit and is not read: resume runs the spec "
                      "the run was submitted with (spec.json); an edited spec is a new run (harness submit)",
                      markup=False, soft_wrap=True)


def _check_reused_image(plan: Plan, todo: dict[str, list[int]]) -> None:
    """A run planned to reuse a complete cached image plans no import; if that file has gone since (freed, or a
    cache directory cleaned), its container stages would fail on every node, so resume says so first."""
    from harness.core import image

    cached = plan.image
    if cached is None or not cached.reused or image.complete(cached):
        return
    if any(s.container and s.name in todo for s in plan.stages):
        raise HarnessError(f"{cached.sqsh}: the imported container image this run reuses is gone or incomplete; "
                           f"restore it or submit the spec again (its plan imports {cached.uri} once more)")


def _check_shared(paths: RunPaths, todo: dict[str, list[int]], ignore: tuple[str, ...],
                  shared_parents: dict[str, list[str]] | None) -> None:
    """A member reading another run's data resumes only once that data is complete or resubmitted."""
    missing = [s for s in ignore if s in todo]
    if missing and paths.shared is None:  # a token-cache entry another run builds (or built)
        raise HarnessError(Problem(str(paths.root), "", f"its tokens ({', '.join(missing)}) are in the token-cache "
                                   f"entry {paths.data_root}, which is incomplete and not this run's build: submit "
                                   f"the spec again (a dead build is redone, a live one waited on)"))
    if missing and shared_parents is None:
        raise HarnessError(Problem(str(paths.root), "", f"its data ({', '.join(missing)}) comes from run "
                                   f"{paths.data_root.name}, which is incomplete: resume that run's campaign "
                                   f"(harness resume CAMPAIGN), which resumes the data first"))


def _cached_elsewhere(paths: RunPaths) -> bool:
    """A run reading a token-cache entry that another run claimed (a reused entry, or one it waits on)."""
    if paths.cache is None:
        return False
    return str((cache.read_claim(CacheEntry(paths.cache)) or {}).get("run", "")) != paths.run_id


def _fmt_tasks(tasks: list[int]) -> str:
    runs = ranges(tasks)
    return "[" + ",".join(f"{a}" if b == a + 1 else f"{a}-{b - 1}" for a, b in runs[:20]) + \
        (",..." if len(runs) > 20 else "") + "]"


def cancel(paths: RunPaths, console: Console, stage: str | None = None, plan: Plan | None = None) -> int:
    plan = plan or load_plan(paths)
    if stage is not None and stage not in [s.name for s in plan.stages]:
        raise HarnessError(Problem("cancel", "stage",
            f"unknown {stage!r} (stages: {', '.join(s.name for s in plan.stages)})"))
    jobs = load_jobs(paths)
    console.print(backend_for(jobs.executor).cancel(paths, plan, jobs, stage))
    return 0


def log_path(paths: RunPaths, stage: str, task: int, plan: Plan | None = None, stderr: bool = False) -> Path:
    """The task's stdout (or stderr) file of its latest attempt; no Slurm query needed."""
    plan = plan or load_plan(paths)
    names = [s.name for s in plan.stages]
    if stage not in names:
        raise HarnessError(Problem("logs", "stage", f"unknown {stage!r} (stages: {', '.join(names)})"))
    size = plan.stage(stage).tasks
    if not 0 <= task < size:
        raise HarnessError(Problem("logs", "task", f"{stage} has tasks 0..{size - 1}, not {task}"))
    jobs = load_jobs(paths)
    out = backend_for(jobs.executor).log(paths, plan, jobs, stage, task)
    if not out:
        raise HarnessError(Problem(str(paths.root), "", f"{stage}[{task}] has not been started (no log yet)"))
    p = Path(out)
    return p.with_name(p.name[: -len(".out")] + ".err") if stderr else p


def show_logs(paths: RunPaths, stage: str, task: int, console: Console, follow: bool = False,
              stderr: bool = False, interval_s: float = 1.0) -> int:
    plan = load_plan(paths)
    p = log_path(paths, stage, task, plan, stderr)
    if not follow:
        if not p.exists():
            row = next((r for r in collect(paths, plan).rows if r.stage == stage and r.task == task), None)
            why = "the task may still be pending" if row is None or row.state in ACTIVE else \
                f"the task is {row.state}{f' ({row.reason})' if row.reason else ''} and wrote no log"
            raise HarnessError(Problem(str(p), "", f"does not exist (yet); {why}"))
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
