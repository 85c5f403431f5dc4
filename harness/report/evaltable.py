"""`harness evaluate`'s terminal output: one table row per video and a mean row, instead of the full JSON (frame
indices, per-frame SSIM), which goes to a file. Pure rendering; the command decides where the file goes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from harness.core import metrics_table as mt
from harness.core.evalrecords import EvalResult, VideoRecord

DEFAULT_NAME = "evaluate.json"
"""Written beside the generated videos unless `--out` says otherwise."""


def default_out(generated: str | Path) -> Path:
    return Path(generated) / DEFAULT_NAME


def _num(v: float | None, digits: int, identical: bool = False) -> str:
    if v is None:
        return "inf (identical)" if identical else "-"
    return f"{v:.{digits}f}"


def _frames(v: VideoRecord) -> str:
    g, ref = v.generated_frames, v.reference_frames
    if not g:
        return "-"
    span = f"{g[0]}-{g[-1]} vs {ref[0]}-{ref[-1]}" if ref else f"{g[0]}-{g[-1]}"
    return f"{len(g)} ({span})"


def _cell(m: mt.Metric, v: float | None, identical: bool | None = False) -> str:
    return _num(v, m.digits, bool(identical) and m.infinite_when_identical)


def table(result: dict[str, Any]) -> Table:
    """Per video: each computed metric over every compared frame, and over the predicted frames only (where a
    sidecar says which frames reproduce the context); the last row is the mean over videos."""
    r = EvalResult.from_json(result)
    shown = mt.selected(r.metrics or None)
    t = Table(title=f"{' / '.join(m.label for m in shown)}, protocol {r.protocol_label} "
                    f"({r.backend}, {r.engine}, {r.device})", caption=escape(r.frames))
    t.add_column("video", justify="left")
    for col in [f"{m.label} {m.unit}".strip() for m in shown] + [f"predicted {m.label}" for m in shown]:
        t.add_column(col, justify="right")
    t.add_column("frames (generated vs reference)", justify="left")
    for v in r.videos:
        pred = v.predicted
        pred_identical = pred.identical if pred else None
        t.add_row(escape(v.name), *[_cell(m, v.value(m.name), v.scores.identical) for m in shown],
                  *[_cell(m, pred.values.get(m.name) if pred else None, pred_identical) for m in shown],
                  _frames(v))
    t.add_section()
    t.add_row(f"mean of {r.mean.videos}", *[_cell(m, r.mean.value(m.name)) for m in shown],
              *[_cell(m, r.mean.predicted.get(m.name)) for m in shown], "", style="bold")
    return t


def problems(result: dict[str, Any]) -> list[str]:
    """Lines for what was not compared: failures, unmatched names, frames past the reference's end, identical
    clips left out of the means of the metrics that are infinite for them."""
    out = [f"failed: {f['name']}: {f['error']}" for f in result.get("failed", [])]
    if result.get("missing_reference"):
        out.append(f"no reference for: {', '.join(result['missing_reference'])}")
    if result.get("missing_generated"):
        out.append(f"not generated: {', '.join(result['missing_generated'])}")
    for v in result.get("videos", []):
        gone = v.get("frames_without_reference") or []
        if gone:
            out.append(f"{v.get('name')}: {len(gone)} generated frame(s) without a reference frame, not compared "
                       f"(generated {gone[0]}-{gone[-1]}: the reference ends first)")
    same = result.get("mean", {}).get("identical_videos", [])
    if same:
        label = " / ".join(m.label for m in mt.METRICS if m.infinite_when_identical)
        out.append(f"identical to the reference (infinite {label}, left out of the {label} mean): {', '.join(same)}")
    return out
