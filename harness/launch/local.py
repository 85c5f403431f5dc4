"""The same DAG without a cluster: a detached driver runs the stages in topological order through
submitit's LocalExecutor and honours the dependency kinds itself (afterok / aftercorr / afterany).

`harness submit` returns at once; the driver records every task's state in `local_state.json`, which
`LocalBackend.query` reads the way the Slurm backend reads sacct.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import submitit

from harness.core import failures
from harness.core.atomic import atomic_write_json, read_json
from harness.core.errors import HarnessError, Problem
from harness.core.paths import RunPaths, is_done
from harness.core.plan import Plan, StagePlan
from harness.core.rundir import open_run, parsed, read_jobs
from harness.core.secretenv import SECRETS, stage_secrets
from harness.core.stages import stage as stage_def
from harness.launch import procs
from harness.launch.backend import (
    COMPLETED,
    LOST,
    MISSING,
    NOT_SUBMITTED,
    Jobs,
    Query,
    Record,
    Submission,
    TaskState,
    done_tasks,
    load_plan,
    pid_alive,
)
from harness.launch.task import StageTask

OK, FAILED, CANCELLED = "COMPLETED", "FAILED", "CANCELLED"


def start_driver(paths: RunPaths) -> int:
    """Spawn the driver in its own session so it outlives `harness submit` and the terminal."""
    paths.driver_log.parent.mkdir(parents=True, exist_ok=True)
    keep = stage_secrets(downloads=True)  # the one secret a stage may need; the driver hands it to that stage only
    env = {k: v for k, v in os.environ.items() if k not in SECRETS or k in keep}
    with open(paths.driver_log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "harness.launch.local", str(paths.root.resolve())],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=os.getcwd(), env=env)
    return proc.pid


class _Driver:
    def __init__(self, plan: Plan, paths: RunPaths) -> None:
        self.plan, self.paths = plan, paths
        self.state: dict[str, dict[str, Any]] = read_state(paths)["stages"]

    def save(self) -> None:
        atomic_write_json(self.paths.local_state_json, {"driver_pid": os.getpid(), "stages": self.state,
                                                   "time": time.time()})

    def task_ok(self, stage: str, task: int) -> bool:
        return is_done(self.paths, stage, task)

    def runnable(self, stage: StagePlan, task: int) -> tuple[bool, str]:
        for dep in stage.depends:
            parent = self.plan.stage(dep.stage)
            if dep.kind == "afterany":
                continue
            parents = [task] if dep.kind == "aftercorr" and parent.tasks == stage.tasks else range(parent.tasks)
            if not all(self.task_ok(dep.stage, t) for t in parents):
                return False, "DependencyNeverSatisfied"
        return True, ""

    def wait_shared(self, stage: StagePlan, poll_s: float = 1.0) -> None:
        """A stage whose parent another run runs (a campaign member's shared data, a token-cache entry another
        submit builds) waits for that run's driver: until the parent's tasks are complete or that driver has ended."""
        for dep in stage.depends:
            root = self.paths.runner(dep.stage)
            if root == self.paths.root:
                continue
            owner, tasks = open_run(root), range(self.plan.stage(dep.stage).tasks)
            while not all(self.task_ok(dep.stage, t) for t in tasks) and driver(owner, read_jobs(owner))[1]:
                time.sleep(poll_s)

    def run_stage(self, stage: StagePlan, tasks: list[int]) -> None:
        self.wait_shared(stage)
        st = self.state.setdefault(stage.name, {})
        todo = []
        for t in tasks:
            ok, reason = self.runnable(stage, t)
            if ok:
                todo.append(t)
            else:
                st[str(t)] = attempt(st.get(str(t)), state=CANCELLED, reason=reason, job_id="")
        self.save()
        wave = stage.resources.array_throttle or max(1, os.cpu_count() or 1)
        for i in range(0, len(todo), wave):
            self._run_wave(stage, todo[i:i + wave], st)

    def _run_wave(self, stage: StagePlan, tasks: list[int], st: dict[str, Any]) -> None:
        r = stage.resources
        ex = submitit.LocalExecutor(folder=self.paths.logs(stage.name) / "%j")
        ex.update_parameters(timeout_min=r.time_min, tasks_per_node=r.ntasks_per_node * r.nodes,
                             nodes=1, gpus_per_node=r.gpus_per_node)
        with _secrets_for(stage_def(stage.name).downloads), ex.batch():  # processes start as batch() ends
            jobs = [ex.submit(StageTask(str(self.paths.root), stage.name, t)) for t in tasks]
        for t, job in zip(tasks, jobs):
            st[str(t)] = attempt(st.get(str(t)), state="RUNNING", job_id=str(job.job_id), start=time.time(), reason="")
        self.save()
        for t, job in zip(tasks, jobs):
            entry = st[str(t)]
            try:
                _until_done(job)
                job.results()
                entry["state"] = OK if self.task_ok(stage.name, t) else FAILED
            except Exception as e:  # noqa: BLE001 - a task failure is data, recorded for status
                entry.update(state=FAILED, reason=_failure(e, self.paths.root, stage.name, t))
            entry["end"] = time.time()
            entry["stdout"] = _relative(self.paths, str(job.paths.stdout).replace("%t", "0"))
            self.save()


def _relative(paths: RunPaths, log: str) -> str:
    """Logs are kept relative to the run directory, so a moved or copied run still finds its own."""
    try:
        return str(Path(log).relative_to(paths.root))
    except ValueError:
        return log


KILLED = ("killed: the task process ended with neither a result nor an error (a signal such as SIGKILL, or the "
          "out-of-memory killer)")


def _failure(e: Exception, root: Path, stage: str, task: int) -> str:
    """A failed task's reason. A process that ended without writing its result (submitit: "has not produced any
    output") and whose log names no exception was killed: its last log line is what it was saying then, not why
    it ended."""
    text = str(e)
    if isinstance(e, submitit.core.utils.UncompletedJobError) and "has not produced any output" in text \
            and not failures.names_an_exception(text.split("Error stream produced:", 1)[-1]):
        return KILLED
    why = failures.reason(text, root)  # '' when the log was cut short (a full disk)
    return why or (f"{type(e).__name__} with no error line in its log; see harness logs {root} {stage} {task} "
                   "--stderr")


_HELD: dict[str, str] = {}
"""The driver's secrets, out of its environment (its task processes inherit that environment)."""


