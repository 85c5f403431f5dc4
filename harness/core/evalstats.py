"""Summary numbers over evaluated videos: the one definition of a mean PSNR / SSIM and of the "frames compared"
note, used by the evaluate stage for its shard and by the report for a checkpoint's shards together.

Pure and light (no numpy, no video libraries): the report imports it, and evaluate's start-up should not
grow for it. The input is the per-video records the evaluate stage writes (`name`, `psnr` (None for an
identical clip), `ssim`, `identical`, `alignment`, `context_frames`, optional `predicted`).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

ALIGNMENT_CONVENTION = ("generated frame g = reference frame reference_frames[g] of the source video, resized to "
                        "cover the generated size and center-cropped")


def _mean(rows: Sequence[Mapping[str, Any]], key: str) -> float | None:
    vals = [float(r[key]) for r in rows if r.get(key) is not None]
    return math.fsum(vals) / len(vals) if vals else None


def video_means(videos: Sequence[Mapping[str, Any]], metrics: Sequence[str] = ("psnr", "ssim")) -> dict[str, Any]:
    """Unweighted means over videos (each video counts once, whatever its frame count) of the selected
    `metrics` (evaluate.metrics); identical clips have no finite PSNR and are left out of the PSNR mean and
    listed instead."""
    pred = [r["predicted"] for r in videos if "predicted" in r]
    out: dict[str, Any] = {"videos": len(videos)}
    if "psnr" in metrics:
        out.update(psnr=_mean(videos, "psnr"), predicted_psnr=_mean(pred, "psnr"),
                   identical_videos=sorted(str(r["name"]) for r in videos if r.get("identical")))
    if "ssim" in metrics:
        out.update(ssim=_mean(videos, "ssim"), predicted_ssim=_mean(pred, "ssim"))
    return out


def frames_note(videos: Sequence[Mapping[str, Any]]) -> str:
    """One line for the report: which frames were compared with which."""
    side = [r for r in videos if r.get("alignment") == "sidecar"]
    parts = []
    if side:
        ctx = sorted({int(r["context_frames"]) for r in side})
        parts.append(f"{len(side)} video(s) aligned by sidecar ({ALIGNMENT_CONVENTION}; generated frames "
                     f"0..{ctx[0] - 1 if len(ctx) == 1 else '(C-1)'} reproduce the context, the rest are predicted)")
    if len(side) < len(videos):
        parts.append(f"{len(videos) - len(side)} video(s) without sidecar: frame i compared with frame i")
    return "; ".join(parts) or "no videos compared"
