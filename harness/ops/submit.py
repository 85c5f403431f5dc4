"""Launching a plan: create the run directory, submit, record jobs.json.

The executor, the facts and the plan come from `harness.ops.plan` (what `harness plan` shows): Slurm when a
controller answers (or `--executor slurm`), else submitit's local executor; the reason for the choice is printed
and stored. Planning stays pure (harness.core.plan) and backends only start tasks (harness.launch); this module
orders the side effects: preflight, run directory, lock, submission, record.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from harness.core import plan as plan_mod
from harness.core import rundir
from harness.core import spec as spec_mod
from harness.core.atomic import atomic_write_json, atomic_write_text
from harness.core.errors import HarnessError
from harness.core.paths import CACHED_STAGES, RunPaths, new_run_dir
from harness.core.tokencache import CacheUse
from harness.launch.backend import Jobs, Submission, load_plan
from harness.lib.inputs import InputItem
from harness.ops import cache
from harness.ops import plan as plan_ops
from harness.ops.plan import Choice, ExecutorName, choose_executor
from harness.ops.state import backend_for

__all__ = ["Choice", "Submitted", "backend_for", "choose_executor", "load_plan", "preflight", "record_jobs", "run_lock",
           "start", "start_cached", "submit", "submit_stages", "write_run"]


@dataclass(frozen=True)
class Submitted:
    paths: RunPaths
    plan: plan_mod.Plan
    choice: Choice
    submissions: tuple[Submission, ...]
    seconds: float
    cache: CacheUse | None = None
    """What the run did with its token-cache entry, as decided under the entry's lock."""


def write_run(paths: RunPaths, spec_text: str, plan: plan_mod.Plan, known: plan_mod.Facts, choice: Choice) -> None:
    atomic_write_text(paths.spec_toml, spec_text)
    atomic_write_json(paths.spec_json, spec_mod.to_dict(plan.spec))
    atomic_write_json(paths.plan_json, {**plan_mod.to_json(plan), "facts": known.__dict__,
                                        "executor": choice.executor, "executor_reason": choice.reason,
                                        "spec_toml_sha256": text_digest(spec_text)})


