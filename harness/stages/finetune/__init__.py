"""finetune stage: pick the engine and the rank layout, then train.

Engines: "nemo" (NeMo 2 llm.api.train, inside the NeMo container; `harness.stages.finetune.nemo`) and "mcore"
(`harness.stages.finetune.mcore`). `auto` = nemo where `nemo.collections.llm` imports and CUDA is present, else mcore.

Ranks: the job runs `ranks_per_node(finetune) x nodes` ranks, one per GPU, or one gloo rank per TP shard on
CPU. Under Slurm the launcher starts them (`srun`, ntasks_per_node = ranks_per_node) and each calls this stage;
under torchrun likewise. Started as one plain process (local executor, tests) with more ranks needed on one node,
the stage spawns them itself and forwards SIGUSR2/SIGTERM to them.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging

import torch

from harness.core import spec as spec_mod
from harness.core.paths import RunPaths
from harness.lib.heap import quiet_imports
from harness.stages import ranks

log = logging.getLogger(__name__)


def choose_engine(spec: spec_mod.RunSpec) -> str:
    engine = spec.finetune.engine
    if engine != "auto":
        return engine
    return "nemo" if torch.cuda.is_available() and _nemo_llm_imports() else "mcore"


def _nemo_llm_imports() -> bool:
    if importlib.util.find_spec("nemo") is None:
        return False
    try:
        with quiet_imports():  # NeMo 2 and Lightning: ~800,000 objects for the process's life
            importlib.import_module("nemo.collections.llm")
    except Exception:  # a broken or speech-only NeMo install: fall back to mcore
        return False
    return True


def run(spec: spec_mod.RunSpec, task: int, paths: RunPaths) -> None:
    engine = choose_engine(spec)
    log.info("finetune engine: %s (finetune.engine = %r)", engine, spec.finetune.engine)
    if engine == "nemo":
        with quiet_imports():
            from harness.stages.finetune import nemo

        nemo.run(spec, paths)  # without NeMo 2 it stops with one line naming finetune.engine
        return
    f = spec.finetune
    ranks.run(spec, task, paths, want=spec_mod.ranks_per_node(f) * f.nodes, nodes=f.nodes, target=run_rank,
              what="finetune (finetune.nodes x ranks per node)")


def run_rank(spec: spec_mod.RunSpec, task: int, paths: RunPaths) -> None:
    with quiet_imports():
        from harness.cosmos import parallel
        from harness.stages.dataset import open_dataset
        from harness.stages.finetune import mcore as train

    dataset = open_dataset(paths)
    try:
        train.train(spec, paths, dataset, where=str(paths.dataset_prefix))
    finally:
        parallel.shutdown()
