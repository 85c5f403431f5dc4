"""Launching a plan: choose the backend, create the run directory, submit, record jobs.json.

Slurm when a controller answers (or `--executor slurm`), else submitit's local executor; the reason for
the choice is printed and stored. Planning stays pure (harness.core.plan) and backends only start tasks
(harness.launch); this module orders the side effects: preflight, run directory, lock, submission, record.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

from harness.core import plan as plan_mod
from harness.core import spec as spec_mod
from harness.core.errors import HarnessError
from harness.core.paths import RunPaths, new_run_dir
from harness.core.atomic import atomic_write_json, atomic_write_text
from harness.launch import facts, slurmcli
from harness.launch.backend import Jobs, Submission, load_plan
from harness.ops.state import backend_for

__all__ = ["Choice", "Submitted", "backend_for", "choose_executor", "gather_facts", "load_plan", "make_plan",
           "record_jobs", "run_lock", "submit", "submit_stages", "write_run"]

ExecutorName = Literal["auto", "slurm", "local"]


@dataclass(frozen=True)
class Choice:
    executor: Literal["slurm", "local"]
    reason: str


@dataclass(frozen=True)
class Submitted:
    paths: RunPaths
    plan: plan_mod.Plan
    choice: Choice
    submissions: tuple[Submission, ...]
    seconds: float


def choose_executor(requested: ExecutorName) -> Choice:
    if requested == "local":
        return Choice("local", "requested with --executor local")
    why_not = slurmcli.controller_error()
    if requested == "slurm":
        if why_not:
            raise HarnessError(f"--executor slurm: {why_not}")
        return Choice("slurm", "requested with --executor slurm")
    if why_not:
        return Choice("local", f"{why_not}; running on this machine with submitit's local executor")
    return Choice("slurm", "a Slurm controller answers (scontrol ping)")


def gather_facts(spec: spec_mod.RunSpec, choice: Choice, num_inputs: int) -> plan_mod.Facts:
    return facts.gather(spec, choice.executor, num_inputs)


def make_plan(spec: spec_mod.RunSpec, facts: plan_mod.Facts) -> plan_mod.Plan:
    return plan_mod.build(spec, facts)


def write_run(paths: RunPaths, spec_text: str, plan: plan_mod.Plan, known: plan_mod.Facts, choice: Choice) -> None:
    atomic_write_text(paths.spec_toml, spec_text)
    atomic_write_json(paths.spec_json, spec_mod.to_dict(plan.spec))
    atomic_write_json(paths.plan_json, {**plan_mod.to_json(plan), "facts": known.__dict__,
                                        "executor": choice.executor, "executor_reason": choice.reason})


@contextmanager
def run_lock(paths: RunPaths) -> Iterator[None]:
    """One submit/resume per run at a time; a second one fails at once with a clear message."""
    fd = os.open(paths.lock, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HarnessError(f"{paths.root}: another harness submit/resume holds this run's lock") from None
        yield
    finally:
        os.close(fd)


def _preflight(spec: spec_mod.RunSpec, plan: plan_mod.Plan, choice: Choice, items: list) -> None:  # type: ignore[type-arg]
    """The cheap doctor checks (harness.ops.doctor.CHEAP): a failure stops before a run directory exists."""
    from harness.ops import doctor

    cluster = doctor.gather_cluster() if choice.executor == "slurm" else choice.reason
    doctor.raise_on_failure(spec, doctor.run(spec, plan, cluster, items, groups=doctor.CHEAP))


def submit(spec_path: Path, requested: ExecutorName = "auto", *, doctor: bool = True) -> Submitted:
    """Plan and submit; with `doctor`, the cheap preflight checks run first."""
    from harness.ops.inputs import discover
    from harness.stages.inputs import write_inputs

    t0 = time.perf_counter()
    spec = spec_mod.absolutize(spec_mod.load_for_submit(spec_path), Path.cwd())
    choice = choose_executor(requested)
    items = discover(spec)
    known = gather_facts(spec, choice, len(items))
    plan = make_plan(spec, known)
    if doctor:
        _preflight(spec, plan, choice, items)
    paths = new_run_dir(Path(spec.run.workdir), spec.run.name)
    with run_lock(paths):
        write_run(paths, spec_path.read_text(encoding="utf-8"), plan, known, choice)
        write_inputs(paths, items)
        subs = submit_stages(plan, paths, {s.name: list(range(s.tasks)) for s in plan.stages}, known, choice)
    return Submitted(paths, plan, choice, tuple(subs), time.perf_counter() - t0)


def submit_stages(plan: plan_mod.Plan, paths: RunPaths, todo: dict[str, list[int]], known: plan_mod.Facts,
                  choice: Choice, parent_ids: dict[str, list[str]] | None = None,
                  prior: tuple[Submission, ...] | list[Submission] = ()) -> list[Submission]:
    """Submit the listed tasks of each stage in plan order through the chosen backend, recording jobs.json
    after each sbatch; on a failure the backend cancels what it submitted and jobs.json keeps `prior`."""
    prior = tuple(prior)
    rnd = Jobs(choice.executor, choice.reason, prior).next_round
    try:
        return backend_for(choice.executor).submit(plan, paths, todo, known.max_array_size, rnd, dict(parent_ids or {}),
                                                   lambda subs: record_jobs(paths, choice, [*prior, *subs]))
    except HarnessError:
        record_jobs(paths, choice, list(prior))
        raise


def record_jobs(paths: RunPaths, choice: Choice, subs: list[Submission]) -> None:
    atomic_write_json(paths.jobs_json, Jobs(choice.executor, choice.reason, tuple(subs)).to_json())
