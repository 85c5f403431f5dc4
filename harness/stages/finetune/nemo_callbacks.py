"""The NeMo engine's Lightning callbacks: checkpoints written in the harness layout with its completion marker,
and one metrics.jsonl line per optimizer step and per validation pass of Lightning's loop, in the mcore engine's
format. Imported only where NeMo 2 imports.
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
from harness.cosmos.checkpoint import in_process_results_queue
from harness.cosmos.signals import StopSignal
from harness.lib.tracking import TrainTracker
from harness.stages import tracked
from harness.stages.finetune.core import StepMath, after_save, mark_complete, validation_record
from harness.stages.finetune.nemo_common import CHECKPOINT_FILENAME, device, remove_incomplete, scalar

log = logging.getLogger("harness.stages.finetune.nemo")


class HarnessCheckpoint(ModelCheckpoint):
    """NeMo's checkpoint callback writing `RunPaths.checkpoint_dir(step)` (step = optimizer steps completed),
    every `save_every` steps and at the last step, keeping all of them (infer/evaluate index them); after each
    save completes, the harness completion marker and checkpoints.json. On SIGUSR2/SIGTERM (Slurm's warning
    before the time limit, preemption) all ranks checkpoint after the current step, then hand over to submitit's
    requeue (or raise `Preempted`), as the mcore engine does. Once a save is complete on every rank, rank 0
    applies `keep` (finetune.keep_optimizer) to the older checkpoints' optimizer state. The last checkpoint
    keeps its optimizer state too (NeMo's default drops it at max_steps), as the mcore engine's does: with
    "last" it is the one that has it.

    After a step that Lightning's validation loop validates (`validated`), the save (and a signal's exit) waits
    for the end of that pass, as the mcore engine validates before it checkpoints: a checkpoint's validation
    point is always logged, so a resumed attempt, which Lightning never validates at its start, misses none."""

    def __init__(self, paths: RunPaths, plan: TrainingPlan, save_every: int, context: dict[str, Any],
                 validated: frozenset[int] = frozenset(), keep: str = "last") -> None:
        super().__init__(dirpath=str(paths.checkpoints_dir), filename=CHECKPOINT_FILENAME,
                         auto_insert_metric_name=False, monitor=None, save_top_k=-1, save_last=False,
                         every_n_train_steps=save_every, save_on_train_epoch_end=False,
                         save_optim_on_train_end=True)
        self.paths, self.plan, self.context, self.keep = paths, plan, context, keep
        self.steps, self.validated = set(plan.checkpoint_steps), validated - {0}
        self.stop: StopSignal | None = None
        self.reason = "schedule"
        self.pending: tuple[int, int] | None = None
        """(step, agreed signal) of a step whose save waits for its validation pass."""

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
        """Every save is this callback's (ModelCheckpoint's own `every_n_train_steps` save would come before the
        step's validation pass)."""
        step = trainer.global_step
        signum = self.stop.agreed(device()) if self.stop is not None else 0
        if step in self.validated:
            self.pending = (step, signum)  # Lightning validates next: `on_validation_end` finishes the step
            return
        self._finish_step(trainer, step, signum)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self._finish_pending(trainer)

    def on_train_batch_start(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
        self._finish_pending(trainer, missed=True)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._finish_pending(trainer, missed=True)
        super().on_train_end(trainer, pl_module)

    def _finish_pending(self, trainer: Any, missed: bool = False) -> None:
        """The step waiting for its validation pass; `missed`: none came (never expected: the trainer's
        validation schedule is the plan's), so the checkpoint is not lost."""
        if self.pending is not None:
            step, signum = self.pending
            self.pending = None
            if missed:
                log.warning("no validation pass ran after step %d: checkpointing without it", step)
            self._finish_step(trainer, step, signum)

    def _finish_step(self, trainer: Any, step: int, signum: int) -> None:
        """The step's checkpoint where planned or signalled, then the signal's exit."""
        if (step in self.steps or signum) and self._last_global_step_saved != step:
            self.reason = "schedule" if step in self.steps else "signal"
            self._save_checkpoint(trainer, self.format_checkpoint_name(self._monitor_candidates(trainer)))
            self.reason = "schedule"
        if signum and self.stop is not None:
            self.stop.exit(signum, step)

    def _save_checkpoint(self, trainer: Any, filepath: str) -> None:
        start = time.perf_counter()
        in_process_results_queue()  # on every rank, before NeMo's (synchronous) torch_dist save
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
    """What a validation point's record needs: the planned steps and the number of videos a pass reads."""

    steps: tuple[int, ...]
    last_step: int
    videos: int


class MetricsCallback(pl.Callback):
    """Appends one metrics.jsonl line per optimizer step (rank 0), the mcore engine's format, and one per
    validation point. Validation runs through Lightning's validation loop (`CosmosGPTModel`'s validation steps
    over `VideoDataModule.val_dataloader`): every `val_every` steps (`val_check_interval`), at the last step
    (this callback sets `should_stop` there, which makes Lightning validate after the step), and at step 0 in
    the sanity pass of a fresh start (`num_sanity_val_steps`). All ranks compute it; rank 0 logs it."""

    def __init__(self, paths: RunPaths, math: StepMath, tracking_cfg: TrackingSection | None,
                 run_config: dict[str, Any], validation: Validation | None = None) -> None:
        """`tracking_cfg` None: metrics.jsonl only (the bench: no TensorBoard/W&B event files); `validation`
        None: no validation loss."""
        self.paths, self.math, self.tracking_cfg, self.run_config = paths, math, tracking_cfg, run_config
        self.validation = validation
        self.start, self.lr = 0.0, 0.0
        self.tracker: TrainTracker | None = None
        self.begun = False

    def _begin(self, trainer: Any) -> None:
        """Once per attempt, at the resumed step, before anything is logged (the sanity pass precedes
        `on_train_start`): later steps are recomputed, so each is logged once."""
        if self.begun:
            return
        self.begun = True
        if trainer.is_global_zero:
            metricslog.truncate(self.paths.metrics_jsonl, trainer.global_step)
        if trainer.is_global_zero and self.tracking_cfg is not None:
            self.tracker = tracked.open_train_tracker(self.tracking_cfg, self.paths, trainer.global_step,
                                                      self.run_config)

    def on_sanity_check_start(self, trainer: Any, pl_module: Any) -> None:
        self._begin(trainer)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._begin(trainer)

    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        pl_module.validation_loss_reduction.reset()

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """The pass's loss (summed over DP), logged on rank 0 at a planned validation step."""
        from megatron.core import parallel_state

        v = self.validation
        if v is None:
            return
        loss = pl_module.validation_loss_reduction.loss(device(), parallel_state.get_data_parallel_group())
        if trainer.is_global_zero and trainer.global_step in v.steps:
            rec = validation_record(trainer.global_step, loss, v.videos, "nemo")
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
        v = self.validation
        if v is not None and trainer.global_step == v.last_step and v.last_step in v.steps:
            trainer.should_stop = True  # Lightning validates after a step that stops training

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
