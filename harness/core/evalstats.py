"""Summary numbers over evaluated videos: the one definition of a metric's mean and of the "frames compared"
note, used by the evaluate stage for its shard and by the report for a checkpoint's shards together.

Pure and light (no numpy, no video libraries): the report imports it, and evaluate's start-up should not
grow for it. The input is the per-video records the evaluate stage writes (`harness.core.evalrecords`).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

from harness.core import metrics_table as mt
from harness.core.evalrecords import CheckpointEval, Means, ShardRecord, VideoRecord, videos_of

ALIGNMENT_CONVENTION = ("generated frame g = reference frame reference_frames[g] of the source video, resized to "
                        "cover the generated size and center-cropped")


def _mean(vals: Iterable[float | None]) -> float | None:
    got = [float(v) for v in vals if v is not None]
    return math.fsum(got) / len(got) if got else None


def video_means(videos: Sequence[VideoRecord], metrics: Sequence[str] | None = None) -> Means:
    """Unweighted means over videos (each video counts once, whatever its frame count) of the selected
    `metrics` (evaluate.metrics; all when None); a metric infinite for identical clips leaves them out of its
    mean, and they are listed instead."""
    chosen = mt.selected(metrics)
    pred = [v.predicted for v in videos if v.predicted is not None]
    identical = any(m.infinite_when_identical for m in chosen)
    return Means(len(videos), {m.name: _mean(v.value(m.name) for v in videos) for m in chosen},
                 {m.name: _mean(p.values.get(m.name) for p in pred) for m in chosen},
                 tuple(sorted(v.name for v in videos if v.scores.identical)) if identical else ())


def frames_note(videos: Sequence[VideoRecord]) -> str:
    """One line for the report: which frames were compared with which."""
    side = [v for v in videos if v.alignment == "sidecar"]
    parts = []
    if side:
        ctx = sorted({v.context_frames for v in side})
        parts.append(f"{len(side)} video(s) aligned by sidecar ({ALIGNMENT_CONVENTION}; generated frames "
                     f"0..{ctx[0] - 1 if len(ctx) == 1 else '(C-1)'} reproduce the context, the rest are predicted)")
        short = [v.name for v in side if all(g < v.context_frames for g in v.generated_frames)]
        if short:  # a source that ends within the context: its frames measure the tokenizer alone
            parts.append(f"{len(short)} of them compared on context frames only (no predicted frame has a "
                         f"reference: the source ends first), so the predicted means are over {len(side) - len(short)}:"
                         f" {', '.join(short[:5])}{', ...' if len(short) > 5 else ''}")
    tb = sum(v.alignment == "tokenbench" for v in videos)
    if tb:
        parts.append(f"{tb} video(s) under the tokenbench protocol: TokenBench's preprocessing of both files, "
                     "frame i compared with frame i")
    if len(side) + tb < len(videos):
        parts.append(f"{len(videos) - len(side) - tb} video(s) without sidecar: frame i compared with frame i")
    return "; ".join(parts) or "no videos compared"


def merge_shards(shards: Sequence[ShardRecord], metrics: Sequence[str] | None = None) -> CheckpointEval:
    """One checkpoint's evaluation from its shards' files: a single file as written, several combined over
    their per-video records (means recomputed over all videos, not averaged over shards)."""
    if len(shards) == 1:
        r = shards[0].result
        return CheckpointEval(r.videos, r.mean, r.frames, r.failed, 1)
    videos = videos_of(shards)
    return CheckpointEval(videos, video_means(videos, metrics), frames_note(videos),
                          tuple(f for s in shards for f in s.result.failed), len(shards))
