"""Launching a plan: choose the executor, create the run directory, submit, record jobs.json.

Slurm when a controller answers (or `--executor slurm`), else submitit's local executor; the reason for
the choice is printed and stored. Planning stays pure (harness.core.plan); the side effects live here.
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
from harness.launch import slurmcli
from harness.core.paths import RunPaths, new_run_dir
from harness.core.atomic import atomic_write_json, atomic_write_text, read_json

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
    submissions: tuple[dict, ...]
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
    if choice.executor == "local":
        return plan_mod.Facts(num_inputs=num_inputs, max_array_size=1_000_000, nodes_available=1)
    cfg = slurmcli.config()
    nodes = spec.tokenize.nodes_available or slurmcli.nodes_available(spec.tokenize.partition)
    return plan_mod.Facts(num_inputs=num_inputs, max_array_size=slurmcli.max_array_size(cfg), nodes_available=nodes)


def make_plan(spec: spec_mod.RunSpec, facts: plan_mod.Facts) -> plan_mod.Plan:
    return plan_mod.build(spec, facts)


def write_run(paths: RunPaths, spec_text: str, plan: plan_mod.Plan, facts: plan_mod.Facts, choice: Choice) -> None:
    atomic_write_text(paths.spec_toml, spec_text)
    atomic_write_json(paths.spec_json, spec_mod.to_dict(plan.spec))
    atomic_write_json(paths.plan_json, {**plan_mod.to_json(plan), "facts": facts.__dict__,
                                        "executor": choice.executor, "executor_reason": choice.reason})


def load_plan(paths: RunPaths) -> plan_mod.Plan:
    """Rebuild the identical plan from the run directory alone (used by the driver, status, resume)."""
    spec = spec_mod.from_dict(read_json(paths.spec_json), source=str(paths.spec_json))
    facts = plan_mod.Facts(**read_json(paths.plan_json)["facts"])
    return plan_mod.build(spec, facts)


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


def submit(spec_path: Path, requested: ExecutorName = "auto", *, doctor: bool = True) -> Submitted:
    """Plan and submit; with `doctor`, the cheap preflight checks (harness.ops.doctor.CHEAP) run first and any
    failure stops the submission before a run directory exists."""
    from harness.stages.inputs import discover, write_inputs
    from harness.launch import local

    t0 = time.perf_counter()
    spec = spec_mod.absolutize(spec_mod.load_for_submit(spec_path), Path.cwd())
    choice = choose_executor(requested)
    items = discover(spec)
    facts = gather_facts(spec, choice, len(items))
    plan = make_plan(spec, facts)
    if doctor:
        from harness.ops import doctor as preflight

        cluster = preflight.gather_cluster() if choice.executor == "slurm" else choice.reason
        preflight.raise_on_failure(spec, preflight.run(spec, plan, cluster, items, groups=preflight.CHEAP))
    paths = new_run_dir(Path(spec.run.workdir), spec.run.name)
    with run_lock(paths):
        write_run(paths, spec_path.read_text(encoding="utf-8"), plan, facts, choice)
        write_inputs(paths, items)
        if choice.executor == "local":
            pid = local.start_driver(paths)
            subs: list[dict] = [{"stage": "*", "job_id": f"local:{pid}", "tasks": [], "array": False,
                                 "time": time.time(), "round": 0}]
        else:
            subs = submit_stages(plan, paths, {s.name: list(range(s.tasks)) for s in plan.stages}, facts, choice)
        record_jobs(paths, choice, subs)
    return Submitted(paths, plan, choice, tuple(subs), time.perf_counter() - t0)


def submit_stages(plan: plan_mod.Plan, paths: RunPaths, todo: dict[str, list[int]], facts: plan_mod.Facts,
                  choice: Choice, parent_ids: dict[str, list[str]] | None = None,
                  prior: list[dict] | None = None) -> list[dict]:
    """Submit the listed tasks of each stage in plan order, recording jobs.json after each sbatch;
    if one sbatch fails, cancel what this call submitted so nothing is left half-chained."""
    from harness.launch import slurm

    parent_ids, prior = dict(parent_ids or {}), list(prior or [])
    rnd = 1 + max((s.get("round", 0) for s in prior), default=-1)
    subs: list[dict] = []
    try:
        for stage in plan.stages:
            tasks = todo.get(stage.name, [])
            if not tasks:
                continue
            new = slurm.submit_stage(plan, stage, paths, tasks, parent_ids, facts.max_array_size)
            parent_ids[stage.name] = [s["job_id"] for s in new]
            subs += [{**s, "round": rnd} for s in new]
            record_jobs(paths, choice, prior + subs)
    except Exception as e:
        slurmcli.scancel([s["job_id"] for s in subs])
        record_jobs(paths, choice, prior)
        raise HarnessError(f"{paths.root}: submission failed, {len(subs)} job(s) cancelled: {e}") from None
    return subs


def record_jobs(paths: RunPaths, choice: Choice, subs: list[dict]) -> None:
    atomic_write_json(paths.jobs_json, {"executor": choice.executor, "reason": choice.reason, "submissions": subs})
