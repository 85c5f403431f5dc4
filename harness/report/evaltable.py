"""`harness evaluate`'s terminal output: one table row per video and a mean row, instead of the full JSON (frame
indices, per-frame SSIM), which goes to a file. Pure rendering; the command decides where the file goes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

DEFAULT_NAME = "evaluate.json"
"""Written beside the generated videos unless `--out` says otherwise."""


def default_out(generated: str | Path) -> Path:
    return Path(generated) / DEFAULT_NAME


def _num(v: float | None, digits: int, identical: bool = False) -> str:
    if v is None:
        return "inf (identical)" if identical else "-"
    return f"{v:.{digits}f}"


def _frames(r: dict[str, Any]) -> str:
    g = r.get("compared_frames", {}).get("generated", [])
    ref = r.get("compared_frames", {}).get("reference", [])
    if not g:
        return "-"
    span = f"{g[0]}-{g[-1]} vs {ref[0]}-{ref[-1]}" if ref else f"{g[0]}-{g[-1]}"
    return f"{len(g)} ({span})"


def table(result: dict[str, Any]) -> Table:
    """Per video: PSNR (dB) and SSIM over every compared frame, and over the predicted frames only (where a
    sidecar says which frames reproduce the context); the last row is the mean over videos."""
    t = Table(title=f"TokenBench PSNR / SSIM ({result.get('backend')}, {result.get('engine')}, "
                    f"{result.get('device')})", caption=result.get("frames", ""))
    for col, justify in (("video", "left"), ("PSNR dB", "right"), ("SSIM", "right"), ("predicted PSNR", "right"),
                         ("predicted SSIM", "right"), ("frames (generated vs reference)", "left")):
        t.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in result.get("videos", []):
        pred = r.get("predicted") or {}
        t.add_row(r["name"], _num(r.get("psnr"), 2, r.get("identical", False)), _num(r.get("ssim"), 4),
                  _num(pred.get("psnr"), 2, pred.get("identical", False)), _num(pred.get("ssim"), 4), _frames(r))
    m = result.get("mean", {})
    t.add_section()
    t.add_row(f"mean of {m.get('videos', 0)}", _num(m.get("psnr"), 2), _num(m.get("ssim"), 4),
              _num(m.get("predicted_psnr"), 2), _num(m.get("predicted_ssim"), 4), "", style="bold")
    return t


def problems(result: dict[str, Any]) -> list[str]:
    """Lines for what was not compared: failures, unmatched names, identical clips left out of the PSNR mean."""
    out = [f"failed: {f['name']}: {f['error']}" for f in result.get("failed", [])]
    if result.get("missing_reference"):
        out.append(f"no reference for: {', '.join(result['missing_reference'])}")
    if result.get("missing_generated"):
        out.append(f"not generated: {', '.join(result['missing_generated'])}")
    same = result.get("mean", {}).get("identical_videos", [])
    if same:
        out.append(f"identical to the reference (infinite PSNR, left out of the PSNR mean): {', '.join(same)}")
    return out
