"""The evaluate stage's records, typed: per video, the shard file `eval/step-S.shard-K.json` (and the standalone
`harness evaluate` result), and the means over videos. Evaluate builds them and writes `to_json`; the report,
tracking and `bench compare` read files with `from_json`.

The JSON is the files' format as it has always been written: keys in the same order, a metric's keys present
only when `evaluate.metrics` selected it (named by `harness.core.metrics_table`). Reading is lenient, as the
report has always been: a missing or malformed field reads as its empty value, so older or partial files still
read and the report says what is missing rather than failing. Every result names its `protocol`
(evaluate.protocol: "aligned" or "tokenbench"; a file from before the key read as "aligned", the only protocol
then) and, for "aligned", the `resize` that fitted the reference (a file without it: "area", the only one then).
With evaluate.protocol = "both" the shard file is the aligned result plus `other_protocols`, a list of results.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from harness.core import metrics_table as mt


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _int(v: Any, default: int = 0) -> int:
    n = _num(v)
    return int(n) if n is not None and math.isfinite(n) else default


def _ints(v: Any) -> tuple[int, ...]:
    return tuple(_int(x) for x in v) if isinstance(v, list) else ()


def _strs(v: Any) -> tuple[str, ...]:
    return tuple(str(x) for x in v) if isinstance(v, list) else ()


def _dict(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


@dataclass(frozen=True)
class Scores:
    """The selected metrics over some frames of one video (all compared frames, or the predicted ones)."""

    frames: int
    values: Mapping[str, float | None]
    """Metric name -> value, the selected metrics only; None where a metric is infinite for identical clips."""
    identical: bool | None = None
    """None where no selected metric is `infinite_when_identical` (the key is then absent)."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"frames": self.frames}
        for m in mt.selected(self.values):
            out[m.name] = self.values[m.name]
            if m.infinite_when_identical:
                out["identical"] = bool(self.identical)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Scores:
        values = {m.name: _num(d.get(m.name)) for m in mt.METRICS if m.name in d}
        ident = d.get("identical")
        return cls(_int(d.get("frames")), values, bool(ident) if ident is not None else None)


@dataclass(frozen=True)
class VideoRecord:
    """One scored (generated, reference) pair; frame alignment as `harness.stages.evaluate` describes it."""

    name: str
    generated: str
    reference: str
    alignment: str
    """'sidecar' (frames mapped by the infer stage's sidecar), 'identity' (frame i vs frame i) or 'tokenbench'
    (frame i vs frame i of both files after TokenBench's preprocessing)."""
    generated_frames: tuple[int, ...]
    reference_frames: tuple[int, ...]
    """Source frame of each compared generated frame (same length)."""
    frames_without_reference: tuple[int, ...]
    context_frames: int
    per_frame: Mapping[str, tuple[float, ...]]
    """Metric name -> one value per compared frame, for the metrics whose row says `per_frame`."""
    scores: Scores
    predicted: Scores | None = None
    """Over the predicted frames alone, where a sidecar says which frames reproduce the context."""
    prompt: str | None = None
    """Video2World: the prompt the generation followed (from its sidecar)."""

    def value(self, name: str) -> float | None:
        return self.scores.values.get(name)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name, "generated": self.generated, "reference": self.reference,
            "alignment": self.alignment,
            "compared_frames": {"generated": list(self.generated_frames), "reference": list(self.reference_frames)},
            "frames_without_reference": list(self.frames_without_reference), "context_frames": self.context_frames}
        for m in mt.selected(self.per_frame):
            out[m.per_frame_key] = list(self.per_frame[m.name])
        out.update(self.scores.to_json())
        if self.predicted is not None:
            out["predicted"] = self.predicted.to_json()
        if self.prompt is not None:
            out["prompt"] = self.prompt
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> VideoRecord:
        cf = _dict(d.get("compared_frames"))
        per_frame = {m.name: tuple(float(x) for x in d[m.per_frame_key] if _num(x) is not None) for m in mt.METRICS
                     if isinstance(d.get(m.per_frame_key), list)}
        pred = d.get("predicted")
        return cls(str(d.get("name", "")), str(d.get("generated") or ""), str(d.get("reference") or ""),
                   str(d.get("alignment", "identity")), _ints(cf.get("generated")), _ints(cf.get("reference")),
                   _ints(d.get("frames_without_reference")), _int(d.get("context_frames")), per_frame,
                   Scores.from_json(d), Scores.from_json(pred) if isinstance(pred, Mapping) else None,
                   d["prompt"] if isinstance(d.get("prompt"), str) else None)


@dataclass(frozen=True)
class Failure:
    """A pair evaluate could not score; `error` is the exception's class and message."""

    name: str
    error: str
    generated: str = ""
    reference: str = ""

    def to_json(self) -> dict[str, Any]:
        """As the result files list it (the paths are in the task's log)."""
        return {"name": self.name, "error": self.error}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Failure:
        return cls(str(d.get("name", "")), str(d.get("error", "")))


