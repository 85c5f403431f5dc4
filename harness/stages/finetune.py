"""finetune stage: pick the engine and the rank layout, then train.

Engines: "nemo" (NeMo 2 llm.api.train, inside the NeMo container; `harness.cosmos.nemo_engine`) and "mcore"
(`harness.cosmos.train`). `auto` = nemo where `nemo.collections.llm` imports and CUDA is present, else mcore.

Ranks: the job runs `ranks_per_node(finetune) x nodes` ranks, one per GPU, or one gloo rank per TP shard on
CPU. Under Slurm the launcher starts them (`srun`, ntasks_per_node = ranks_per_node) and each calls this stage;
under torchrun likewise. Started as one plain process (local executor, tests) with more ranks needed on one node,
the stage spawns them itself and forwards SIGUSR2/SIGTERM to them.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import signal
from typing import Any

import torch

from harness import spec as spec_mod
from harness.errors import HarnessError
from harness.rundir import RunPaths

log = logging.getLogger(__name__)


def choose_engine(spec: spec_mod.RunSpec) -> str:
    engine = spec.finetune.engine
    if engine != "auto":
        return engine
    if torch.cuda.is_available() and _nemo_llm_imports() and importlib.util.find_spec("harness.cosmos.nemo_engine"):
        return "nemo"
    return "mcore"


def _nemo_llm_imports() -> bool:
    if importlib.util.find_spec("nemo") is None:
        return False
    try:
        importlib.import_module("nemo.collections.llm")
    except Exception:  # a broken or speech-only NeMo install: fall back to mcore
        return False
    return True


def run(spec: spec_mod.RunSpec, task: int, paths: RunPaths) -> None:
    engine = choose_engine(spec)
    log.info("finetune engine: %s (finetune.engine = %r)", engine, spec.finetune.engine)
    if engine == "nemo":
        try:
            nemo_engine = importlib.import_module("harness.cosmos.nemo_engine")
        except ModuleNotFoundError:
            raise HarnessError(f"{spec.source}: finetune.engine = 'nemo' is not available in this harness "
                               f"version; use 'mcore' or 'auto'") from None
        nemo_engine.run(spec, paths)
        return
    from harness.cosmos.parallel import rank_env

    f = spec.finetune
    want = spec_mod.ranks_per_node(f) * f.nodes
    env = rank_env()
    node = os.environ.get("SLURMD_NODENAME") or os.uname().nodename
    log.info("finetune rank %d of %d (local %d) on node %s, rendezvous %s:%d (%s)", env.rank, env.world,
             env.local_rank, node, env.master_addr, env.master_port, env.source)
    if env.world == want:
        run_rank(spec, paths)
    elif env.world == 1 and f.nodes == 1:
        spawn_ranks(spec, paths, want)
    else:
        raise HarnessError(f"{spec.source}: finetune needs {want} ranks (finetune.nodes x ranks per node), but "
                           f"{env.world} were started ({env.source})")


def run_rank(spec: spec_mod.RunSpec, paths: RunPaths) -> None:
    from harness.cosmos import parallel, train
    from harness.dataset import open_dataset

    dataset = open_dataset(paths)
    try:
        train.train(spec, paths, dataset, where=str(paths.dataset_prefix))
    finally:
        parallel.shutdown()


def _child(local_rank: int, spec_dict: dict[str, Any], source: str, root: str, world: int, port: int) -> None:
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{local_rank} %(levelname)s %(name)s: %(message)s")
    os.environ.update(RANK=str(local_rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local_rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from pathlib import Path

    run_rank(spec_mod.from_dict(spec_dict, source), RunPaths(Path(root)))


def spawn_ranks(spec: spec_mod.RunSpec, paths: RunPaths, world: int) -> None:
    """Start `world` local ranks (spawn: a fresh interpreter each, as torchrun would) and wait for them."""
    import torch.multiprocessing as mp

    from harness.cosmos.parallel import _free_port
    from harness.cosmos.signals import SIGNALS, Preempted

    ctx = mp.start_processes(_child, args=(spec_mod.to_dict(spec), spec.source, str(paths.root), world, _free_port()),
                             nprocs=world, join=False, start_method="spawn")
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
            prev = previous.get(caught[0])
            for s, h in previous.items():
                signal.signal(s, h)
            if caught[0] == signal.SIGUSR2 and callable(prev) and "submitit" in getattr(prev, "__module__", ""):
                prev(caught[0], None)
            raise Preempted(str(e).strip().splitlines()[-1]) from None
        raise
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
