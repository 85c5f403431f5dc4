"""Rank layout of the multi-rank stages (finetune, tensor-parallel infer): one home for "which processes run".

A stage that needs `want` ranks runs its per-rank function directly when a launcher already started them
(`srun` with ntasks_per_node, torchrun), or, started as one plain process on one node (submitit's local
executor, a test, a user's shell), spawns them itself: a fresh interpreter each, as torchrun would, with
SIGUSR2/SIGTERM forwarded so a preemption still checkpoints on every rank.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any, Callable

from harness.core import spec as spec_mod
from harness.core.errors import HarnessError
from harness.core.paths import RunPaths
from harness.core.rundir import open_run

log = logging.getLogger(__name__)

RankFn = Callable[[spec_mod.RunSpec, int, RunPaths], None]
"""A per-rank function, called as fn(spec, task, paths) on every rank. A module-level function: a spawned rank
receives it pickled (by its module and name) and imports it, as any reader can follow it."""


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


def _child(local_rank: int, target: RankFn, spec_dict: dict[str, Any], source: str, task: int, root: str, world: int,
           port: int, parent: int) -> None:
    from harness.lib.heap import quiet_imports

    with quiet_imports():  # torch and the target's module, unpickled before this ran: frozen for the exit
        from harness.cosmos.lifetime import die_with_parent
    die_with_parent(parent)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{local_rank} %(levelname)s %(name)s: %(message)s")
    os.environ.update(RANK=str(local_rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local_rank),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    target(spec_mod.from_dict(spec_dict, source), task, open_run(Path(root)))


def spawn(spec: spec_mod.RunSpec, task: int, paths: RunPaths, world: int, target: RankFn) -> None:
    """Start `world` local ranks and wait for them; a rank's Preempted re-raises here (after submitit's requeue
    handler ran, when a SIGUSR2 from Slurm started it)."""
    import torch.multiprocessing as mp

    from harness.cosmos.parallel import _free_port
    from harness.cosmos.signals import SIGNALS, Preempted

    args = (target, spec_mod.to_dict(spec), spec.source, task, str(paths.root), world, _free_port(), os.getpid())
    ctx = mp.start_processes(_child, args=args, nprocs=world, join=False, start_method="spawn")
    caught: list[int] = []
    previous = {s: signal.getsignal(s) for s in SIGNALS}

    def forward(signum: int, frame: Any) -> None:
        caught.append(signum)
        for p in ctx.processes:
            if p.pid and p.is_alive():
                os.kill(p.pid, signum)

    for s in SIGNALS:
        signal.signal(s, forward)
    try:
        while not ctx.join():
            pass
    except mp.ProcessRaisedException as e:
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
