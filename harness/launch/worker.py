"""The stage worker: what every Slurm or local task runs (`run_task`), and `python -m harness.stages` by hand.

- The stage's module comes from the stage registry (`harness.core.stages`: `StageDef.module`); its
  `run(spec, task, paths)` gets the frozen `RunSpec` read back from the run directory (`spec.json`, with derived
  values such as `tokenize.shards` resolved at submit time), the array index (0 for single-task stages) and the
  run directory layout. The worker sits above the stages and the report package, so it may start either: the
  report stage's worker lives in `harness.report.stage`, beside the report it writes.
- A stage worker is idempotent: it skips work whose outputs verify, writes atomically, and never parses CLI flags.
- `run_task` writes the task's completion marker after `run` returns. A full disk met by any layer leaves it as
  `failures.NoSpaceError`, one line naming the filesystem and path. Before the stage runs, it checks that a stage
  whose Slurm resources ask for GPUs sees one (`require_gpus`).
- Infrastructure failures are retried (`harness.launch.retry`): a restarted task counts the node failures before
  it and stops past `<stage>.retries`; an exception with a node-level cause requeues the task off its node.
- An unbound Slurm task (one whose affinity shows more cores than SLURM_CPUS_PER_TASK) gets OMP_NUM_THREADS set
  to its CPUs before the stage imports torch (`harness.core.cpus`), unless the user set it.
- numba's on-disk cache (the evaluate kernel) goes to `<run>/cache/numba` unless NUMBA_CACHE_DIR is set: the run
  directory is the one place every task of a run can write, on every node and inside containers (the harness
  source is mounted read-only there, and with no home mounted numba would find no cache location at all). The
  first evaluate task of a run compiles (seconds); every later one loads the kernel from the cache.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import Callable

from harness.core import cpus, failures
from harness.core import spec as spec_mod
from harness.core.errors import HarnessError
from harness.core.paths import RunPaths, is_done, mark_done
from harness.core.rundir import open_run
from harness.core.rundir import read_spec as load_run_spec  # the workers' name for the frozen spec's one reader
from harness.core.stages import stage as stage_def
from harness.launch import retry
from harness.lib.heap import quiet_imports

StageFn = Callable[[spec_mod.RunSpec, int, RunPaths], None]

log = logging.getLogger("harness")


def require_gpus(spec: spec_mod.RunSpec, stage: str) -> None:
    """A stage that asks Slurm for GPUs and sees none (a broken driver, a container without GPU access, an empty
    CUDA_VISIBLE_DEVICES) stops here with one line, instead of falling back to a CPU run that looks like
    progress (fp32 over gloo, hours per step for a real model)."""
    section, key = stage_def(stage).gpu_key.split(".")
    wanted = getattr(spec, section).gpus_per_node
    if not wanted:
        return
    import torch

    if torch.cuda.is_available():
        return
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    raise HarnessError(f"{os.uname().nodename}: {stage} asks for GPUs ({section}.{key} = {wanted} in {spec.source}) "
                       f"but sees none: torch.cuda.is_available() is false with CUDA_VISIBLE_DEVICES="
                       f"{'<unset>' if cvd is None else repr(cvd)}; check the node's NVIDIA driver and the job's GPU "
                       f"allocation")


def worker(stage: str) -> StageFn:
    """The stage's `run`, imported from the module its registry row names."""
    fn: StageFn = importlib.import_module(stage_def(stage).module).run
    return fn


def run_task(run_dir: str, stage: str, task: int) -> str:
    """Entry point of every Slurm/local task: load the frozen spec, run the stage, then mark it done."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    paths = open_run(Path(run_dir))
    os.environ.setdefault("NUMBA_CACHE_DIR", str(paths.numba_cache))  # read when numba is first imported
    os.environ.update(cpus.task_env(os.environ, len(os.sched_getaffinity(0))))  # before torch/OpenMP load
    if is_done(paths, stage, task):
        log.info("%s[%d] already complete; nothing to do", stage, task)
        return "skipped"
    spec = load_run_spec(paths)
    retry.begin(paths, spec, stage, task)  # a restart after a node failure: counted, stopped past the limit
    log.info("%s[%d] starting on %s (job %s)", stage, task, os.uname().nodename, os.environ.get("SLURM_JOB_ID", "-"))
    try:
        require_gpus(spec, stage)  # inside: a GPU node that shows no GPU is a node-level failure, retried
        with quiet_imports():  # the stage's torch, megatron-core, PyAV...: walked by no later collection
            fn = worker(stage)
        fn(spec, task, paths)
    except failures.NoSpaceError:
        raise
    except BaseException as e:  # torch.distributed.checkpoint's CheckpointException is not an Exception
        if failures.is_no_space(e):  # any layer's wording of a full disk becomes the one line status shows
            raise failures.as_no_space(e, paths.root) from e
        retry.after_failure(paths, spec, stage, task, e)  # requeues (raises) only for a node-level cause
        raise
    mark_done(paths, stage, task, {"node": os.uname().nodename, "job": os.environ.get("SLURM_JOB_ID", "")})
    return "done"
