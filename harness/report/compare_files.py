"""`harness compare`'s outputs: the table in the terminal, and `compare.{md,json,html}` (the HTML with validation
loss and PSNR against step, one line per run) under `<run.results_dir>/compare-<id>/`, each written atomically.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.core import metrics_table as mt
from harness.core.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from harness.report import html as report_html
from harness.report.compare import EXCLUDED_KEYS, VAL_LOSS, Comparison, Row, criteria
from harness.report.tables import fmt, markdown_tables

Tables = list[tuple[str, list[str], list[list[str]]]]


def compare_id(runs: tuple[str, ...]) -> str:
    """The same runs in the same order write the same folder (a rerun refreshes it)."""
    return hashlib.sha1("\n".join(runs).encode()).hexdigest()[:10]


def _cell(r: Row, key: str) -> str:
    v = fmt(r.values.get(key), "loss" if key == VAL_LOSS else key)
    return f"{v} *" if key in r.best else v


def _gpu_hours(v: float | None) -> str:
    return fmt(v, "gpu_hours")


def _columns(c: Comparison) -> list[tuple[str, str]]:
    """(criterion, header) of the value columns: the validation loss, each metric over all compared frames, and
    each over the predicted frames where any row has that mean."""
    named = {VAL_LOSS: "val loss", **{m.name: m.column for m in mt.selected(c.metrics)},
             **{m.predicted_key: m.predicted_column for m in mt.selected(c.metrics)}}
    return [(k, named[k]) for k in criteria(c.metrics)
            if k in (VAL_LOSS, *c.metrics) or any(r.values.get(k) is not None for r in c.rows)]


def tables(c: Comparison) -> Tables:
    """(title, header, rows): the checkpoints table, then the runs (GPU-hours used beside the plan's estimate)."""
    cols = _columns(c)
    header = (["run", "step"] + [h for _, h in cols] + ["videos", "protocol", "gen tok/s", "GPU-h (run)"]
              + list(c.differing))
    rows = [[r.run_id, r.label] + [_cell(r, k) for k, _ in cols]
            + [str(r.videos), r.protocol, fmt(r.gen_tokens_per_s, "rate"), _gpu_hours(r.gpu_hours)]
            + list(r.differing) for r in c.rows]
    runs = [[rid, name, _gpu_hours(used), _gpu_hours(planned)]
            for rid, name, (used, planned) in zip(c.runs, c.names, c.gpu_hours)]
    return [("checkpoints (* best of its column)", header, rows),
            ("runs", ["run", "name", "GPU-hours used", "GPU-hours planned"], runs)]


def _notes(c: Comparison) -> list[str]:
    keys = ", ".join(c.differing) if c.differing else "none"
    return [f"Spec keys that differ between the runs: {keys} (always left out: {', '.join(EXCLUDED_KEYS)}).",
            *c.notes]


def render(c: Comparison, console: Console) -> None:
    console.print(f"[bold]compare[/] {escape(', '.join(c.runs))}")
    for title, header, rows in tables(c):
        t = Table(*header, title=title, title_justify="left")
        for r in rows:
            t.add_row(*(escape(x) for x in r))
        console.print(t)
    for n in _notes(c):
        console.print(n, markup=False, soft_wrap=True)


def markdown(c: Comparison) -> str:
    lines = [f"# Compare {', '.join(c.runs)}", ""] + [f"{n}\n" for n in _notes(c)]
    return "\n".join(lines + markdown_tables(tables(c)))


def to_json(c: Comparison) -> dict[str, Any]:
    return {"runs": [{"run_id": rid, "name": n, "gpu_hours": used, "gpu_hours_planned": planned}
                     for rid, n, (used, planned) in zip(c.runs, c.names, c.gpu_hours)],
            "metrics": list(c.metrics), "differing_keys": list(c.differing), "excluded_keys": list(EXCLUDED_KEYS),
            "common_videos": list(c.common) if c.common is not None else None, "notes": list(c.notes),
            "rows": [{"run_id": r.run_id, "step": r.step, "label": r.label,
                      **{k: r.values.get(k) for k in criteria(c.metrics)}, "videos": r.videos,
                      "protocol": r.protocol, "gen_tokens_per_s": r.gen_tokens_per_s, "gpu_hours": r.gpu_hours,
                      "spec": dict(zip(c.differing, r.differing)), "best": sorted(r.best)} for r in c.rows]}


def plots(c: Comparison) -> dict[str, bytes]:
    """compare.png: validation loss (every logged step of each run, where there is any) and the first metric
    (PSNR by default; per checkpoint) against step, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, dict[str, list[tuple[int, float]]]]] = []
    if any(c.val_curves):
        panels.append(("validation loss", {rid: list(pts) for rid, pts in zip(c.runs, c.val_curves)}))
    if c.metrics:  # the first selected metric (PSNR, unless evaluate.metrics leaves it out)
        m = mt.get(c.metrics[0])
        panels.append((m.column, {rid: [(r.step, v) for r in c.rows if r.run_id == rid
                                        and (v := r.values.get(m.name)) is not None] for rid in c.runs}))
    if not panels:
        return {}
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), layout="constrained", squeeze=False)
    for ax, (ylabel, lines) in zip(axes[0], panels):
        for rid, pts in lines.items():
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=rid)
        ax.set(xlabel="step", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return {"compare.png": buf.getvalue()}


def write(c: Comparison, out_dir: Path) -> list[Path]:
    """compare.json, compare.md, compare.png and compare.html (the page last)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs = plots(c)
    for name, data in pngs.items():
        atomic_write_bytes(out_dir / name, data)
    atomic_write_json(out_dir / "compare.json", to_json(c))
    atomic_write_text(out_dir / "compare.md", markdown(c) + "".join(f"\n![{n}]({n})\n" for n in sorted(pngs)))
    page = report_html.page(f"Compare {', '.join(c.runs)}", [("notes", ["note"], [[n] for n in _notes(c)]),
                                                             *tables(c)], pngs, [])
    atomic_write_text(out_dir / "compare.html", page)
    return [out_dir / n for n in sorted(pngs)] + [out_dir / f for f in ("compare.json", "compare.md", "compare.html")]
