"""The report's values: what the run produced, read from its result files by `harness.report.build` and shown by
`harness.report.tables` and `harness.report.files`. Frozen, so every output form shows the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from harness.core import metrics_table as mt
from harness.core.models import PEAK_TFLOPS  # noqa: F401 (re-exported: the report's modules and the bench read it here)
from harness.report import html as report_html


@dataclass(frozen=True)
class Training:
    steps: int
    """Last logged optimizer step."""
    last_step: int
    """Where training ends (`harness.core.trainplan.TrainingPlan.last_step`): `steps` below it means unfinished."""
    logged: int
    """Metric lines in metrics.jsonl."""
    final_loss: float | None
    tokens_per_s: float | None
    """Median over the logged steps after the first (the first pays for compilation and warm-up)."""
    tflops: float | None
    """Median achieved TFLOP/s per GPU, same steps as tokens_per_s."""
    mfu: float | None
    """tflops / PEAK_TFLOPS."""


@dataclass(frozen=True)
class Tokenize:
    shards: int
    """Shards whose manifest was readable."""
    clips: int
    seconds: float
    """Summed wall time of the shard tasks' encode loops."""
    clips_per_s: float | None
    """clips / seconds: throughput of one tokenize task, independent of how many ran at once."""


@dataclass(frozen=True)
class Checkpoint:
    step: int
    values: Mapping[str, float | None]
    """Metric name -> mean over the checkpoint's videos (finite, else None), for the selected metrics only."""
    videos: int
    best: bool
    """Best mean of the first selected metric (in `metrics_table` order; the later ones break ties)."""
    frames: str = ""
    """Which frames were compared, as the evaluate stage states it."""
    shards: int = 1
    """Input shards whose evaluate results were read (the videos are theirs)."""
    shards_planned: int = 1
    failed_videos: int = 0
    """Pairs the evaluate stage could not score (named in the shard files' `failed`)."""
    protocol: str = "aligned"
    """The protocol of `values` (`evaltable.protocol_label`: 'aligned, resize upstream' or 'tokenbench')."""
    others: Mapping[str, Mapping[str, float | None]] = field(default_factory=dict)
    """Protocol label -> metric name -> mean, for the other protocols of evaluate.protocol = "both"."""
    val_loss: float | None = None
    """The validation loss finetune logged for this checkpoint's weights (a training metric, not evaluate's)."""
    best_val: bool = False
    """Lowest validation loss among the checkpoints that have one."""
    baseline: str = ""
    """Step 0's row, the weights before post-training: 'pretrained' or 'random initialisation'; '' for a
    checkpoint of the run. A baseline is never the best checkpoint (it is no checkpoint to export)."""

    @property
    def label(self) -> str:
        return f"{self.step} ({self.baseline})" if self.baseline else str(self.step)

    def value(self, name: str) -> float | None:
        return self.values.get(name)

    def to_json(self, metrics: Sequence[str]) -> dict[str, Any]:
        """report.json's row: the selected metrics (`metrics_table` order) after the step, then their protocol
        and the other protocols' means."""
        chosen = mt.selected(metrics)
        return {"step": self.step, **{m.name: self.values.get(m.name) for m in chosen},
                "videos": self.videos, "best": self.best, "frames": self.frames, "shards": self.shards,
                "shards_planned": self.shards_planned, "failed_videos": self.failed_videos,
                "protocol": self.protocol, "val_loss": self.val_loss, "best_val_loss": self.best_val,
                "baseline": self.baseline or None,
                "other_protocols": {p: {m.name: v.get(m.name) for m in chosen} for p, v in self.others.items()}}


@dataclass(frozen=True)
class StageHours:
    """GPU-hours a stage used (its tasks' latest attempts: `TaskState.gpu_seconds`) beside the plan's estimate
    (`harness.core.estimate`; None where the plan makes none)."""

    stage: str
    used: float
    planned: float | None


def total_hours(rows: Sequence[StageHours]) -> tuple[float, float | None]:
    """(used, planned) over every stage; planned None when no stage has an estimate."""
    planned = [r.planned for r in rows if r.planned is not None]
    return sum(r.used for r in rows), sum(planned) if planned else None


@dataclass(frozen=True)
class MissingShard:
    """A (checkpoint, input shard) whose evaluate result is absent: its videos are in no mean."""

    step: int
    shard: int
    task: int
    """Index of the infer and evaluate array tasks of this pair."""
    why: str


@dataclass(frozen=True)
class Report:
    run_id: str
    name: str
    data: dict[str, Any]
    tokenize: Tokenize | None
    training: Training | None
    loss_curve: tuple[tuple[int, float], ...]
    """(step, training loss) of each logged optimizer step."""
    checkpoints: tuple[Checkpoint, ...]
    failures: tuple[dict[str, Any], ...]
    missing: tuple[str, ...]
    """Result files that were expected but absent (a stage failed or has not run)."""
    metrics: tuple[str, ...] = field(default_factory=mt.names)
    """evaluate.metrics: the only quality columns shown."""
    missing_shards: tuple[MissingShard, ...] = ()
    samples: tuple[report_html.Sample, ...] = ()
    """The evaluated videos report.html shows (the first few of each checkpoint)."""
    val_curve: tuple[tuple[int, float], ...] = ()
    """(step, validation loss) of each validation point: step 0 (the starting weights) and the planned steps."""
    gpu_hours: tuple[StageHours, ...] = ()
    """Per stage, where the caller knows the run's task states (`harness report`; the report stage does not)."""
    retries: tuple[str, ...] = ()
    """One line per task retried after an infrastructure failure (`harness.core.retries.summary`)."""

    @property
    def best(self) -> Checkpoint | None:
        return next((c for c in self.checkpoints if c.best), None)
