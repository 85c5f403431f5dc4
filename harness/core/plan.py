"""Pure planning: a spec plus a few facts about the inputs and the cluster become the stage DAG.

No file access and no subprocess here: the launcher gathers `Facts` (input count, MaxArraySize, nodes) and
this module decides array sizes, chunks, dependencies and resources. Every derived count (shards, ranks, the
split sizes, infer's input shards) is computed here and nowhere else; the training numbers (checkpoint steps,
DP, accumulation) come from `harness.core.trainplan`.

Infer and evaluate are arrays over checkpoints x input shards; `infer_task` is the one mapping of an array
index to its (checkpoint, shard) and its slice of the ordered input list, used by both stages, the report
and resume.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from harness.core import image as image_mod
from harness.core import spec as spec_mod
from harness.core import tokens, trainplan
from harness.core.errors import HarnessError, Problem
from harness.core.image import CacheState, ImageCache
from harness.core.spec import InferSection, Resources, RunSpec
from harness.core.stages import IMPORT_IMAGE, SIGNAL_DELAY_S, STAGES, DependencyKind, StageDef
from harness.core.trainplan import TrainingPlan
from harness.core.trainplan import (
    checkpoint_steps as checkpoint_steps,  # re-exported: render and the bench read it here
)


@dataclass(frozen=True)
class Facts:
    """What the launcher learned by looking: the only inputs to planning besides the spec."""

    num_inputs: int
    max_array_size: int = 1001
    nodes_available: int = 1
    image: CacheState = "off"
    """The registry image's cache when planned (`harness.core.image.CacheState`)."""


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
    signal_delay_s: int = SIGNAL_DELAY_S
    sbatch_extra: tuple[str, ...] = ()


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
    """sbatch --requeue: finetune's checkpoint-then-requeue, and any stage with `retries` (a NODE_FAIL task is
    requeued by Slurm itself then, whatever the cluster's JobRequeue default)."""


@dataclass(frozen=True)
class Plan:
    spec: RunSpec
    """The spec with derived values resolved (tokenize.shards): what every task reads back."""
    stages: tuple[StagePlan, ...]
    token_math: tokens.TokenMath
    training: TrainingPlan
    """Last step, checkpoint steps, DP, gradient accumulation, precision: `harness.core.trainplan`, the one source."""
    num_inputs: int
    warnings: tuple[str, ...]
    image: ImageCache | None = None
    """The imported registry image container stages run from (import-image planned unless it is `reused`);
    None: they name `container.image` as written."""

    def stage(self, name: str) -> StagePlan:
        return next(s for s in self.stages if s.name == name)

    @property
    def checkpoint_steps(self) -> tuple[int, ...]:
        return self.training.checkpoint_steps

    @property
    def eval_steps(self) -> tuple[int, ...]:
        """What infer and evaluate run on: the checkpoint steps, after step 0 where the baseline is on."""
        return self.training.eval_steps

    @property
    def data_parallel(self) -> int:
        return self.training.data_parallel

    @property
    def grad_accumulation(self) -> int:
        return self.training.grad_accumulation

    @property
    def container_image(self) -> str:
        """What a container stage's --container-image names: the imported .sqsh, or the spec's image."""
        return str(self.image.sqsh) if self.image else self.spec.container.image

    @property
    def sbatch_calls(self) -> int:
        return sum(len(s.chunks) for s in self.stages)


def resolve_shards(t: spec_mod.TokenizeSection, num_inputs: int, nodes_available: int) -> int:
    """Explicit shards win (capped at one input each); otherwise enough shards for videos_per_shard,
    and at least one per available node so every node gets work."""
    n = max(1, num_inputs)
    if t.shards:
        return min(t.shards, n)
    want = max(math.ceil(n / t.videos_per_shard), t.nodes_available or nodes_available)
    return max(1, min(want, n))