def hold_secrets() -> None:
    """Take the secrets out of the driver's environment, so that a task process gets only its stage's
    (`stage_secrets`), as sbatch --export gives a Slurm job."""
    _HELD.update({k: os.environ.pop(k) for k in SECRETS if k in os.environ})


@contextmanager
def _secrets_for(downloads: bool) -> Iterator[None]:
    """The held secrets this stage receives, in the environment while its tasks are started."""
    given = {k: _HELD[k] for k in stage_secrets(downloads) if k in _HELD}
    os.environ.update(given)
    try:
        yield
    finally:
        for k in given:
            os.environ.pop(k, None)


def _until_done(job: "submitit.Job[Any]", poll_s: float = 0.05) -> None:
    """submitit's `results()` looks at a running local job once a second: every stage ended up to a second
    before its next one started. Its own check (the task process' `poll()`) costs nothing to ask more often."""
    while not job.done():
        time.sleep(poll_s)


def attempt(prev: dict[str, Any] | None, **fields: Any) -> dict[str, Any]:
    """A task's new entry in local_state.json, carrying `earlier_s`: the wall seconds of every attempt recorded
    before it (a resumed task's earlier runs used the stage's GPUs too; one whose driver died unrecorded, with
    no end, counts 0)."""
    prev = prev or {}
    start, end = prev.get("start"), prev.get("end")
    last = end - start if isinstance(start, (int, float)) and isinstance(end, (int, float)) else 0.0
    return {**fields, "earlier_s": float(prev.get("earlier_s", 0.0)) + last}