def text_digest(text: str) -> str:
    """spec.toml's digest at submit: resume tells an edited copy (which it does not read) from the submitted one."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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


def preflight(spec: spec_mod.RunSpec, plan: plan_mod.Plan, choice: Choice, items: list[InputItem] | None) -> None:
    """The cheap doctor checks (harness.ops.doctor.CHEAP): a failure stops before a run directory exists."""
    from harness.ops import doctor

    cluster = doctor.gather_cluster() if choice.executor == "slurm" else choice.reason
    doctor.raise_on_failure(spec, doctor.run(spec, plan, cluster, items, groups=doctor.CHEAP))


def submit(spec_path: Path, requested: ExecutorName = "auto", *, doctor: bool = True,
           overrides: tuple[str, ...] = ()) -> Submitted:
    """Plan (as `harness plan` does) and submit one run; with `doctor`, the cheap preflight checks run first. With
    overrides, spec.toml is the effective spec (the file with them set); a sweep goes to `harness.ops.campaign`."""
    t0 = time.perf_counter()
    e = plan_ops.load_members(spec_path, overrides)
    if e.is_sweep:
        raise HarnessError(f"{spec_path}: has a [sweep] table: submit it as a campaign (harness submit)")
    spec = e.members[0].spec
    got = plan_ops.gather(spec, requested, "submit")
    plan = plan_ops.build(spec, got)
    if doctor:
        preflight(spec, plan, got.choice, got.items)
    text = e.effective_toml(e.members[0]) if overrides else spec_mod.read_text(spec_path)
    paths = new_run_dir(Path(spec.run.workdir), spec.run.name)
    use = None
    if got.cache is not None:
        paths, subs, use = start_cached(paths, text, plan, got)
    else:
        subs = start(paths, text, plan, got)
    return Submitted(paths, plan, got.choice, tuple(subs), time.perf_counter() - t0, use)


def start_cached(paths: RunPaths, spec_text: str, plan: plan_mod.Plan, got: plan_ops.Gathered,
                 todo: dict[str, list[int]] | None = None) -> tuple[RunPaths, list[Submission], CacheUse]:
    """`start` for a run with a token cache: under the entry's lock, reuse a complete entry (no tokenize, no
    merge), wait on a live build (finetune after the builder's merge) or claim the entry and build it."""
    assert got.cache is not None
    entry = cache.entry_of(plan.spec, got.cache.key)
    todo = todo if todo is not None else {s.name: list(range(s.tasks)) for s in plan.stages}
    with cache.claimed(entry, got.cache.key, got.cache_inputs, paths) as use:
        builder = cache.builder_root(entry) if use.mode == "wait" else None
        paths = rundir.write_shared(paths, None, entry.root, builder)
        prior: tuple[Submission, ...] = ()
        if use.mode != "build":
            todo = {k: v for k, v in todo.items() if k not in CACHED_STAGES}
        if builder is not None:
            prior = latest_rounds(rundir.read_jobs(rundir.open_run(builder)).submissions, CACHED_STAGES)
        parents = {"merge": [s.job_id for s in prior if s.stage == "merge"]}  # not tokenize's: may be purged
        subs = start(paths, spec_text, plan, got, todo, parents, prior)
        if use.mode == "build":
            cache.record_build(entry, paths, subs)
    cache.add_user(entry, paths, use)
    return paths, subs, use


def latest_rounds(subs: tuple[Submission, ...], stages: tuple[str, ...] | frozenset[str]) -> tuple[Submission, ...]:
    """Each of `stages`' submissions of its latest round: a builder cancelled and resumed has an earlier merge job
    that never completes, and a finetune waiting on it would be cancelled by Slurm (DependencyNeverSatisfied)."""
    last = {st: max((s.round for s in subs if s.stage == st), default=-1) for st in stages}
    return tuple(s for s in subs if s.stage in last and s.round == last[s.stage])


def start(paths: RunPaths, spec_text: str, plan: plan_mod.Plan, got: plan_ops.Gathered,
          todo: dict[str, list[int]] | None = None, parent_ids: dict[str, list[str]] | None = None,
          prior: tuple[Submission, ...] = ()) -> list[Submission]:
    """Write a fresh run directory's records and submit `todo` (default: every task of every stage)."""
    from harness.stages.inputs import write_inputs

    with run_lock(paths):
        write_run(paths, spec_text, plan, got.facts, got.choice)
        write_inputs(paths, got.items or [])
        todo = todo if todo is not None else {s.name: list(range(s.tasks)) for s in plan.stages}
        return submit_stages(plan, paths, todo, got.facts, got.choice, parent_ids, prior)


def submit_stages(plan: plan_mod.Plan, paths: RunPaths, todo: dict[str, list[int]], known: plan_mod.Facts,
                  choice: Choice, parent_ids: dict[str, list[str]] | None = None,
                  prior: tuple[Submission, ...] | list[Submission] = ()) -> list[Submission]:
    """Submit the listed tasks of each stage in plan order through the chosen backend, recording jobs.json
    after each sbatch; on a failure the backend cancels what it submitted, and jobs.json keeps `prior` and says why
(`harness status` shows it)."""
    prior = tuple(prior)
    rnd = Jobs(choice.executor, choice.reason, prior).next_round
    try:
        return backend_for(choice.executor).submit(plan, paths, todo, known.max_array_size, rnd, dict(parent_ids or {}),
                                                   lambda subs: record_jobs(paths, choice, [*prior, *subs]))
    except HarnessError as e:
        record_jobs(paths, choice, list(prior), failed=str(e))
        raise


def record_jobs(paths: RunPaths, choice: Choice, subs: list[Submission], failed: str = "") -> None:
    atomic_write_json(paths.jobs_json, Jobs(choice.executor, choice.reason, tuple(subs), failed).to_json())