def split_counts(n: int, weights: tuple[int, ...]) -> tuple[int, int, int]:
    """(train, val, test) sizes of n whole videos: val and test get their floor share, and a positive weight
    at least one video while more than one remains unassigned; train takes the remainder."""
    total = sum(weights)
    counts = [0, 0, 0]
    for k in (1, 2):
        counts[k] = int(n * weights[k] // total)
        if weights[k] > 0 and counts[k] == 0 and n - sum(counts) > 1:
            counts[k] = 1
    counts[0] = n - counts[1] - counts[2]
    return counts[0], counts[1], counts[2]


def resolve_max_inputs(spec: RunSpec, num_inputs: int) -> int:
    """infer.max_inputs, capped where the input list's size is known at plan time so that no shard is planned
    empty. With the test split as the list (infer.inputs = ''), the test share of the discovered inputs is an
    upper bound: merge splits the videos that tokenized, never more than were discovered, and the test size
    does not shrink as n grows. infer.inputs (a directory or jsonl) is not listed at plan time (an rglob over
    a large tree is what made planning slow), so its max_inputs stands: shards past its end run empty."""
    i = spec.infer
    if i.inputs:
        return i.max_inputs
    return max(1, min(i.max_inputs, split_counts(max(0, num_inputs), spec.data.split)[2]))


def infer_shards(i: InferSection) -> int:
    """Input shards per checkpoint: ceil(max_inputs / inputs_per_task), 1 when inputs_per_task is 0."""
    return math.ceil(i.max_inputs / i.inputs_per_task) if i.inputs_per_task else 1


@dataclass(frozen=True)
class InferTask:
    """One infer/evaluate array task: task = checkpoint * shards + shard (checkpoint-major)."""

    checkpoint: int
    """Index into the evaluation steps (`trainplan.eval_steps`: step 0 first where the baseline is on)."""
    step: int
    shard: int
    shards: int
    start: int
    stop: int
    """[start, stop) of the ordered input list (test split or infer.inputs, at most max_inputs)."""

    @property
    def key(self) -> int | None:
        """Shard key of the task's files; None with one shard, which keeps the one-task-per-checkpoint files."""
        return None if self.shards == 1 else self.shard


def infer_task(spec: RunSpec, task: int) -> InferTask:
    """The (checkpoint, shard) of an infer/evaluate array index and its input slice; the one such mapping."""
    steps = trainplan.eval_steps(spec)
    shards = infer_shards(spec.infer)
    if not 0 <= task < len(steps) * shards:
        raise HarnessError(f"infer/evaluate task {task}: out of range; {len(steps)} checkpoints {list(steps)} x "
                           f"{shards} input shards = {len(steps) * shards} tasks")
    c, s = divmod(task, shards)
    per = spec.infer.inputs_per_task or spec.infer.max_inputs
    return InferTask(c, steps[c], s, shards, min(s * per, spec.infer.max_inputs),
                     min((s + 1) * per, spec.infer.max_inputs))


def infer_task_index(spec: RunSpec, checkpoint: int, shard: int) -> int:
    return checkpoint * infer_shards(spec.infer) + shard


def build(spec: RunSpec, facts: Facts) -> Plan:
    shards = resolve_shards(spec.tokenize, facts.num_inputs, facts.nodes_available)
    resolved = dataclasses.replace(
        spec, tokenize=dataclasses.replace(spec.tokenize, shards=shards),
        infer=dataclasses.replace(spec.infer, max_inputs=resolve_max_inputs(spec, facts.num_inputs)))
    training = trainplan.planned(resolved)
    fanout = len(training.eval_steps) * infer_shards(resolved.infer)
    sizes = {"one": 1, "ranks": 1, "shards": shards, "checkpoints": fanout}
    image = image_mod.planned(resolved, facts.image)
    importing = image is not None and not image.reused
    stages = tuple(_stage(resolved, row, sizes[row.shape], facts, importing) for row in STAGES
                   if row.name != IMPORT_IMAGE or importing)
    tm = spec.token_math
    return Plan(spec=resolved, stages=stages, token_math=tm, training=training, num_inputs=facts.num_inputs,
                warnings=tuple(tokens.warnings(tm)) + _batch_warnings(spec, facts.num_inputs), image=image)


def _batch_warnings(spec: RunSpec, num_inputs: int) -> tuple[str, ...]:
    """A step that takes more videos than the training split holds repeats videos within the step."""
    train = split_counts(num_inputs, spec.data.split)[0] if num_inputs > 0 else 0
    gbs = spec.finetune.global_batch_size
    return (f"finetune.global_batch_size = {gbs} is more than the {train} training video(s) of {num_inputs} "
            f"input(s): every step repeats videos",) if 0 < train < gbs else ()


def _stage(spec: RunSpec, row: StageDef, tasks: int, facts: Facts, importing: bool) -> StagePlan:
    section: Resources = getattr(spec, row.section)
    ranks = row.shape == "ranks"
    ntasks = {"finetune": spec_mod.ranks_per_node(spec.finetune), "infer": spec.infer.tensor_parallel}.get(row.name, 1)
    res = SlurmResources(
        partition=section.partition, account=section.account, qos=section.qos, time_min=section.time_min,
        nodes=section.nodes, ntasks_per_node=ntasks, gpus_per_node=section.gpus_per_node,
        cpus_per_task=section.cpus_per_task, mem_gb=section.mem_gb, constraint=section.constraint,
        array_throttle=section.array_throttle, sbatch_extra=section.sbatch_extra,
        signal_delay_s=spec.finetune.signal_delay_s if ranks else SIGNAL_DELAY_S)
    size = max(1, facts.max_array_size)
    chunks = tuple((a, min(a + size, tasks)) for a in range(0, tasks, size)) if row.array else ((0, 1),)
    if 0 < section.array_throttle < len(chunks):  # each array is throttled on its own: at least 1 task each
        raise HarnessError(Problem(spec.source, f"{row.section}.array_throttle", f"= {section.array_throttle}: "
                                   f"{row.name}'s {tasks:,} tasks are {len(chunks)} arrays at MaxArraySize {size:,}, "
                                   f"each throttled on its own by Slurm; give at least {len(chunks)}, or 0"))
    depends: tuple[Dependency, ...] = (Dependency(row.after, row.dependency),) if row.after and row.dependency \
        else ()
    container = bool(spec.container.image) and row.name in spec.container.stages
    if container and importing:  # every container stage, not only the first: each must find the .sqsh whole
        depends += (Dependency(IMPORT_IMAGE, "afterok"),)
    return StagePlan(name=row.name, tasks=tasks, array=row.array, depends=depends, resources=res,
                     container=container, chunks=chunks, requeue=ranks or section.retries > 0)


def to_json(plan: Plan) -> dict[str, Any]:
    return {
        "token_math": {"grid": str(plan.token_math.grid), "video_tokens": plan.token_math.video_tokens,
                       "sample_length": plan.token_math.sample_length, "model_max": plan.token_math.model_max,
                       "describe": plan.token_math.describe()},
        "checkpoint_steps": list(plan.checkpoint_steps),
        "eval_steps": list(plan.eval_steps),
        "num_inputs": plan.num_inputs,
        "shards": plan.spec.tokenize.shards,
        "infer": {"checkpoints": len(plan.eval_steps), "shards": infer_shards(plan.spec.infer),
                  "max_inputs": plan.spec.infer.max_inputs, "inputs_per_task": plan.spec.infer.inputs_per_task},
        "data_parallel": plan.data_parallel,
        "grad_accumulation": plan.grad_accumulation,
        "last_step": plan.training.last_step,
        "precision": plan.training.precision,
        "warnings": list(plan.warnings),
        "image": None if plan.image is None else {"uri": plan.image.uri, "sqsh": str(plan.image.sqsh),
                                                  "reused": plan.image.reused},
        "stages": [dataclasses.asdict(s) for s in plan.stages],
    }
