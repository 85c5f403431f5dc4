"""The stage registry: one frozen row per stage, the one place a stage's facts live.

The plan (DAG edges, array shapes, resources), the worker entry (which module runs a task, which GPU key it
checks), the sbatch renderer (which stage may download and so keeps HF_TOKEN), doctor (which spec key a resource
comes from), the container default and the layer test all read these rows; none keeps a table of its own.

A row names its worker by module path (a string), not by function: core sits below every stage and may not
import one. The launch layer's worker (`harness.launch.worker`) imports the module named here; the layer test
checks that each named module exists, has `run`, and is a layer the worker may import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SIGNAL_DELAY_S = 90
"""Seconds of SIGUSR2 warning before the time limit for the stages without a spec key for it (finetune's is
finetune.signal_delay_s): what submitit checkpoints and requeues on."""
SIGNAL_EARLY_S = 60
"""Slurm sends the warning signal up to this much earlier than asked (`--signal`: "may be sent up to 60 seconds
earlier than specified"): a time limit must leave the task more than delay + this before the signal."""

Shape = Literal["one", "shards", "checkpoints", "ranks"]
"""Slurm shape: one task; an array over tokenize shards; an array over checkpoints x input shards; one task of
nodes x ranks (requeued on preemption, with finetune.signal_delay_s warning)."""
DependencyKind = Literal["afterok", "aftercorr", "afterany"]


@dataclass(frozen=True)
class StageDef:
    name: str
    section: str
    """The spec table holding the stage's Slurm resources ("assets" for stage-assets)."""
    shape: Shape
    after: str | None
    """The stage this one waits for (None: the first stage)."""
    dependency: DependencyKind | None
    container: bool
    """In `container.stages` by default (runs inside the image when one is set)."""
    module: str
    """The worker module: `run(spec, task, paths)` runs one task."""
    downloads: bool = False
    """Reaches the network (HF hub): keeps HF_TOKEN and runs without HF_HUB_OFFLINE; every other stage is offline."""

    @property
    def array(self) -> bool:
        return self.shape in ("shards", "checkpoints")

    @property
    def gpu_key(self) -> str:
        """The spec key of the stage's GPUs per node."""
        return self.key("gpus_per_node")

    def key(self, resource: str) -> str:
        """The spec key of one of the stage's Slurm resources (`time_min` -> `finetune.time_min`)."""
        return f"{self.section}.{resource}"


IMPORT_IMAGE = "import-image"
"""Planned only where a registry image is imported (`harness.core.image`); runs on the host, never in a container,
with the assets table's Slurm resources (a CPU task that downloads, as stage-assets); every container stage waits
for it (`harness.core.plan`)."""

STAGES: tuple[StageDef, ...] = (
    StageDef(IMPORT_IMAGE, "assets", "one", None, None, False, "harness.stages.image"),
    StageDef("stage-assets", "assets", "one", None, None, False, "harness.stages.assets", downloads=True),
    StageDef("tokenize", "tokenize", "shards", "stage-assets", "afterok", False, "harness.stages.tokenize"),
    StageDef("merge", "merge", "one", "tokenize", "afterok", False, "harness.stages.merge"),
    StageDef("finetune", "finetune", "ranks", "merge", "afterok", True, "harness.stages.finetune"),
    StageDef("infer", "infer", "checkpoints", "finetune", "afterok", True, "harness.stages.infer"),
    StageDef("evaluate", "evaluate", "checkpoints", "infer", "aftercorr", False, "harness.stages.evaluate"),
    StageDef("report", "report", "one", "evaluate", "afterany", False, "harness.report.stage"),
)
"""In plan order (parents before children: the backends submit in this order)."""

NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)
IN_CONTAINER: tuple[str, ...] = tuple(n for n in NAMES if n != IMPORT_IMAGE)
"""What `container.stages` may name: the import runs enroot on the host."""
BY_NAME: dict[str, StageDef] = {s.name: s for s in STAGES}


def stage(name: str) -> StageDef:
    return BY_NAME[name]
