"""Start-up CPU of the processes the harness starts: each tokenize, merge, finetune and infer task and each
spawned rank imports megatron-core (and the finetune stage's NeMo engine, NeMo). Fresh processes, A and B
interleaved in one run, CPU seconds (user + system, which load on the machine inflates far less than wall time).

A = `import megatron.core` (or NeMo's LLM collection and `nemo.lightning`, what the NeMo engine imports) with
nothing else: megatron's and NeMo's import-time `torch.compile` decorations load TorchDynamo and Inductor;
B = the same after `import harness` (its `harness.cosmos.lazyjit` defers the compiles to their first call, and
the wandb and multistorageclient packages megatron imports eagerly to their first use).

A stage's import as its task imports it (`*_quiet`: inside `harness.lib.heap.quiet_imports`, no garbage collection
during the import, the imported heap frozen after it, so the interpreter's shutdown walks it no more) against the
same import plain.

A trainer's first checkpoint save (a tiny model, megatron-core's torch_dist writer, the process's CPU with its
children's) through megatron's default results queue, which a spawned manager process serves, against the
in-process queue the harness hands it (`harness.cosmos.checkpoint.in_process_results_queue`).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness.bench import at_least
from harness.core.atomic import atomic_write_json

QUIET = "from harness.lib.heap import quiet_imports\nwith quiet_imports():\n    "
CASES = {
    "megatron_plain": "import megatron.core",
    "megatron_via_harness": "import harness, megatron.core",
    "tokenize_stage": "import harness.stages.tokenize",
    "finetune_mcore_stage": "import harness.stages.finetune.mcore",
    "finetune_mcore_stage_quiet": QUIET + "import harness.stages.finetune.mcore",
}
SAVE = ("import tempfile\nfrom megatron.core import dist_checkpointing\nfrom harness.core.models import PRESETS\n"
        "from harness.core.tokens import Grid\nfrom harness.cosmos import checkpoint, parallel\n"
        "from harness.cosmos.model import build_model\nparallel.init(1)\n"
        "model = build_model(PRESETS['tiny'], Grid(2, 2, 2), tp=1, precision='fp32')\n{queue}"
        "with tempfile.TemporaryDirectory() as out:\n"
        "    dist_checkpointing.save({{'state_dict': checkpoint.model_sharded_state_dict(model)}}, out)\n")
CASES["first_save_served_queue"] = SAVE.format(queue="")
CASES["first_save_in_process_queue"] = SAVE.format(queue="checkpoint.in_process_results_queue()\n")
NEMO = "from nemo import lightning; from nemo.collections import llm"
NEMO_CASES = {  # where NeMo 2 is installed
    "nemo_plain": NEMO,
    "nemo_via_harness": "import harness; " + NEMO,
    "finetune_nemo_stage": "import harness.stages.finetune.nemo",
    "finetune_nemo_stage_quiet": QUIET + "import harness.stages.finetune.nemo",
}
RATIOS = {"megatron_via_harness_over_plain": ("megatron_via_harness", "megatron_plain"),
          "nemo_via_harness_over_plain": ("nemo_via_harness", "nemo_plain"),
          "mcore_stage_quiet_over_plain": ("finetune_mcore_stage_quiet", "finetune_mcore_stage"),
          "nemo_stage_quiet_over_plain": ("finetune_nemo_stage_quiet", "finetune_nemo_stage"),
          "first_save_in_process_over_served": ("first_save_in_process_queue", "first_save_served_queue")}


def cpu_of(code: str) -> float:
    """CPU seconds of one fresh `python -c code`, spawn to exit."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cases() -> dict[str, str]:
    """The cases this machine can run: the NeMo ones only where `nemo` is installed."""
    return {**CASES, **(NEMO_CASES if importlib.util.find_spec("nemo") is not None else {})}


def run(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="harness bench imports")
    ap.add_argument("--repeats", type=at_least(1), default=5)
    ap.add_argument("--out", default="results/bench")
    args = ap.parse_args(argv)
    todo = cases()
    cpu: dict[str, list[float]] = {k: [] for k in todo}
    cpu_of("import torch")  # page cache and .pyc warm for every case alike; not counted
    for _ in range(args.repeats):
        for name, code in todo.items():
            cpu[name].append(cpu_of(code))
    med = {k: statistics.median(v) for k, v in cpu.items()}
    out = {"bench": "imports", "repeats": args.repeats, "cpus": os.cpu_count(),
           "load_average_1min": os.getloadavg()[0], "median_cpu_s": med, "all_cpu_s": cpu,
           **{r: med[b] / med[a] for r, (b, a) in RATIOS.items() if a in med},
           "what": __doc__.split("\n\n")[1].replace("\n", " ") if __doc__ else ""}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(args.out) / "imports.json", out)
    return out