@dataclass(frozen=True)
class Means:
    """Unweighted means over videos (`harness.core.evalstats.video_means`) of the selected metrics."""

    videos: int
    values: Mapping[str, float | None]
    """Metric name -> mean over every compared frame's value; selected metrics only."""
    predicted: Mapping[str, float | None] = field(default_factory=dict)
    """Metric name -> mean over the videos' predicted-frames values."""
    identical_videos: tuple[str, ...] = ()
    """Left out of the means of the metrics that are infinite for identical clips."""

    def value(self, name: str) -> float | None:
        return self.values.get(name)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"videos": self.videos}
        for m in mt.selected(self.values):
            out[m.name] = self.values[m.name]
            out[m.predicted_key] = self.predicted.get(m.name)
            if m.infinite_when_identical:
                out["identical_videos"] = list(self.identical_videos)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Means:
        there = [m for m in mt.METRICS if m.name in d]
        return cls(_int(d.get("videos")), {m.name: _num(d.get(m.name)) for m in there},
                   {m.name: _num(d.get(m.predicted_key)) for m in there}, _strs(d.get("identical_videos")))


@dataclass(frozen=True)
class EvalResult:
    """What one evaluation writes (a shard of the evaluate stage, or `harness evaluate`): videos and means."""

    frames: str
    """Which frames were compared with which (`evalstats.frames_note`)."""
    backend: str
    engine: str
    device: str
    metrics: tuple[str, ...]
    """evaluate.metrics, as the spec lists them."""
    videos: tuple[VideoRecord, ...]
    mean: Means
    failed: tuple[Failure, ...] = ()
    missing_reference: tuple[str, ...] = ()
    missing_generated: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    protocol: str = "aligned"
    """evaluate.protocol of these numbers: aligned or tokenbench."""
    resize: str = "upstream"
    """aligned: video.resize, how the reference was fitted to the generated size; '' for tokenbench."""

    @property
    def left_out(self) -> bool:
        """Whether any video of the shard is in no mean: a pair failed, a reference or a generation missing."""
        return bool(self.failed or self.missing_reference or self.missing_generated)

    @property
    def protocol_label(self) -> str:
        """The protocol of these numbers as every output names it: 'tokenbench', or 'aligned' with the
        reference's resize."""
        return f"aligned, resize {self.resize}" if self.protocol == "aligned" and self.resize else self.protocol

    def to_json(self) -> dict[str, Any]:
        return {"frames": self.frames, "backend": self.backend, "engine": self.engine, "device": self.device,
                "metrics": list(self.metrics), "videos": [v.to_json() for v in self.videos],
                "mean": self.mean.to_json(), "failed": [f.to_json() for f in self.failed],
                "missing_reference": list(self.missing_reference),
                "missing_generated": list(self.missing_generated), "notes": list(self.notes),
                "protocol": self.protocol, "resize": self.resize}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> EvalResult:
        frames = d.get("frames", "")
        videos = d.get("videos")
        return cls(frames if isinstance(frames, str) else json.dumps(frames), str(d.get("backend", "")),
                   str(d.get("engine", "")), str(d.get("device", "")), _strs(d.get("metrics")),
                   tuple(VideoRecord.from_json(v) for v in (videos if isinstance(videos, list) else [])
                         if isinstance(v, Mapping)),
                   Means.from_json(_dict(d.get("mean"))),
                   tuple(Failure.from_json(f) for f in _list(d.get("failed")) if isinstance(f, Mapping)),
                   _strs(d.get("missing_reference")), _strs(d.get("missing_generated")), _strs(d.get("notes")),
                   str(d.get("protocol") or "aligned"), str(d.get("resize", "area") or ""))

    def with_others(self, others: Sequence[EvalResult]) -> dict[str, Any]:
        """This result's JSON followed by `other_protocols` (only when there are any)."""
        return {**self.to_json(), **({"other_protocols": [o.to_json() for o in others]} if others else {})}

    @classmethod
    def others_from_json(cls, d: Mapping[str, Any]) -> tuple[EvalResult, ...]:
        return tuple(cls.from_json(o) for o in _list(d.get("other_protocols")) if isinstance(o, Mapping))


def _list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


@dataclass(frozen=True)
class ShardRecord:
    """One evaluate task's file, `eval/step-S.shard-K.json`: the (checkpoint, input shard) it scored and its
    result."""

    step: int
    checkpoint_index: int
    shard: int
    shards: int
    generated_dir: str
    result: EvalResult
    others: tuple[EvalResult, ...] = ()
    """The same pairs under the other protocols of evaluate.protocol = "both"."""

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "checkpoint_index": self.checkpoint_index, "shard": self.shard,
                "shards": self.shards, "generated_dir": self.generated_dir, **self.result.with_others(self.others)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ShardRecord:
        return cls(_int(d.get("step")), _int(d.get("checkpoint_index")), _int(d.get("shard")),
                   _int(d.get("shards"), 1),
                   str(d.get("generated_dir", "")), EvalResult.from_json(d), EvalResult.others_from_json(d))

    def under(self, protocol: str) -> EvalResult | None:
        """This shard's result under `protocol`, if it was evaluated so."""
        return next((r for r in (self.result, *self.others) if r.protocol == protocol), None)

    def protocols(self) -> tuple[str, ...]:
        return tuple(r.protocol for r in (self.result, *self.others))


@dataclass(frozen=True)
class CheckpointEval:
    """One checkpoint's evaluation over the shards that were read (`evalstats.merge_shards`)."""

    videos: tuple[VideoRecord, ...]
    mean: Means
    frames: str
    failed: tuple[Failure, ...]
    shards: int
    """Shard files read."""


def videos_of(shards: Sequence[ShardRecord]) -> tuple[VideoRecord, ...]:
    return tuple(v for s in shards for v in s.result.videos)
