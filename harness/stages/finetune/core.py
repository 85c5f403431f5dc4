"""What both finetune engines share, in one place: the LR schedule, the metrics.jsonl record, the checkpoint
side files (context/harness.json, trainer.json, the completion marker, checkpoints.json), the masked loss and
the validation loss computed with it, the pretrained source, the training plan as a rank sees it, and the tracker
opened on rank 0.

The mcore engine (`mcore.py`) and the NeMo engine (`nemo*.py`) each call these; neither builds any of them on
its own, so the two write the same files with the same numbers. The plan's numbers themselves (last step,
checkpoint steps, TP / DP / SP, gradient accumulation, precision, FLOPs per step) come from
`harness.core.trainplan`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from harness.core import trainplan
from harness.core.atomic import atomic_write_json
from harness.core.paths import RunPaths
from harness.core.spec import FinetuneSection, RunSpec
from harness.core.trainplan import TrainingPlan
from harness.cosmos import checkpoint as ckpt
from harness.cosmos.layout import resolve_pretrained
from harness.lib.tracking import TrainTracker
from harness.stages import staged, tracked
from harness.stages.finetune import checkpoints

if TYPE_CHECKING:
    import torch

    from harness.cosmos.data import TokenSource, VideoSamples

log = logging.getLogger(__name__)

EngineName = Literal["mcore", "nemo"]


def lr_at(f: FinetuneSection, step: int) -> float:
    """LR of 0-based optimizer step `step`: linear warm-up, then cosine from lr to min_lr (constant if equal)."""
    if f.warmup_steps and step < f.warmup_steps:
        return f.lr * (step + 1) / f.warmup_steps
    if f.min_lr == f.lr:
        return f.lr
    progress = min(1.0, (step - f.warmup_steps) / max(1, f.max_steps - f.warmup_steps))
    return f.min_lr + 0.5 * (f.lr - f.min_lr) * (1.0 + math.cos(math.pi * progress))


def training_plan(spec: RunSpec, engine: EngineName) -> TrainingPlan:
    """This rank's training plan for `engine` (CUDA as the rank sees it), with the warnings a user should read in
    the log."""
    import torch

    plan = trainplan.of(spec, cuda=torch.cuda.is_available(), engine=engine)
    if plan.precision != spec.finetune.precision:
        log.warning("finetune.precision = %r needs CUDA; training in %s on CPU", spec.finetune.precision,
                    plan.precision)
    return plan


def pretrained_dir(paths: RunPaths) -> Path:
    """The staged pretrained checkpoint's NeMo 2 folder: what stage-assets recorded for model.checkpoint (a local
    directory in place, or the HF snapshot it downloaded), resolved by `layout.resolve_pretrained` to itself or its
    `nemo/` folder (weights under `weights/` or directly inside; both engines load both)."""
    return resolve_pretrained(staged.resolve(paths, "checkpoint"))


@dataclass(frozen=True)
class StepMath:
    """What a metrics line needs from the spec and plan, as plain numbers (NeMo deep-copies callbacks' arguments)."""

    global_batch_size: int
    video_tokens: int
    flops_per_step: float
    train_videos: int
    log_every: int
    engine: EngineName

    @classmethod
    def of(cls, spec: RunSpec, plan: TrainingPlan, train_videos: int, engine: EngineName) -> "StepMath":
        return cls(plan.global_batch_size, plan.video_tokens, plan.flops_per_step, train_videos,
                   spec.finetune.log_every, engine)

    def record(self, step: int, loss: float, lr: float, grad_norm: float | None, dt: float, world: int
               ) -> dict[str, Any]:
        """One metrics.jsonl line (`step`: optimizer steps completed; `dt`: the step's seconds; `world`: ranks)."""
        return {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                "tokens_per_s": self.global_batch_size * self.video_tokens / dt,
                "tflops": self.flops_per_step / dt / world / 1e12, "step_time_s": dt,
                "epoch": (step * self.global_batch_size) // self.train_videos, "time": time.time(),
                "engine": self.engine}

    def log_line(self, rec: dict[str, Any]) -> None:
        """The progress line of a logged step, every `finetune.log_every` steps."""
        log.info("step %d loss %.4f lr %.3g grad_norm %s %.0f tok/s %.2f TFLOP/s", rec["step"], rec["loss"],
                 rec["lr"], rec["grad_norm"], rec["tokens_per_s"], rec["tflops"])


def checkpoint_context(spec: RunSpec, engine: EngineName) -> dict[str, Any]:
    """context/harness.json of a checkpoint, less the step (added per save): what infer and a resume check."""
    tm = spec.token_math
    return {"preset": spec.model.preset, "grid": [tm.grid.t, tm.grid.h, tm.grid.w],
            "compression": list(tm.compression), "tensor_parallel": spec.finetune.tensor_parallel, "engine": engine,
            "recipe": spec.run.recipe}


def trainer_state(plan: TrainingPlan, step: int, reason: str) -> dict[str, Any]:
    """trainer.json of a checkpoint: the step, the samples consumed and why it was written (schedule, signal,
    final)."""
    return {"step": step, "samples_consumed": step * plan.global_batch_size, "reason": reason}


def write_checkpoints_json(paths: RunPaths, plan: TrainingPlan) -> None:
    """`steps`: completed checkpoints among the planned ones (what infer/evaluate arrays index); `all`: every
    complete checkpoint, including ones written on a preemption signal; `planned` and `last_step`: the training
    plan's."""
    done = checkpoints.complete_steps(paths)
    planned = set(plan.checkpoint_steps)
    atomic_write_json(paths.checkpoints_json, {"steps": [s for s in done if s in planned], "all": done,
                                               "planned": sorted(planned), "last_step": plan.last_step})


def after_save(paths: RunPaths, plan: TrainingPlan, step: int, keep: str) -> None:
    """Rank 0, once checkpoint `step` is complete on every rank: the retention of `finetune.keep_optimizer`
    (older checkpoints' optimizer state, older signal checkpoints), then checkpoints.json."""
    checkpoints.keep_optimizer(paths, step, keep)
    checkpoints.drop_unplanned(paths, step, plan.checkpoint_steps, keep)
    write_checkpoints_json(paths, plan)


def mark_complete(paths: RunPaths, plan: TrainingPlan, context: dict[str, Any], step: int, *, reason: str) -> None:
    """The side files of a checkpoint whose weights are written (the completion marker last). Rank 0 only;
    `after_save` follows once every rank is past the save."""
    ckpt.write_side_files(paths.checkpoint_dir(step), context={**context, "step": step},
                          trainer=trainer_state(plan, step, reason))


def run_config(spec: RunSpec, plan: TrainingPlan) -> dict[str, Any]:
    """What a W&B run records as its config: the run's plan numbers."""
    return {"preset": spec.model.preset, "recipe": spec.run.recipe, "global_batch_size": plan.global_batch_size,
            "tokens_per_step": plan.tokens_per_step, "last_step": plan.last_step, "lr": spec.finetune.lr,
            "tensor_parallel": spec.finetune.tensor_parallel, "data_parallel": plan.data_parallel}


def open_tracker(spec: RunSpec, paths: RunPaths, plan: TrainingPlan, resumed_step: int) -> TrainTracker:
    """Rank 0's event files (and W&B run) for this attempt, opened once the resume point is known."""
    return tracked.open_train_tracker(spec.tracking, paths, resumed_step, run_config(spec, plan))


def optimizer_config(f: FinetuneSection, *, bf16: bool, distributed: bool) -> Any:
    """megatron-core's Adam settings from the spec (`distributed`: the distributed optimizer, which only the mcore
    engine uses, with DP > 1 on GPUs)."""
    import torch
    from megatron.core.optimizer import OptimizerConfig

    return OptimizerConfig(optimizer="adam", lr=f.lr, min_lr=f.min_lr, weight_decay=f.weight_decay,
                           clip_grad=f.grad_clip, bf16=bf16, params_dtype=torch.bfloat16 if bf16 else torch.float32,
                           use_distributed_optimizer=distributed)


def masked_sums(per_token: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed loss, counted labels) over the labels `mask` keeps (the video tokens): the training loss is their
    ratio per micro-batch (`masked_loss`), the validation loss their ratio over all validation videos."""
    return (per_token * mask).sum(), mask.sum()


def masked_loss(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The training loss: masked mean next-token cross-entropy over the video tokens."""
    total, count = masked_sums(per_token, mask)
    return total / count


def validation_samples(spec: RunSpec, plan: TrainingPlan, dataset: TokenSource, where: str) -> VideoSamples | None:
    """The validation split's samples, or None (with a warning naming data.split) when validation is off or the
    split is empty (too few videos for its weight)."""
    from harness.core.errors import HarnessError
    from harness.cosmos import data as data_mod

    if not plan.validation_steps:
        return None
    try:
        return data_mod.VideoSamples(dataset, spec.token_math, "val", where=where,
                                     context_dim=spec.preset.crossattn_dim if spec.video2world else None)
    except HarnessError:
        log.warning("%s: no validation loss: the validation split is empty (data.split = %s over %d videos); "
                    "give it more weight or set finetune.val_every = 0", spec.source, list(spec.data.split),
                    len(dataset))
        return None


Forward = Callable[[dict[str, Any]], "torch.Tensor"]
"""A batch (`harness.cosmos.data.collate`) -> the model's per-token loss [b, s]."""


def validation_loss(forward: Forward, samples: VideoSamples, plan: TrainingPlan, *, micro_batch_size: int,
                    dp_rank: int, dp_group: Any, device: torch.device, dtype: torch.dtype) -> tuple[float, int]:
    """(loss, videos): the training loss (`masked_sums`) over the first `plan.val_videos` validation videos,
    without gradients; DP rank r reads videos r, r + DP, ..., every TP rank of it the same ones; summed over
    the DP group. The caller puts the model in eval mode."""
    import torch
    import torch.distributed as dist

    from harness.cosmos import data as data_mod

    count = min(plan.val_videos, len(samples))
    mine = list(range(dp_rank, count, plan.data_parallel))
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    with torch.no_grad():
        for i in range(0, len(mine), micro_batch_size):
            batch = data_mod.collate([samples.sample(k) for k in mine[i:i + micro_batch_size]], device, dtype)
            total, labels = masked_sums(forward(batch).double(), batch["loss_mask"].double())
            sums += torch.stack([total, labels])
    if dist.is_initialized():
        dist.all_reduce(sums, group=dp_group)
    return float(sums[0] / sums[1]), count


def validation_record(step: int, loss: float, videos: int, engine: EngineName) -> dict[str, Any]:
    """The metrics.jsonl line of a validation point (`harness.core.metricslog.is_validation`)."""
    log.info("step %d val_loss %.4f (%d videos)", step, loss, videos)
    return {"step": step, "val_loss": loss, "val_videos": videos, "time": time.time(), "engine": engine}
