"""Training-time tracking: TensorBoard scalars through TensorBoard's own event writer, and an offline W&B run.

Library code: it knows no run spec and no run directory. The finetune engines pass the directories and the
W&B target as plain values (`harness.stages.finetune.core.open_tracker`), the report passes its own for the
evaluation means (`harness.report.tracking`).

Requeue / resume: training restarts at the resumed checkpoint's step and recomputes the steps after it.
`TrainTracker.open` starts a new event file with TensorBoard's purge mark at `resumed step + 1` (0 on a fresh
start, whose step-0 validation point is recomputed; what
`SummaryWriter(purge_step=...)` writes): readers (TensorBoard, its EventAccumulator) drop every older event at
or after that step, so each step appears once, with the value metrics.jsonl holds. Both finetune engines pass the
same metrics.jsonl records to `TrainTracker.log`, so the event files and metrics.jsonl hold the same numbers.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from harness.core.models import PEAK_TFLOPS

TRAIN_TAGS: Mapping[str, str] = {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm",
                                 "tokens_per_s": "train/tokens_per_s", "tflops": "train/tflops_per_gpu",
                                 "mfu": "train/mfu", "step_time_s": "train/step_time_s",
                                 "val_loss": "val/loss"}
"""metrics.jsonl key -> scalar tag; `mfu` is derived (`train_scalars`)."""


def finite(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def train_scalars(rec: Mapping[str, Any]) -> dict[str, float]:
    """Tag -> value of one metrics.jsonl record; MFU is tflops over the project's one peak (models.PEAK_TFLOPS).
    Missing or non-finite values are left out rather than logged as NaN."""
    vals = {k: finite(rec.get(k)) for k in TRAIN_TAGS if k != "mfu"}
    if vals["tflops"] is not None:
        vals["mfu"] = vals["tflops"] / PEAK_TFLOPS
    return {TRAIN_TAGS[k]: v for k, v in vals.items() if v is not None}


class EventWriter:
    """TensorBoard scalars through the `tensorboard` package's own event-file writer (the one
    torch.utils.tensorboard wraps): the report stage needs no torch, whose import was 3.7 s of its 8 s here."""

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._file = EventFileWriter(str(log_dir), flush_secs=30)
        if purge_step is not None:
            # A START session log at step s: readers drop the events at steps >= s an earlier attempt wrote.
            self._file.add_event(Event(wall_time=time.time(), step=purge_step,
                                       session_log=SessionLog(status=SessionLog.START)))

    def add_scalar(self, tag: str, value: float, global_step: int, walltime: float | None = None) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(value))])
        self._file.add_event(Event(wall_time=time.time() if walltime is None else walltime, step=global_step,
                                   summary=summary))

    def close(self) -> None:
        self._file.close()


@dataclass(frozen=True)
class WandbTarget:
    """Where one run's offline W&B records go: training, requeues and the report append to one W&B run (id =
    the run id) once synced."""

    project: str
    entity: str
    run_id: str
    directory: Path


def open_wandb(target: WandbTarget, config: Mapping[str, Any] | None = None) -> Any:
    """An offline W&B run under `target.directory`. Offline always: the key never reaches a compute node."""
    import wandb

    target.directory.mkdir(parents=True, exist_ok=True)
    os.environ["WANDB_MODE"] = "offline"
    os.environ.pop("WANDB_API_KEY", None)  # offline needs no key; W&B's debug logs never see one
    return wandb.init(project=target.project, entity=target.entity or None, id=target.run_id, name=target.run_id,
                      resume="allow", mode="offline", dir=str(target.directory), config=dict(config or {}),
                      settings=wandb.Settings(console="off", silent=True))


@dataclass(frozen=True)
class TrainTracker:
    """Rank 0's writers for one training attempt; `open` after the resume point is known, `close` at the end."""

    writer: EventWriter
    wandb_run: Any = None

    @classmethod
    def open(cls, log_dir: Path, resumed_step: int, wandb: WandbTarget | None = None,
             config: Mapping[str, Any] | None = None) -> "TrainTracker":
        """Event files under `log_dir`; a W&B run too where `wandb` names one."""
        # a resumed checkpoint's own step keeps its validation point (computed before the save); a fresh start
        # recomputes step 0's, so it purges from 0
        writer = EventWriter(log_dir, purge_step=resumed_step + 1 if resumed_step else 0)
        return cls(writer, open_wandb(wandb, config) if wandb is not None else None)

    def log(self, rec: Mapping[str, Any]) -> None:
        step, scalars = int(rec["step"]), train_scalars(rec)
        for tag, v in scalars.items():
            self.writer.add_scalar(tag, v, global_step=step, walltime=finite(rec.get("time")))
        if self.wandb_run is not None:
            self.wandb_run.log(scalars, step=step)

    def close(self) -> None:
        self.writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
