"""The same DAG without a cluster: a detached driver runs the stages in topological order through
submitit's LocalExecutor and honours the dependency kinds itself (afterok / aftercorr / afterany).

`harness submit` returns at once; the driver records every task's state in `local_state.json`, which
`status`, `resume` and `report` read the way they read sacct on a cluster.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import submitit

from harness.core import failures
from harness.launch.task import StageTask
from harness.core.plan import Plan, StagePlan
from harness.core.paths import RunPaths, is_done
from harness.core.atomic import atomic_write_json, read_json

OK, FAILED, CANCELLED = "COMPLETED", "FAILED", "CANCELLED"


def state_path(paths: RunPaths) -> Path:
    return paths.root / "local_state.json"


def start_driver(paths: RunPaths) -> int:
    """Spawn the driver in its own session so it outlives `harness submit` and the terminal."""
    log = paths.logs("driver")
    log.mkdir(parents=True, exist_ok=True)
    with open(log / "driver.log", "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "harness.launch.local", str(paths.root)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=os.getcwd())
    return proc.pid


class _Driver:
    def __init__(self, plan: Plan, paths: RunPaths) -> None:
        self.plan, self.paths = plan, paths
        p = state_path(paths)
        self.state: dict[str, dict[str, Any]] = read_json(p)["stages"] if p.exists() else {}

    def save(self) -> None:
        atomic_write_json(state_path(self.paths), {"driver_pid": os.getpid(), "stages": self.state,
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

    def run_stage(self, stage: StagePlan, tasks: list[int]) -> None:
        st = self.state.setdefault(stage.name, {})
        todo = []
        for t in tasks:
            ok, reason = self.runnable(stage, t)
            if ok:
                todo.append(t)
            else:
                st[str(t)] = {"state": CANCELLED, "reason": reason, "job_id": ""}
        self.save()
        wave = stage.resources.array_throttle or max(1, os.cpu_count() or 1)
        for i in range(0, len(todo), wave):
            self._run_wave(stage, todo[i:i + wave], st)

    def _run_wave(self, stage: StagePlan, tasks: list[int], st: dict[str, Any]) -> None:
        r = stage.resources
        ex = submitit.LocalExecutor(folder=self.paths.logs(stage.name) / "%j")
        ex.update_parameters(timeout_min=r.time_min, tasks_per_node=r.ntasks_per_node * r.nodes,
                             nodes=1, gpus_per_node=r.gpus_per_node)
        with ex.batch():
            jobs = [ex.submit(StageTask(str(self.paths.root), stage.name, t)) for t in tasks]
        for t, job in zip(tasks, jobs):
            st[str(t)] = {"state": "RUNNING", "job_id": str(job.job_id), "start": time.time(), "reason": ""}
        self.save()
        for t, job in zip(tasks, jobs):
            entry = st[str(t)]
            try:
                job.results()
                entry["state"] = OK if self.task_ok(stage.name, t) else FAILED
            except Exception as e:  # noqa: BLE001 - a task failure is data, recorded for status
                why = failures.reason(str(e), self.paths.root)  # '' when the log was cut short (a full disk)
                entry.update(state=FAILED, reason=why or f"{type(e).__name__} with no error line in its log; see "
                                                         f"harness logs {self.paths.root} {stage.name} {t} --stderr")
            entry["end"] = time.time()
            entry["stdout"] = str(job.paths.stdout).replace("%t", "0")
            self.save()


def drive(paths: RunPaths, only: dict[str, list[int]] | None = None) -> None:
    """Run every stage (or, for resume, only the listed tasks of each stage) in plan order."""
    from harness.launch import load_plan

    plan = load_plan(paths)
    d = _Driver(plan, paths)
    d.save()
    for stage in plan.stages:
        tasks = only.get(stage.name, []) if only is not None else list(range(stage.tasks))
        if tasks:
            d.run_stage(stage, tasks)
    atomic_write_json(paths.root / "local_done.json", {"time": time.time()})


def main() -> None:
    paths = RunPaths(Path(sys.argv[1]))
    only_file = paths.root / "local_only.json"
    only = read_json(only_file) if only_file.exists() else None
    try:
        drive(paths, only)
    except Exception:
        traceback.print_exc()
        raise


if __name__ == "__main__":
    main()
