"""The Slurm backend: one sbatch per stage (per chunk of a split array), in topological order, each with the
real job ids of its parents in --dependency; returns at once. Task states come from one squeue and one sacct
(`harness.launch.slurmstate`); cancel is one scancel.

Every script is rendered by `script` -> `render.sbatch_text`, for `harness plan --out` and for the submission
alike: `Executor` is submitit's SlurmExecutor with its submission-file hook answered by that same function.
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import submitit

from harness.core.errors import HarnessError
from harness.core.paths import CACHED_STAGES, RunPaths
from harness.core.plan import Plan, StagePlan
from harness.launch import render, slurmcli, slurmstate
from harness.launch.backend import Jobs, Query, Record, Submission, TaskState, ranges
from harness.launch.task import StageTask

MAX_REQUEUES = 50
"""Time-limit requeues submitit allows a task (its default, 3, would end a long finetune early)."""


def harness_source() -> Path:
    """The directory that holds the `harness` package: mounted into containers as-is."""
    return Path(__file__).resolve().parents[2]


def pure_python_deps() -> list[Path]:
    """Packages the container may lack that the task bootstrap needs (submitit, cloudpickle)."""
    import cloudpickle

    return [Path(submitit.__file__).parent, Path(cloudpickle.__file__).parent]


def python_for(plan: Plan, stage: StagePlan) -> str:
    return shlex.quote(plan.spec.container.python if stage.container else sys.executable)


def srun_args(plan: Plan, stage: StagePlan, paths: RunPaths) -> list[str]:
    if not stage.container:
        return []
    return render.container_args(plan, paths, harness_source(), pure_python_deps())


def command(python: str, folder: Path) -> str:
    """What every script runs: submitit's job-side entry on the pickled task, as submitit builds it."""
    return " ".join([python, "-u -m submitit.core._submit", shlex.quote(str(folder))])


class Executor(submitit.SlurmExecutor):
    """submitit's SlurmExecutor whose script is the harness's own (`render.sbatch_text`): the hook every
    submitit executor implements to write its submission file. submitit adds `map_count` for an array."""

    def _make_submission_file_text(self, command: str, uid: str) -> str:
        return render.sbatch_text(self.parameters, self.folder, command)


def _params(plan: Plan, stage: StagePlan, paths: RunPaths, parent_ids: Mapping[str, list[str]],
            chunk: int) -> dict[str, Any]:
    return render.executor_params(plan, stage, paths, render.dependency(stage, dict(parent_ids), chunk),
                                  srun_args(plan, stage, paths))


def script(plan: Plan, stage: StagePlan, paths: RunPaths, parent_ids: Mapping[str, list[str]], chunk: int) -> str:
    """The sbatch text of one chunk, exactly as `submit_stage` hands it to sbatch (no Slurm needed)."""
    params = _params(plan, stage, paths, parent_ids, chunk)
    lo, hi = stage.chunks[chunk]
    if stage.array and hi - lo > 1:
        params["map_count"] = hi - lo
    folder = paths.job_folder(stage.name).absolute()
    return render.sbatch_text(params, folder, command(python_for(plan, stage), folder))


def submit_stage(plan: Plan, stage: StagePlan, paths: RunPaths, tasks: list[int],
                 parent_ids: dict[str, list[str]], chunk_size: int, round_: int = 0) -> list[Submission]:
    """Submit `tasks` (array indices of this stage) in chunks no larger than MaxArraySize."""
    out: list[Submission] = []
    for k, start in enumerate(range(0, len(tasks), chunk_size)):
        part = tasks[start:start + chunk_size]
        ex = Executor(folder=paths.job_folder(stage.name), python=python_for(plan, stage),
                      max_num_timeout=MAX_REQUEUES)
        ex.update_parameters(**_params(plan, stage, paths, parent_ids, k))
        with ex.batch():
            jobs = [ex.submit(StageTask(str(paths.root), stage.name, t)) for t in part]
        job_id = str(jobs[0].job_id).split("_")[0]
        out.append(Submission(stage.name, job_id, ranges(part), len(part) > 1, time.time(), round_))
    return out


