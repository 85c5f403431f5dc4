"""CPU threads of a task's processes: the CPUs Slurm gave the task, not the cores the process can see.

Slurm gives a task SLURM_CPUS_PER_TASK CPUs. Where it binds tasks (task/affinity, cgroups) the affinity mask
shows exactly those; elsewhere (task/none) every task sees the whole node, and torch, OpenMP and BLAS start one
thread per visible core in each task, so the array tasks sharing a node oversubscribe it many times over (the
threads then spin against each other in every GEMM). The worker therefore sets OMP_NUM_THREADS to the task's
CPUs before its stage imports anything (`task_env`), marked as the harness's own, and the ranks a task starts
share that count (`cpu_threads`). A user's own OMP_NUM_THREADS always wins.
"""

from __future__ import annotations

from collections.abc import Mapping

TASK_CPUS = "HARNESS_TASK_CPUS"
"""Set beside OMP_NUM_THREADS when the worker set it from the task's allocation (the user did not)."""


def task_env(environ: Mapping[str, str], cores: int) -> dict[str, str]:
    """Variables the worker sets before a task's imports: where Slurm gave the task fewer CPUs than the `cores`
    it can see (an unbound task), OMP_NUM_THREADS = those CPUs; nothing where the user set it or all are its."""
    given = int(environ.get("SLURM_CPUS_PER_TASK") or 0)
    if environ.get("OMP_NUM_THREADS") or not 0 < given < cores:
        return {}
    return {"OMP_NUM_THREADS": str(given), TASK_CPUS: str(given)}


def cpu_threads(cores: int, ranks_on_node: int, environ: Mapping[str, str]) -> int | None:
    """Intra-op threads for one rank: the CPUs its task was given (SLURM_CPUS_PER_TASK, else the `cores` it
    sees), shared by the ranks that run inside that task. Ranks that srun starts are tasks of their own (a bound
    one already sees only its share); ranks started inside one task (torchrun or spawn's LOCAL_WORLD_SIZE,
    Lightning, submitit's local executor) share it. None where the user set OMP_NUM_THREADS, or where the share
    is every visible core (torch's default)."""
    omp = environ.get("OMP_NUM_THREADS")
    if omp and environ.get(TASK_CPUS) != omp:
        return None
    given = int(environ.get("SLURM_CPUS_PER_TASK") or 0)
    budget = min(cores, given) if given else cores
    own_task = given and int(environ.get("SLURM_NTASKS") or 1) > 1 and not environ.get("LOCAL_WORLD_SIZE")
    n = max(1, budget // (1 if own_task else max(1, ranks_on_node)))
    return n if n < cores else None


def ranks_on_node(environ: Mapping[str, str]) -> int:
    """As torchrun/spawn (LOCAL_WORLD_SIZE), srun (SLURM_NTASKS_PER_NODE) or submitit's local executor say."""
    n = (environ.get("LOCAL_WORLD_SIZE") or environ.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]
         or environ.get("SUBMITIT_LOCAL_NTASKS") or "1")
    return max(1, int(n))