def drive(paths: RunPaths, only: dict[str, list[int]] | None = None) -> None:
    """Run every stage (or, for resume, only the listed tasks of each stage) in plan order."""
    plan = load_plan(paths)
    d = _Driver(plan, paths)
    d.save()
    for stage in plan.stages:
        tasks = only.get(stage.name, []) if only is not None else list(range(stage.tasks))
        if tasks:
            d.run_stage(stage, tasks)
    atomic_write_json(paths.local_done_json, {"time": time.time()})


def _fmt_elapsed(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _latest(jobs: Jobs) -> tuple[int, float]:
    """(pid, when jobs.json recorded it) of the latest local driver; (0, 0.0) when none was started."""
    subs = [s for s in jobs.submissions if s.job_id.startswith("local:")]
    return (int(subs[-1].job_id.split(":")[1]), subs[-1].time) if subs else (0, 0.0)


def driver(paths: RunPaths, jobs: Jobs) -> tuple[int, bool]:
    """pid of the latest local driver and whether it, or a task it started, still runs this run (not merely a
    process that now has its number: `procs`)."""
    pid, recorded = _latest(jobs)
    if not pid:
        return 0, False
    return pid, not paths.local_done_json.exists() and procs.alive(pid, paths.root, recorded, pid_alive(pid))


def _row(paths: RunPaths, stage: str, t: int, e: dict[str, Any] | None, done: bool, alive: bool,
         gpus: int = 0) -> TaskState:
    if done:
        state = COMPLETED
    elif e is None:
        state = "PENDING" if alive else NOT_SUBMITTED
    else:
        state = e.get("state", "UNKNOWN")
        if state == COMPLETED:  # completed once, its marker since deleted: not done (resume reruns it)
            state, e = MISSING, {**e, "reason": "its completion marker is gone: `harness resume` runs it again"}
        elif state == "RUNNING" and not alive:
            state = LOST
        elif state == "PENDING" and not alive:  # resubmitted, and the driver ended before reaching it
            state, e = NOT_SUBMITTED, {**e, "reason": "the driver ended before reaching it"}
    if e is None:
        return TaskState(stage, t, state, reason="driver has not reached it" if alive else "")
    start, end = e.get("start"), e.get("end") or (time.time() if state == "RUNNING" else None)
    job = str(e.get("job_id", ""))
    log = str(paths.recorded_log(e["stdout"])) if e.get("stdout") else (str(paths.task_log(stage, job)) if job else "")
    reason = e.get("reason", "") or ("the local driver died" if state == LOST else "")
    wall = (end - start if start and end else 0.0) + float(e.get("earlier_s", 0.0))
    return TaskState(stage, t, state, job, os.uname().nodename if job else "",
                     _fmt_elapsed(end - start) if start and end else "", "", reason, log, gpu_seconds=wall * gpus)


def stage_rows(paths: RunPaths, entries: dict[str, Any], stage: str, tasks: int,
               alive: bool, gpus: int = 0) -> tuple[TaskState, ...]:
    """`gpus`: the stage's planned GPUs a task (the local executor keeps no allocation of its own)."""
    done = done_tasks(paths, stage)
    return tuple(_row(paths, stage, t, entries.get(str(t)), t in done, alive, gpus) for t in range(tasks))


def read_state(paths: RunPaths) -> dict[str, Any]:
    """local_state.json ({"stages": {stage: {task: entry}}}); a damaged one is one line naming it."""
    sp = paths.local_state_json
    if not sp.exists():
        return {"stages": {}}

    def typed() -> dict[str, Any]:
        raw = read_json(sp)
        stages = raw.get("stages", {})
        if not isinstance(stages, dict) or not all(isinstance(v, dict) and all(isinstance(e, dict) for e in
                                                                                v.values()) for v in stages.values()):
            raise ValueError("'stages' is not {stage: {task: entry}}")
        return {**raw, "stages": stages}
    return parsed(sp, "stages", typed)


def _queue(paths: RunPaths, todo: Mapping[str, list[int]], round_: int) -> None:
    """A resume's tasks read PENDING from the moment they are resubmitted, not the last round's state (a
    CANCELLED, or a COMPLETED report whose marker resume dropped) until the new driver reaches them."""
    state = read_state(paths)
    stages: dict[str, Any] = state["stages"]
    for stage, tasks in todo.items():
        st = stages.setdefault(stage, {})
        for t in tasks:
            st[str(t)] = attempt(st.get(str(t)), state="PENDING", job_id="",
                                 reason=f"resubmitted (round {round_}); the driver has not reached it")
    atomic_write_json(paths.local_state_json, {**state, "stages": stages, "time": time.time()})


def _entries(paths: RunPaths) -> dict[str, Any]:
    stages: dict[str, Any] = read_state(paths)["stages"]
    return stages


class LocalBackend:
    name = "local"

    def submit(self, plan: Plan, paths: RunPaths, todo: dict[str, list[int]], chunk_size: int, round_: int,
               parent_ids: dict[str, list[str]], record: Record) -> list[Submission]:
        """One detached driver for every stage; a later round (resume) runs only the listed tasks."""
        if round_ > 0 or any(len(todo.get(s.name, [])) != s.tasks for s in plan.stages):
            atomic_write_json(paths.local_only_json, todo)  # a resume, or a campaign member without shared stages
        if round_ > 0:
            _queue(paths, todo, round_)
        paths.local_done_json.unlink(missing_ok=True)
        subs = [Submission("*", f"local:{start_driver(paths)}", (), False, time.time(), round_)]
        record(subs)
        return subs

    def query(self, paths: RunPaths, plan: Plan, jobs: Jobs, known: Mapping[str, TaskState] | None = None) -> Query:
        _, alive = driver(paths, jobs)
        entries = _entries(paths)
        return Query(tuple((s.name, stage_rows(paths, entries.get(s.name, {}), s.name, s.tasks, alive,
                                               s.resources.gpus_per_node * s.resources.nodes))
                           for s in plan.stages), alive)

    def cancel(self, paths: RunPaths, plan: Plan, jobs: Jobs, stage: str | None) -> str:
        if stage is not None:
            raise HarnessError(Problem("cancel", "stage", "a local run is cancelled as a whole (one driver runs "
                                                          "every stage)"))
        pid, alive = driver(paths, jobs)
        stopped = alive and procs.stop(pid, paths.root, _latest(jobs)[1], pid_alive(pid))  # its session: its tasks
        _mark_cancelled(paths, plan)
        return f"run {paths.run_id}: local driver {pid} {'stopped' if stopped else 'was not running'}"

    def log(self, paths: RunPaths, plan: Plan, jobs: Jobs, stage: str, task: int) -> str:
        rows = stage_rows(paths, _entries(paths).get(stage, {}), stage, plan.stage(stage).tasks, False)
        return rows[task].log


def _mark_cancelled(paths: RunPaths, plan: Plan) -> None:
    """Tasks that were running or waiting read CANCELLED afterwards, and the run is marked finished."""
    sp = paths.local_state_json
    state = read_state(paths)
    for s in plan.stages:
        entries, done = state["stages"].setdefault(s.name, {}), done_tasks(paths, s.name)
        for t in range(s.tasks):
            e = entries.get(str(t))
            if t not in done and (e is None or e.get("state") in ("RUNNING", "PENDING")):
                entries[str(t)] = {**(e or {}), "state": "CANCELLED", "reason": "harness cancel",
                                   "end": time.time()}
    atomic_write_json(sp, state)
    atomic_write_json(paths.local_done_json, {"time": time.time(), "cancelled": True})


def main() -> None:
    hold_secrets()
    paths = open_run(Path(sys.argv[1]))
    only_file = paths.local_only_json
    only = read_json(only_file) if only_file.exists() else None
    try:
        drive(paths, only)
    except Exception:
        traceback.print_exc()
        raise


if __name__ == "__main__":
    main()