def sbatch_env() -> list[str]:
    """SBATCH_* variables of this environment: sbatch lets them override the script's #SBATCH lines (the time
    limit, the array, --export and with it the secrets kept from every job), so submission drops them."""
    return sorted(k for k in os.environ if k.startswith("SBATCH_"))


@contextmanager
def _no_sbatch_env() -> Iterator[None]:
    held = {k: os.environ.pop(k) for k in sbatch_env()}
    try:
        yield
    finally:
        os.environ.update(held)


def test_only(text: str) -> str:
    """What the controller says of a rendered script without queueing it: '' if it would be accepted, else the
    reason (an option sbatch rejects, a partition, account, QOS or node request it cannot meet). The dependency
    line goes: its parents are placeholders until submit. The submitting shell's SBATCH_* variables are left
    out as at submit."""
    body = "".join(ln for ln in text.splitlines(keepends=True) if not ln.startswith("#SBATCH --dependency"))
    env = {k: v for k, v in os.environ.items() if k not in sbatch_env()}  # not os.environ's: callers run in threads
    with tempfile.TemporaryDirectory(prefix="harness-test-only-") as tmp:
        script = Path(tmp) / "job.sbatch"
        script.write_text(body, encoding="utf-8")
        return slurmcli.test_only(script, env)


class SlurmBackend:
    name = "slurm"

    def submit(self, plan: Plan, paths: RunPaths, todo: dict[str, list[int]], chunk_size: int, round_: int,
               parent_ids: dict[str, list[str]], record: Record) -> list[Submission]:
        """In plan order, recording after each sbatch; if one fails, cancel what this call submitted so
        nothing is left half-chained."""
        parents, subs = dict(parent_ids), []
        try:
            with _no_sbatch_env():
                for stage in plan.stages:
                    if todo.get(stage.name):
                        new = submit_stage(plan, stage, paths, todo[stage.name], parents, chunk_size, round_)
                        parents[stage.name] = [s.job_id for s in new]
                        subs += new
                        record(subs)
                    elif stage.name in CACHED_STAGES and paths.cache is not None:  # a token-cache entry reused
                        parents[stage.name] = inherited(stage, parents)  # or built elsewhere: wait on own assets
        except Exception as e:
            slurmcli.scancel([s.job_id for s in subs])
            raise HarnessError(f"{paths.root}: submission failed, {len(subs)} job(s) cancelled: {e}") from None
        return subs

    def query(self, paths: RunPaths, plan: Plan, jobs: Jobs, known: Mapping[str, TaskState] | None = None) -> Query:
        states = known if known is not None else slurmstate.query(job_ids(jobs))
        return Query(tuple((s.name, slurmstate.stage_rows(paths, jobs, s.name, s.tasks, states))
                           for s in plan.stages))

    def cancel(self, paths: RunPaths, plan: Plan, jobs: Jobs, stage: str | None) -> str:
        """scancel only the stored jobs that are live and still this run's (squeue's comment is the run id):
        a stored id may name another run's job once Slurm reuses ids."""
        ids = job_ids(jobs, stage)
        live = slurmcli.squeue(ids)
        mine = sorted({st.job_id.split("_")[0] for st in live.values() if st.comment == paths.run_id}, key=int)
        if not mine:
            return f"run {paths.run_id}: nothing to cancel (no job of this run is pending or running)"
        slurmcli.scancel(mine)
        return f"run {paths.run_id}: scancel {' '.join(mine)}"

    def log(self, paths: RunPaths, plan: Plan, jobs: Jobs, stage: str, task: int) -> str:
        return slurmstate.latest_ids(paths, jobs, stage).get(task, ("", "", 0.0))[1]


def inherited(stage: StagePlan, parents: Mapping[str, list[str]]) -> list[str]:
    """A stage not submitted in this call stands for its given jobs (another run's build) and its own parents'."""
    ids = [*parents.get(stage.name, []), *(i for d in stage.depends for i in parents.get(d.stage, []))]
    return list(dict.fromkeys(ids))


def job_ids(jobs: Jobs, stage: str | None = None) -> list[str]:
    return [s.job_id for s in jobs.submissions
            if not s.job_id.startswith("local:") and (stage is None or s.stage == stage)]

