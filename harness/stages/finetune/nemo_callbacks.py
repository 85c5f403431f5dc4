"""The NeMo engine's Lightning callbacks: checkpoints written in the harness layout with its completion marker,
and one metrics.jsonl line per optimizer step in the mcore engine's format. Imported only where NeMo 2 imports.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from nemo.lightning.io.pl import ckpt_to_dir
from nemo.lightning.pytorch.callbacks import ModelCheckpoint

from harness.core import metricslog
from harness.core.errors import HarnessError
from harness.core.paths import RunPaths
from harness.core.spec import TrackingSection
from harness.core.trainplan import TrainingPlan
from harness.cosmos.data import VideoSamples
from harness.cosmos.signals import StopSignal
from harness.lib.tracking import TrainTracker
from harness.stages import tracked
from harness.stages.finetune.core import StepMath, after_save, mark_complete, validation_loss, validation_record
from harness.stages.finetune.nemo_common import CHECKPOINT_FILENAME, device, forward_step, remove_incomplete, scalar

log = logging.getLogger("harness.stages.finetune.nemo")


class HarnessCheckpoint(ModelCheckpoint):
    """NeMo's checkpoint callback writing `RunPaths.checkpoint_dir(step)` (step = optimizer steps completed),
    every `save_every` steps and at the last step, keeping all of them (infer/evaluate index them); after each
    save completes, the harness completion marker and checkpoints.json. On SIGUSR2/SIGTERM (Slurm's warning
    before the time limit, preemption) all ranks checkpoint after the current step, then hand over to submitit's
    requeue (or raise `Preempted`), as the mcore engine does. Once a save is complete on every rank, rank 0
    applies `keep` (finetune.keep_optimizer) to the older checkpoints' optimizer state. The last checkpoint
    keeps its optimizer state too (NeMo's default drops it at max_steps), as the mcore engine's does: with
    "last" it is the one that has it."""

    def __init__(self, paths: RunPaths, plan: TrainingPlan, save_every: int, context: dict[str, Any],
                 keep: str = "last") -> None:
        super().__init__(dirpath=str(paths.checkpoints_dir), filename=CHECKPOINT_FILENAME,
                         auto_insert_metric_name=False, monitor=None, save_top_k=-1, save_last=False,
                         every_n_train_steps=save_every, save_on_train_epoch_end=False,
                         save_optim_on_train_end=True)
        self.paths, self.plan, self.context, self.keep = paths, plan, context, keep
        self.steps = set(plan.checkpoint_steps)
        self.stop: StopSignal | None = None
        self.reason = "schedule"

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_start(trainer, pl_module)
        self.stop = StopSignal()
        self.stop.install()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.stop is not None:
            self.stop.restore()
        super().teardown(trainer, pl_module, stage)

    def setup(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
        if trainer.is_global_zero:
            remove_incomplete(self.paths)
        super().setup(trainer, *args, **kwargs)

    def _monitor_candidates(self, trainer: Any) -> dict[str, Any]:
        out = super()._monitor_candidates(trainer)
        out["completed_steps"] = torch.tensor(trainer.global_step)
        return out

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        step = trainer.global_step
        signum = self.stop.agreed(device()) if self.stop is not None else 0
        if (step in self.steps or signum) and self._last_global_step_saved != step:
            self.reason = "schedule" if step in self.steps else "signal"
            self._save_checkpoint(trainer, self.format_checkpoint_name(self._monitor_candidates(trainer)))
            self.reason = "schedule"
        if signum and self.stop is not None:
            self.stop.exit(signum, step)

    def _save_checkpoint(self, trainer: Any, filepath: str) -> None:
        start = time.perf_counter()
        super()._save_checkpoint(trainer, filepath)
        step = trainer.global_step
        directory = Path(ckpt_to_dir(filepath))
        if directory != self.paths.checkpoint_dir(step):
            raise HarnessError(f"{directory}: NeMo wrote a checkpoint outside the harness layout "
                               f"(expected {self.paths.checkpoint_dir(step)})")
        if trainer.is_global_zero:
            mark_complete(self.paths, self.plan, self.context, step, reason=self.reason)
            log.info("checkpoint step %d in %.1fs", step, time.perf_counter() - start)
        trainer.strategy.barrier("harness-checkpoint")
        if trainer.is_global_zero:
            after_save(self.paths, self.plan, step, self.keep)


@dataclass(frozen=True)
class Validation:
    """What the validation points need: the validation split, the plan (its steps, video count and DP size) and
    the micro-batch size they are read in."""

    samples: VideoSamples
    plan: TrainingPlan
    micro_batch_size: int


class MetricsCallback(pl.Callback):
    """Appends one metrics.jsonl line per optimizer step (rank 0), the mcore engine's format, and one per
    validation point (all ranks compute it, with the training step's `forward_step`, at step 0 and after the
    planned steps, before the step's checkpoint: Lightning runs `ModelCheckpoint` callbacks last)."""

    def __init__(self, paths: RunPaths, math: StepMath, tracking_cfg: TrackingSection | None,
                 run_config: dict[str, Any], validation: Validation | None = None) -> None:
        """`tracking_cfg` None: metrics.jsonl only (the bench: no TensorBoard/W&B event files); `validation`
        None: no validation loss."""
        self.paths, self.math, self.tracking_cfg, self.run_config = paths, math, tracking_cfg, run_config
        self.validation = validation
        self.start, self.lr = 0.0, 0.0
        self.tracker: TrainTracker | None = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero:  # after a resume, later steps are recomputed: each is logged once
            metricslog.truncate(self.paths.metrics_jsonl, trainer.global_step)
        if trainer.is_global_zero and self.tracking_cfg is not None:
            self.tracker = tracked.open_train_tracker(self.tracking_cfg, self.paths, trainer.global_step,
                                                      self.run_config)
        if trainer.global_step == 0:
            self._validate(trainer, pl_module)

    def _validate(self, trainer: Any, pl_module: Any) -> None:
        """The validation loss of the current weights at a planned validation step, logged on rank 0."""
        v = self.validation
        if v is None or trainer.global_step not in v.plan.validation_steps:
            return
        from megatron.core import parallel_state

        pl_module.eval()
        try:
            loss, videos = validation_loss(
                lambda b: forward_step(pl_module, b), v.samples, v.plan, micro_batch_size=v.micro_batch_size,
                dp_rank=parallel_state.get_data_parallel_rank(), dp_group=parallel_state.get_data_parallel_group(),
                device=device(), dtype=torch.bfloat16 if v.plan.precision == "bf16-mixed" else torch.float32)
        finally:
            pl_module.train()
        if trainer.is_global_zero:
            rec = validation_record(trainer.global_step, loss, videos, "nemo")
            metricslog.append(self.paths.metrics_jsonl, rec)
            if self.tracker is not None:
                self.tracker.log(rec)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.tracker is not None:
            self.tracker.close()
            self.tracker = None

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.lr = float(trainer.optimizers[0].param_groups[0]["lr"])
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        dt = time.perf_counter() - self.start
        if trainer.is_global_zero:
            self._log_step(trainer, outputs, dt)
        self._validate(trainer, pl_module)

    def _log_step(self, trainer: Any, outputs: Any, dt: float) -> None:
        m = trainer.callback_metrics
        loss = scalar(m.get("reduced_train_loss"))
        if loss is None and isinstance(outputs, dict):
            loss = scalar(outputs.get("loss"))
        rec = self.math.record(trainer.global_step, float("nan") if loss is None else loss, self.lr,
                               scalar(m.get("grad_norm")), dt, trainer.world_size)
        metricslog.append(self.paths.metrics_jsonl, rec)
        if self.tracker is not None:
            self.tracker.log(rec)
        if trainer.global_step % self.math.log_every == 0:
            self.math.log_line(rec)
