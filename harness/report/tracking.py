"""Experiment tracking: TensorBoard event files always, Weights & Biases when the spec's [tracking] asks.

Both finetune engines pass the same metrics.jsonl records to `TrainTracker.log`, so the event files and
metrics.jsonl hold the same numbers. Everything is written under the run directory (`<run>/tensorboard`,
`<run>/wandb`): compute nodes have no internet, so W&B runs in offline mode there and `harness sync RUN`
uploads from the login node (`wandb sync`), with WANDB_API_KEY read from that shell's environment only.

Requeue / resume: training restarts at the resumed checkpoint's step and recomputes the steps after it.
The training writer opens a new event file with TensorBoard's purge mark at `resumed step + 1` (what
`SummaryWriter(purge_step=...)` writes): readers (TensorBoard, its EventAccumulator) drop every older event
at or after that step, so each step appears once, with the value metrics.jsonl holds. Evaluation means are
rewritten as a whole on each report (a fresh directory swapped in), so a rerun of the report never adds
a second value per checkpoint. W&B keeps the first value it saw for a step; see README "Experiment tracking".
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from harness.core import metrics_table as mt
from harness.core.errors import HarnessError
from harness.core.spec_check import wandb_installed

if TYPE_CHECKING:
    from harness.core.paths import RunPaths
    from harness.core.spec import TrackingSection
    from harness.report.build import Checkpoint

TRAIN_TAGS: Mapping[str, str] = {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm",
                                 "tokens_per_s": "train/tokens_per_s", "tflops": "train/tflops_per_gpu",
                                 "mfu": "train/mfu", "step_time_s": "train/step_time_s"}
"""metrics.jsonl key -> scalar tag; `mfu` is derived (`train_scalars`)."""

VIDEOS_TAG = "eval/videos"


def eval_tags() -> dict[str, str]:
    """Metric name -> scalar tag (`metrics_table`'s tracking_tag), then the videos count's."""
    return {**{m.name: m.tracking_tag for m in mt.METRICS}, "videos": VIDEOS_TAG}


def _finite(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def train_scalars(rec: Mapping[str, Any]) -> dict[str, float]:
    """Tag -> value of one metrics.jsonl record; MFU is tflops over the project's one peak (report.PEAK_TFLOPS).
    Missing or non-finite values are left out rather than logged as NaN."""
    from harness.report.build import PEAK_TFLOPS

    vals = {k: _finite(rec.get(k)) for k in TRAIN_TAGS if k != "mfu"}
    if vals["tflops"] is not None:
        vals["mfu"] = vals["tflops"] / PEAK_TFLOPS
    return {TRAIN_TAGS[k]: v for k, v in vals.items() if v is not None}


def eval_scalars(c: Checkpoint) -> dict[str, float]:
    tags = eval_tags()
    vals = {**{m.name: c.value(m.name) for m in mt.METRICS}, "videos": float(c.videos)}
    return {tags[k]: v for k, v in vals.items() if v is not None and math.isfinite(v)}


class _EventWriter:
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


def _wandb_run(cfg: TrackingSection, paths: RunPaths, config: Mapping[str, Any] | None = None) -> Any:
    """An offline W&B run under <run>/wandb with the run id as W&B id: training, requeues and the report
    append to one W&B run once synced. Offline always: the key never reaches a compute node."""
    import wandb

    paths.wandb_dir.mkdir(parents=True, exist_ok=True)
    os.environ["WANDB_MODE"] = "offline"
    os.environ.pop("WANDB_API_KEY", None)  # offline needs no key; W&B's debug logs never see one
    return wandb.init(project=cfg.wandb_project, entity=cfg.wandb_entity or None, id=paths.run_id,
                      name=paths.run_id, resume="allow", mode="offline", dir=str(paths.wandb_dir),
                      config=dict(config or {}), settings=wandb.Settings(console="off", silent=True))


@dataclass(frozen=True)
class TrainTracker:
    """Rank 0's writers for one training attempt; `open` after the resume point is known, `close` at the end."""

    writer: _EventWriter
    wandb_run: Any = None

    @classmethod
    def open(cls, cfg: TrackingSection, paths: RunPaths, resumed_step: int,
             config: Mapping[str, Any] | None = None) -> "TrainTracker":
        writer = _EventWriter(paths.tensorboard_train, purge_step=resumed_step + 1)
        return cls(writer, _wandb_run(cfg, paths, config) if cfg.wandb else None)

    def log(self, rec: Mapping[str, Any]) -> None:
        step, scalars = int(rec["step"]), train_scalars(rec)
        for tag, v in scalars.items():
            self.writer.add_scalar(tag, v, global_step=step, walltime=_finite(rec.get("time")))
        if self.wandb_run is not None:
            self.wandb_run.log(scalars, step=step)

    def close(self) -> None:
        self.writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def log_evaluation(cfg: TrackingSection, paths: RunPaths, checkpoints: Iterable[Checkpoint]) -> Path:
    """Per-checkpoint means (all shards, as the report computes them) at step = checkpoint step. The eval
    directory is rebuilt in a temp directory and swapped in, so readers never see half of it."""
    rows = [(c.step, eval_scalars(c)) for c in checkpoints]
    final = paths.tensorboard_eval
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".eval."))
    writer = _EventWriter(tmp)
    for step, scalars in rows:
        for tag, v in scalars.items():
            writer.add_scalar(tag, v, global_step=step)
    writer.close()
    old = final.with_name(f".eval.old.{os.getpid()}")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    if cfg.wandb and rows:
        _log_eval_wandb(cfg, paths, rows)
    return final


def _log_eval_wandb(cfg: TrackingSection, paths: RunPaths, rows: list[tuple[int, dict[str, float]]]) -> None:
    """Against `checkpoint_step`, not W&B's own step (already at the last training step: W&B steps only grow)."""
    run = _wandb_run(cfg, paths)
    try:
        run.define_metric("checkpoint_step")
        run.define_metric("eval/*", step_metric="checkpoint_step")
        for step, scalars in rows:
            run.log({"checkpoint_step": step, **scalars})
    finally:
        run.finish()


# ------------------------------------------------------------------------------------------ W&B on the login node
def offline_runs(paths: RunPaths) -> list[Path]:
    """The offline run directories `wandb sync` uploads (one per training attempt and report)."""
    root = paths.wandb_runs
    return sorted(p for p in root.glob("offline-run-*") if p.is_dir()) if root.is_dir() else []


def sync_command(runs: list[Path]) -> list[str]:
    """`wandb sync` of the given directories; the key comes from the caller's environment (WANDB_API_KEY or
    `wandb login`), never from an argument."""
    return [sys.executable, "-m", "wandb", "sync", *map(str, runs)]


def sync(paths: RunPaths) -> list[Path]:
    """Upload a run's offline W&B directories from the login node; raises HarnessError in one line. Run from
    <run>/wandb: `wandb sync` writes its own debug log under the current directory."""
    runs = offline_runs(paths)
    if not runs:
        raise HarnessError(f"{paths.wandb_dir}: no offline W&B runs to sync (set [tracking] wandb = true)")
    if not wandb_installed():
        raise HarnessError("wandb is not installed here: pip install -e '.[wandb]'")
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    res = subprocess.run(sync_command(runs), env=env, capture_output=True, text=True, cwd=paths.wandb_dir)
    if res.returncode:
        last = next((ln for ln in reversed((res.stderr + res.stdout).splitlines()) if ln.strip()), "")
        raise HarnessError(f"wandb sync {paths.wandb_dir} failed (exit {res.returncode}): {last.strip()}")
    return runs
