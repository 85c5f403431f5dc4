"""The report's files under `<run.results_dir>/<run id>/`: report.json, report.md, the PNG plots and report.html
with its media, each written atomically (temp + rename), so a reader never sees half a file.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from harness.core import metrics_table as mt
from harness.core.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from harness.report import html as report_html
from harness.report.records import Report
from harness.report.tables import markdown, tables, to_json


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def plots(rep: Report) -> dict[str, bytes]:
    """loss.png (training and validation loss vs step) and eval.png (a panel per selected metric whose row says
    `plot`, vs checkpoint step), where there is data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    if rep.loss_curve or rep.val_curve:
        fig = loss_figure(rep, plt)
        out["loss.png"] = _png(fig)
        plt.close(fig)
    scored = [c for c in rep.checkpoints if any(v is not None for v in c.values.values())]
    keys = [m for m in mt.selected(rep.metrics) if m.plot]
    if scored and keys:
        fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.5), layout="constrained", squeeze=False)
        for ax, m in zip(axes[0], keys):
            pts = [(c.step, v) for c in scored if (v := c.value(m.name)) is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
            best = rep.best
            if best is not None and best.value(m.name) is not None:
                ax.scatter([best.step], [best.value(m.name)], s=120, facecolors="none", edgecolors="red",
                           label=f"best (step {best.step})")
                ax.legend(loc="best", fontsize=8)
            ax.set(xlabel="checkpoint step", ylabel=m.column)
            ax.grid(alpha=0.3)
        fig.suptitle(f"{rep.name}: evaluation")
        out["eval.png"] = _png(fig)
        plt.close(fig)
    return out


SEED_TARGET = (6.0, 7.0)
"""The seed's "target loss 6-7": the real models' training loss in nats (uniform over 64,000 codes is 11.07);
shaded on the loss plot for orientation, not a goal for the tiny presets."""


def loss_figure(rep: Report, plt: Any) -> Any:
    """Training and validation loss vs step on one axis, with the seed's target band shaded and labelled
    (`plt`: matplotlib.pyplot on the Agg backend)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.axhspan(*SEED_TARGET, color="tab:green", alpha=0.15,
               label=f"seed's target for the real models ({SEED_TARGET[0]:g}-{SEED_TARGET[1]:g})")
    if rep.loss_curve:
        ax.plot([s for s, _ in rep.loss_curve], [v for _, v in rep.loss_curve], lw=1.2, label="training loss")
    if rep.val_curve:
        ax.plot([s for s, _ in rep.val_curve], [v for _, v in rep.val_curve], marker="o", lw=1.2,
                color="tab:orange", label="validation loss")
    ax.set(xlabel="step", ylabel="loss (nats)", title=f"{rep.name}: training and validation loss")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def write(rep: Report, out_dir: Path) -> list[Path]:
    """report.json, report.md, the plots and report.html (with its media), each written atomically; returns
    the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs = plots(rep)
    doc = {**to_json(rep), "plots": sorted(pngs)}
    written = []
    for name, data in pngs.items():
        atomic_write_bytes(out_dir / name, data)
        written.append(out_dir / name)
    atomic_write_json(out_dir / "report.json", doc)
    md = markdown(rep) + "".join(f"\n![{n}]({n})\n" for n in sorted(pngs))
    atomic_write_text(out_dir / "report.md", md)
    html_files = report_html.write(f"Report {rep.run_id} ({rep.name})", tables(rep), pngs, rep.samples, out_dir)
    return written + [out_dir / "report.json", out_dir / "report.md"] + html_files
