"""The report's values: what the run produced, read from its result files by `harness.report.build` and shown by
`harness.report.tables` and `harness.report.files`. Frozen, so every output form shows the same numbers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from harness.core import metrics_table as mt
from harness.core.models import PEAK_TFLOPS  # noqa: F401 (re-exported: the report's modules and the bench read it here)
from harness.report import html as report_html

VAL_LOSS = "val_loss"
"""The metrics.jsonl key of the validation loss at a step, and its criterion among the checkpoints' columns."""


def best_marks(rows: Sequence[Mapping[str, float | None]], keys: Sequence[str]) -> list[frozenset[str]]:
    """Per row, the criteria (`keys`: a metric's all-frames or predicted-frames mean, `VAL_LOSS`) whose best value
    over the rows it holds, each in its direction (a loss: lowest); ties mark every row holding the value."""
    marks: list[set[str]] = [set() for _ in rows]
    for k in keys:
        m = mt.find(k)
        higher = m is not None and m.higher_is_better
        scored = [(i, v) for i, r in enumerate(rows) if (v := r.get(k)) is not None]
        if scored:
            top = (max if higher else min)(v for _, v in scored)
            for i, v in scored:
                if v == top:
                    marks[i].add(k)
    return [frozenset(m) for m in marks]


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
class Generation:
    tasks: int
    """Infer tasks whose manifest was readable and generated something."""
    videos: int
    tokens: int
    """Generated tokens of every video (the first sampled from the prefill's logits included)."""
    decode_seconds: float
    prefill_seconds: float
    """Summed over the tasks' batches; the first batch of a shape also compiles and captures its decode step."""
    kv_cache: str
    """infer.kv_cache of the tasks ("model" where a manifest predates the key), or their values joined by "+"."""
    tokens_per_s: float | None
    """tokens / decode seconds: one task's decode rate, independent of how many ran at once."""


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
    other_videos: Mapping[str, int] = field(default_factory=dict)
    """Protocol label -> the videos its means are over (fewer than `videos` where a pair failed only there)."""
    val_loss: float | None = None
    """The validation loss finetune logged for this checkpoint's weights (a training metric, not evaluate's)."""
    best_val: bool = False
    """Lowest validation loss among the checkpoints that have one."""
    baseline: str = ""
    """Step 0's row, the weights before post-training: 'pretrained' or 'random initialisation'; '' for a
    checkpoint of the run. A baseline is never the best checkpoint (it is no checkpoint to export)."""
    predicted: Mapping[str, float | None] = field(default_factory=dict)
    """Metric name -> mean over the videos' predicted frames only (the frames after the context frames; absent
    where no video has them, e.g. the tokenbench protocol)."""
    best_of: frozenset[str] = frozenset()
    """The criteria (`criteria` keys) whose best value among the run's checkpoints this one holds."""

    @property
    def label(self) -> str:
        return f"{self.step} ({self.baseline})" if self.baseline else str(self.step)

    def value(self, name: str) -> float | None:
        return self.values.get(name)

    def criteria(self) -> dict[str, float | None]:
        """Every value a best checkpoint is chosen by: each selected metric (`values`' keys) over all compared
        frames (its name) and over the predicted frames (`predicted_key`), and the validation loss (`VAL_LOSS`)."""
        chosen = mt.selected(self.values)
        return {**{m.name: self.values.get(m.name) for m in chosen},
                **{m.predicted_key: self.predicted.get(m.name) for m in chosen}, VAL_LOSS: self.val_loss}

    def to_json(self, metrics: Sequence[str]) -> dict[str, Any]:
        """report.json's row: the selected metrics (`metrics_table` order) after the step, then their
        predicted-frames means, their protocol and the other protocols' means; `best_of` names each criterion
        this checkpoint is the best by."""
        chosen = mt.selected(metrics)
        return {"step": self.step, **{m.name: self.values.get(m.name) for m in chosen},
                **{m.predicted_key: self.predicted.get(m.name) for m in chosen},
                "videos": self.videos, "best": self.best, "best_of": sorted(self.best_of), "frames": self.frames,
                "shards": self.shards,
                "shards_planned": self.shards_planned, "failed_videos": self.failed_videos,
                "protocol": self.protocol, "val_loss": self.val_loss, "best_val_loss": self.best_val,
                "baseline": self.baseline or None,
                "other_protocols": {p: {**{m.name: v.get(m.name) for m in chosen},
                                        "videos": self.other_videos.get(p)} for p, v in self.others.items()}}


def mark_best(rows: Sequence[Checkpoint]) -> tuple[Checkpoint, ...]:
    """The rows with `best_of` set over the run's checkpoints (a baseline row is compared against, never marked)."""
    scored = [c for c in rows if not c.baseline]
    keys = list(dict.fromkeys(k for c in scored for k in c.criteria()))
    marks = dict(zip((c.step for c in scored), best_marks([c.criteria() for c in scored], keys)))
    return tuple(dataclasses.replace(c, best_of=marks.get(c.step, frozenset()) if not c.baseline else frozenset())
                 for c in rows)


@dataclass(frozen=True)
class StageHours:
    """GPU-hours a stage used (every attempt of its tasks: `TaskState.gpu_seconds`) beside the plan's estimate
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
class Uncompared:
    """A video of an evaluated shard that is in no mean: its pair failed, it has no reference, it was not
    generated, or infer skipped its input."""

    step: int
    video: str
    why: str
    protocol: str = ""
    """'' for the main protocol's means; another protocol's label (evaluate.protocol = "both"): in that one's
    means only it is missing."""


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
    generation: Generation | None = None
    """What the infer tasks' manifests say of their generation (None: none read)."""
    uncompared: tuple[Uncompared, ...] = ()
    run_dir: str = ""
    """The run directory reported on (a copy of a run has its id: `harness.report.build.results_dir` keeps their
    reports apart)."""

    @property
    def best(self) -> Checkpoint | None:
        return next((c for c in self.checkpoints if c.best), None)
