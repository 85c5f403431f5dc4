"""Rank layout of the multi-rank stages (finetune, tensor-parallel infer): one home for "which processes run".

A stage that needs `want` ranks runs its per-rank function directly when a launcher already started them
(`srun` with ntasks_per_node, torchrun), or, started as one plain process on one node (submitit's local
executor, a test, a user's shell), spawns them itself: a fresh interpreter each, as torchrun would, with
SIGUSR2/SIGTERM forwarded so a preemption still checkpoints on every rank.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from harness.core import spec as spec_mod
from harness.core.errors import HarnessError
from harness.core.paths import RunPaths
from harness.core.rundir import open_run

log = logging.getLogger(__name__)

RankFn = Callable[[spec_mod.RunSpec, int, RunPaths], None]
"""A per-rank function, called as fn(spec, task, paths) on every rank. A module-level function: a spawned rank
receives its module and name and imports it."""


def run(spec: spec_mod.RunSpec, task: int, paths: RunPaths, *, want: int, nodes: int, target: RankFn,
        what: str) -> None:
    """Run `target` on `want` ranks over `nodes` nodes."""
    from harness.cosmos.parallel import rank_env

    env = rank_env()
    node = os.environ.get("SLURMD_NODENAME") or os.uname().nodename
    log.info("%s rank %d of %d (local %d) on node %s, rendezvous %s:%d (%s)", what.split()[0], env.rank, env.world,
             env.local_rank, node, env.master_addr, env.master_port, env.source)
    if env.world == want:
        target(spec, task, paths)
    elif env.world == 1 and nodes == 1:
        spawn(spec, task, paths, want, target)
    else:
        raise HarnessError(f"{spec.source}: {what} needs {want} ranks, but {env.world} were started ({env.source})")


def _bounded(trace: str, line_chars: int = 2_000, total: int = 16_000) -> str:
    """A failed rank's traceback, small enough for the pipe it travels through: the stage reads it only after the
    rank exited, and a put larger than the pipe's buffer would never return. Its last lines (the last is the
    task's reason), each line's head."""
    lines = [ln if len(ln) <= line_chars else ln[:line_chars] + " ..." for ln in trace.splitlines()]
    return "\n".join(lines)[-total:]


def _child(local_rank: int, where: str, spec_dict: dict[str, Any], source: str, task: int, root: str, world: int,
           port: int, parent: int, errors: Any) -> None:
    """A spawned rank. Its target arrives as "module:name", not pickled: unpickling a function imports its module
    (and torch with it) before any code of ours runs, with the garbage collector walking every object the
    import makes; named, the import happens here, inside `quiet_imports`."""
    from harness.lib.heap import quiet_imports

    with quiet_imports():
        from harness.cosmos.lifetime import die_with_parent

        module, name = where.split(":")
        target: RankFn = getattr(importlib.import_module(module), name)
    die_with_parent(parent)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{local_rank} %(levelname)s %(name)s: %(message)s")
    os.environ.update(RANK=str(local_rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local_rank),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        target(spec_mod.from_dict(spec_dict, source), task, open_run(Path(root)))
    except Exception:
        errors.put(_bounded(traceback.format_exc()))
        sys.exit(1)


class RankFailed(RuntimeError):
    """A spawned rank ended with an error (its traceback is the message, so a task's reason is its last line) or
    was killed."""


def spawn(spec: spec_mod.RunSpec, task: int, paths: RunPaths, world: int, target: RankFn) -> None:
    """Start `world` local ranks and wait for them; a rank's Preempted re-raises here (after submitit's requeue
    handler ran, when a SIGUSR2 from Slurm started it)."""
    import multiprocessing

    from harness.cosmos.parallel import _free_port
    from harness.cosmos.signals import SIGNALS, Preempted

    ctx = multiprocessing.get_context("spawn")
    where = f"{target.__module__}:{target.__qualname__}"
    args = (where, spec_mod.to_dict(spec), spec.source, task, str(paths.root), world, _free_port(), os.getpid())
    errors = [ctx.SimpleQueue() for _ in range(world)]
    procs = [ctx.Process(target=_child, args=(r, *args, errors[r]), name=f"rank{r}") for r in range(world)]
    for p in procs:
        p.start()
    caught: list[int] = []
    previous = {s: signal.getsignal(s) for s in SIGNALS}

    def forward(signum: int, frame: Any) -> None:
        caught.append(signum)
        for p in procs:
            if p.pid and p.is_alive():
                os.kill(p.pid, signum)

    for s in SIGNALS:
        signal.signal(s, forward)
    try:
        _join(procs, errors)
    except RankFailed as e:
        if caught and "Preempted" in str(e):
            prev = previous.get(signal.Signals(caught[0]))
            for s, h in previous.items():
                signal.signal(s, h)
            if caught[0] == signal.SIGUSR2 and callable(prev) and "submitit" in getattr(prev, "__module__", ""):
                prev(caught[0], None)
            raise Preempted(str(e).strip().splitlines()[-1]) from None
        raise
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _stop(procs)


def _join(procs: list[Any], errors: list[Any]) -> None:
    """Wait for every rank; the first to fail ends the others (its peers would wait in a collective forever)."""
    from multiprocessing.connection import wait

    left = {p.sentinel: (r, p) for r, p in enumerate(procs)}
    while left:
        for sentinel in wait(list(left)):
            r, p = left.pop(sentinel)
            p.join()
            if p.exitcode == 0:
                continue
            how = f"killed by signal {-p.exitcode}" if p.exitcode < 0 else f"exit code {p.exitcode}"
            said = errors[r].get() if not errors[r].empty() else how
            raise RankFailed(f"rank {r} of {len(procs)} (pid {p.pid}) failed:\n{said}")


def _stop(procs: list[Any], grace_s: float = 30.0) -> None:
    """SIGTERM to ranks still running, SIGKILL to those alive after `grace_s` (a rank in a C++ call may never
    return to the interpreter to act on a signal)."""
    import time

    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.terminate()
    deadline = time.monotonic() + grace_s
    for p in alive:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()
