"""Pure planning: a spec plus a few facts about the inputs and the cluster become the stage DAG.

No file access and no subprocess here: the launcher gathers `Facts` (input count, MaxArraySize, nodes) and
this module decides array sizes, chunks, dependencies and resources. Every derived count (shards,
checkpoint steps, ranks) is computed here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from harness import spec as spec_mod
from harness import tokens
from harness.spec import FinetuneSection, Resources, RunSpec

DependencyKind = Literal["afterok", "aftercorr", "afterany"]

STAGES: tuple[str, ...] = ("stage-assets", "tokenize", "merge", "finetune", "infer", "evaluate", "report")
_SECTION = {"stage-assets": "assets", "tokenize": "tokenize", "merge": "merge", "finetune": "finetune",
            "infer": "infer", "evaluate": "evaluate", "report": "report"}
_EDGES: dict[str, tuple[str, DependencyKind] | None] = {
    "stage-assets": None,
    "tokenize": ("stage-assets", "afterok"),
    "merge": ("tokenize", "afterok"),
    "finetune": ("merge", "afterok"),
    "infer": ("finetune", "afterok"),
    "evaluate": ("infer", "aftercorr"),
    "report": ("evaluate", "afterany"),
}


@dataclass(frozen=True)
class Facts:
    """What the launcher learned by looking: the only inputs to planning besides the spec."""

    num_inputs: int
    max_array_size: int = 1001
    nodes_available: int = 1


@dataclass(frozen=True)
class Dependency:
    stage: str
    kind: DependencyKind


@dataclass(frozen=True)
class SlurmResources:
    partition: str
    account: str
    qos: str
    time_min: int
    nodes: int
    ntasks_per_node: int
    gpus_per_node: int
    cpus_per_task: int
    mem_gb: int
    constraint: str
    array_throttle: int
    signal_delay_s: int = 90


@dataclass(frozen=True)
class StagePlan:
    name: str
    tasks: int
    """Array size; a single-task stage has 1 and is submitted without --array."""
    array: bool
    depends: tuple[Dependency, ...]
    resources: SlurmResources
    container: bool
    chunks: tuple[tuple[int, int], ...]
    """[start, stop) task ranges, one sbatch each, so no array exceeds the cluster's MaxArraySize."""
    requeue: bool = False


@dataclass(frozen=True)
class Plan:
    spec: RunSpec
    """The spec with derived values resolved (tokenize.shards): what every task reads back."""
    stages: tuple[StagePlan, ...]
    token_math: tokens.TokenMath
    checkpoint_steps: tuple[int, ...]
    num_inputs: int
    data_parallel: int
    grad_accumulation: int
    warnings: tuple[str, ...]

    def stage(self, name: str) -> StagePlan:
        return next(s for s in self.stages if s.name == name)

    @property
    def sbatch_calls(self) -> int:
        return sum(len(s.chunks) for s in self.stages)


def checkpoint_steps(f: FinetuneSection) -> tuple[int, ...]:
    """Steps at which a checkpoint is written: every save_every steps, and always at max_steps."""
    steps = list(range(f.save_every, f.max_steps + 1, f.save_every))
    if not steps or steps[-1] != f.max_steps:
        steps.append(f.max_steps)
    return tuple(steps)


def resolve_shards(t: spec_mod.TokenizeSection, num_inputs: int, nodes_available: int) -> int:
    """Explicit shards win (capped at one input each); otherwise enough shards for videos_per_shard,
    and at least one per available node so every node gets work."""
    n = max(1, num_inputs)
    if t.shards:
        return min(t.shards, n)
    want = max(math.ceil(n / t.videos_per_shard), t.nodes_available or nodes_available)
    return max(1, min(want, n))


def build(spec: RunSpec, facts: Facts) -> Plan:
    shards = resolve_shards(spec.tokenize, facts.num_inputs, facts.nodes_available)
    resolved = dataclasses.replace(spec, tokenize=dataclasses.replace(spec.tokenize, shards=shards))
    steps = checkpoint_steps(spec.finetune)
    sizes = {"tokenize": shards, "infer": len(steps), "evaluate": len(steps)}
    stages = tuple(_stage(resolved, name, sizes.get(name, 1), facts) for name in STAGES)
    f = spec.finetune
    dp = spec_mod.data_parallel(f)
    tm = spec.token_math
    return Plan(spec=resolved, stages=stages, token_math=tm, checkpoint_steps=steps, num_inputs=facts.num_inputs,
                data_parallel=dp, grad_accumulation=f.global_batch_size // (f.micro_batch_size * dp),
                warnings=tuple(tokens.warnings(tm)))


def _stage(spec: RunSpec, name: str, tasks: int, facts: Facts) -> StagePlan:
    section: Resources = getattr(spec, _SECTION[name])
    edge = _EDGES[name]
    array = name in ("tokenize", "infer", "evaluate")
    finetune = name == "finetune"
    ntasks = spec_mod.ranks_per_node(spec.finetune) if finetune else 1
    res = SlurmResources(
        partition=section.partition, account=section.account, qos=section.qos, time_min=section.time_min,
        nodes=section.nodes, ntasks_per_node=ntasks, gpus_per_node=section.gpus_per_node,
        cpus_per_task=section.cpus_per_task, mem_gb=section.mem_gb, constraint=section.constraint,
        array_throttle=section.array_throttle,
        signal_delay_s=spec.finetune.signal_delay_s if finetune else 90)
    size = max(1, facts.max_array_size)
    chunks = tuple((a, min(a + size, tasks)) for a in range(0, tasks, size)) if array else ((0, 1),)
    return StagePlan(name=name, tasks=tasks, array=array,
                     depends=(Dependency(*edge),) if edge else (),
                     resources=res, container=bool(spec.container.image) and name in spec.container.stages,
                     chunks=chunks, requeue=finetune)


def to_json(plan: Plan) -> dict[str, Any]:
    return {
        "token_math": {"grid": str(plan.token_math.grid), "video_tokens": plan.token_math.video_tokens,
                       "sample_length": plan.token_math.sample_length, "model_max": plan.token_math.model_max,
                       "describe": plan.token_math.describe()},
        "checkpoint_steps": list(plan.checkpoint_steps),
        "num_inputs": plan.num_inputs,
        "shards": plan.spec.tokenize.shards,
        "data_parallel": plan.data_parallel,
        "grad_accumulation": plan.grad_accumulation,
        "warnings": list(plan.warnings),
        "stages": [dataclasses.asdict(s) for s in plan.stages],
    }
