"""Where every task of a run stands, from the run directory plus at most one squeue and one sacct.

A task is COMPLETED iff its completion marker exists (markers are written last, so they are the truth);
otherwise the run's backend (harness.launch: Slurm's squeue/sacct of the LATEST round's submission that
contains it, or the local driver's `local_state.json`) says where it is. `status`, `wait`, `resume`, `runs` and
`report` all read this one view.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.core.atomic import atomic_write_json, read_json
from harness.core.errors import HarnessError, Problem
from harness.core.paths import RunPaths
from harness.core.plan import Plan
from harness.core.rundir import DAMAGE, open_run, read_jobs
from harness.launch import slurmcli
from harness.launch.backend import ACTIVE, COMPLETED, LOST, MISSING, NOT_SUBMITTED, Backend, Jobs, TaskState, done_tasks
from harness.launch.local import LocalBackend
from harness.launch.slurm import SlurmBackend, job_ids

__all__ = ["ACTIVE", "COMPLETED", "LOST", "MISSING", "NOT_SUBMITTED", "RunState", "Snapshot", "backend_for",
           "StageState", "TaskState", "collect", "done_tasks", "job_ids", "load_jobs", "resolve_run"]

@dataclass(frozen=True)
class StageState:
    name: str
    rows: tuple[TaskState, ...]

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
    def rows(self) -> list[TaskState]:
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
        if RunPaths(cand).is_run:
            return open_run(cand.absolute())
    raise HarnessError(Problem(run, "", f"no run directory with jobs.json and plan.json here or at "
                                        f"{Path(workdir) / run} (harness runs --workdir {workdir} lists runs)"))


def backend_for(executor: str) -> Backend:
    """The one place a run's executor name becomes its backend."""
    return LocalBackend() if executor == "local" else SlurmBackend()


def load_jobs(paths: RunPaths) -> Jobs:
    return read_jobs(paths)


# ------------------------------------------------------------------------------------------ entry
@dataclass
class Snapshot:
    """Slurm states fetched once for several runs (`harness runs`): two queries in all."""

    states: dict[str, TaskState] = field(default_factory=dict)


def collect(paths: RunPaths, plan: Plan, snapshot: Snapshot | None = None) -> RunState:
    jobs = load_jobs(paths)
    q = backend_for(jobs.executor).query(paths, plan, jobs, snapshot.states if snapshot is not None else None)
    rs = RunState(paths, jobs.executor, tuple(StageState(name, rows) for name, rows in q.stages), q.driver_alive)
    if jobs.executor == "slurm":
        _store(rs)
    return rs


def _store(rs: RunState) -> None:
    """Keep the states Slurm just gave, for when its controller stops answering; best effort (a read-only run
    directory only loses the fallback)."""
    data = {"time": time.time(), "stages": {s.name: [dataclasses.asdict(r) for r in s.rows] for s in rs.stages}}
    try:
        atomic_write_json(rs.paths.status_json, data)
    except OSError:
        pass


def stored(paths: RunPaths) -> tuple[float, RunState] | None:
    """(when, the run's last stored states) with every task whose completion marker exists since shown
    COMPLETED (markers are the truth); None when no status was ever stored."""
    if not paths.status_json.is_file():
        return None
    try:
        raw = read_json(paths.status_json)
        stages = []
        for name, rows in raw["stages"].items():
            done = done_tasks(paths, name)
            stages.append(StageState(name, tuple(
                dataclasses.replace(TaskState(**r), state=COMPLETED, reason="") if r["task"] in done else TaskState(**r)
                for r in rows)))
        return float(raw["time"]), RunState(paths, "slurm", tuple(stages))
    except DAMAGE:  # a cache of the last answer, torn or edited: as if none was stored (the markers still count)
        return None


def collect_or_stored(paths: RunPaths, plan: Plan) -> tuple[RunState, str]:
    """The run's states and '' when its backend answers; when the Slurm controller does not, the states stored at
    the last answer (or, never stored, the completion markers alone) and a line saying so. A report or status on a
    machine the cluster is gone from still shows what the run directory knows."""
    try:
        return collect(paths, plan), ""
    except slurmcli.SlurmUnreachable as e:
        why = slurmcli.gist(str(e))
    last = stored(paths)
    if last is not None:
        when, rs = last
        return rs, (f"the Slurm controller does not answer ({why}): these are the states stored at "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(when))}, not live ones")
    stages = tuple(StageState(s.name, tuple(TaskState(s.name, t, COMPLETED if t in done else "UNKNOWN",
                                                      reason="" if t in done else "no state: Slurm does not answer")
                                            for t in range(s.tasks)))
                   for s in plan.stages for done in [done_tasks(paths, s.name)])
    return RunState(paths, "slurm", stages), (f"the Slurm controller does not answer ({why}) and no states were "
                                              f"stored: tasks with a completion marker show COMPLETED, the rest "
                                              f"UNKNOWN")
