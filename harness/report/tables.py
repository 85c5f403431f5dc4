"""The report as text: the tables (title, header, rows) rendered by rich in the terminal and as markdown in
report.md, the one formatting of each number, and the report.json document.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.core import metrics_table as mt
from harness.report.records import PEAK_TFLOPS, VAL_LOSS, Checkpoint, Report, total_hours


def fmt(v: float | None, kind: str) -> str:
    """The one formatting of each number, shared by the terminal, markdown and tests."""
    if v is None:
        return "-"
    if (m := mt.find(kind)) is not None:
        return m.format(v)
    return {"loss": f"{v:.4f}", "rate": f"{v:,.1f}", "tflops": f"{v:.3g}", "mfu": f"{100 * v:.3g}%",
            "gpu_hours": f"{v:.3g}"}.get(kind, f"{v:g}")


HIDDEN = frozenset({"documents", "prompt_notes"})
"""Summary fields too long for a table (one row per video), or shown as their own table; all stay in
report.json."""


def _flat(data: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out += _flat(v, key + ".")
        elif isinstance(v, list):
            preview = ", ".join(str(x if not isinstance(x, dict) else x.get("path", x.get("name", x)))
                                for x in v[:3])
            out.append((key, f"{len(v)} item(s)" + (f": {preview}{', ...' if len(v) > 3 else ''}" if v else "")))
        else:
            out.append((key, f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)))
    return out


def tables(rep: Report) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table: rendered by rich in the terminal and as markdown in report.md."""
    out: list[tuple[str, list[str], list[list[str]]]] = []
    if rep.data:
        out.append(("data", ["field", "value"], [[k, v] for k, v in _flat(rep.data) if k not in HIDDEN]))
    if rep.data.get("prompt_notes"):
        out.append(("prompts the model sees differently", ["video", "note"],
                    [[str(n.get("name", "")), str(n.get("note", ""))] for n in rep.data["prompt_notes"]]))
    if rep.tokenize is not None:
        k = rep.tokenize
        out.append(("tokenize", ["shards", "clips", "task seconds", "clips/s per task"],
                    [[str(k.shards), str(k.clips), f"{k.seconds:.1f}", fmt(k.clips_per_s, "rate")]]))
    g = rep.generation
    if g is not None:
        out.append(("generation", ["infer tasks", "videos", "generated tokens", "decode s", "prefill s",
                                   "tokens/s per task", "KV cache"],
                    [[str(g.tasks), str(g.videos), f"{g.tokens:,}", f"{g.decode_seconds:.1f}",
                      f"{g.prefill_seconds:.1f}", fmt(g.tokens_per_s, "rate"), g.kv_cache]]))
    t = rep.training
    if t is not None:
        reached = str(t.steps) if t.steps >= t.last_step else f"{t.steps} (stopped before the planned end)"
        out.append(("training", ["step reached", "planned steps", "final loss", "tokens/s", "TFLOP/s per GPU",
                                 f"MFU (peak {PEAK_TFLOPS:g})"],
                    [[reached, str(t.last_step), fmt(t.final_loss, "loss"), fmt(t.tokens_per_s, "rate"),
                      fmt(t.tflops, "tflops"), fmt(t.mfu, "mfu")]]))
    out += _checkpoint_tables(rep)
    if rep.gpu_hours:
        used, planned = total_hours(rep.gpu_hours)
        out.append(("GPU-hours (used: elapsed x allocated GPUs; planned: harness plan's estimate)",
                     ["stage", "used", "planned"],
                     [[h.stage, fmt(h.used, "gpu_hours"), fmt(h.planned, "gpu_hours")] for h in rep.gpu_hours]
                     + [["run", fmt(used, "gpu_hours"), fmt(planned, "gpu_hours")]]))
    if rep.retries:
        out.append(("infrastructure retries (node failures; <stage>.retries)", ["task retried"],
                    [[line] for line in rep.retries]))
    if rep.failures:
        out.append(("failures", ["stage", "task", "state", "exit", "reason", "log"],
                    [[str(f.get("stage", "")), str(f.get("task", "")), str(f.get("state", "")),
                      str(f.get("exit_code", "") or "-"), str(f.get("reason", "") or "-"),
                      str(f.get("log", "") or "-")] for f in rep.failures]))
    if rep.missing:
        out.append(("missing results", ["file"], [[m] for m in rep.missing]))
    return out


UNCOMPARED_ROWS = 50
"""Rows of the not-compared table in the printed and markdown report (report.json holds every one)."""


def _cell(c: Checkpoint, key: str) -> str:
    """A criterion's value, marked `*` in the checkpoint that is the best by it."""
    v = fmt(c.criteria().get(key), "loss" if key == VAL_LOSS else key)
    return f"{v} *" if key in c.best_of else v


def _checkpoint_tables(rep: Report) -> list[tuple[str, list[str], list[list[str]]]]:
    """Per checkpoint its means over every evaluated video, over all compared frames and over the predicted
    frames (where evaluate has them), and its validation loss, the best by each marked; with input shards, how
    many shards those videos came from and a table naming each shard that has no result."""
    out: list[tuple[str, list[str], list[list[str]]]] = []
    if rep.checkpoints:
        frames = {c.frames for c in rep.checkpoints}
        same = len(frames) == 1
        sharded = any(c.shards_planned > 1 for c in rep.checkpoints)
        shown = mt.selected(rep.metrics)
        pred = [m for m in shown if any(c.predicted.get(m.name) is not None for c in rep.checkpoints)]
        others = list(dict.fromkeys(p for c in rep.checkpoints for p in c.others))
        val = any(c.val_loss is not None for c in rep.checkpoints)
        keys = [m.name for m in shown] + [m.predicted_key for m in pred]
        header = ["step"] + [m.column for m in shown] + [m.predicted_column for m in pred] + ["protocol"] \
            + [c for p in others for c in (*(f"{m.column} {p}" for m in shown), f"videos {p}")] \
            + (["val loss"] if val else []) + ["videos"] \
            + (["shards"] if sharded else []) + ["best"] + ([] if same else ["frames compared"])
        out.append(("checkpoints (* best of its column)", header,
                    [[c.label] + [_cell(c, k) for k in keys] + [c.protocol]
                     + [x for p in others for x in (*(fmt(c.others.get(p, {}).get(m.name), m.name) for m in shown),
                                                    str(c.other_videos.get(p, "-")))]
                     + ([_cell(c, VAL_LOSS)] if val else [])
                     + [str(c.videos)] + ([f"{c.shards}/{c.shards_planned}"] if sharded else [])
                     + ["*" if c.best else ""] + ([] if same else [c.frames or "-"]) for c in rep.checkpoints]))
        if same and frames != {""}:
            out.append(("frames compared (every checkpoint)", ["alignment"], [[frames.pop()]]))
    if rep.missing_shards:
        out.append(("missing shards (their videos are in no mean)", ["step", "shard", "infer/evaluate task", "why"],
                    [[str(m.step), str(m.shard), str(m.task), m.why] for m in rep.missing_shards]))
    return out + _uncompared_table(rep)


def _uncompared_table(rep: Report) -> list[tuple[str, list[str], list[list[str]]]]:
    """The videos of evaluated shards that are in no mean, the first `UNCOMPARED_ROWS` of them; a table of their
    own for those another protocol alone could not score."""
    out = []
    for proto in sorted(dict.fromkeys(u.protocol for u in rep.uncompared), key=bool):  # the main protocol first
        some = [u for u in rep.uncompared if u.protocol == proto]
        rows = [[str(u.step), u.video, u.why] for u in some[:UNCOMPARED_ROWS]]
        if len(some) > len(rows):
            rows.append(["", f"... {len(some) - len(rows)} more", "report.json lists them all"])
        title = f"videos not compared under {proto} ({len(some)}, in none of its means)" if proto else \
            f"videos not compared ({len(some)}, in no mean)"
        out.append((title, ["step", "video", "why"], rows))
    return out


def render(rep: Report, console: Console) -> None:
    console.print(f"[bold]report[/] {escape(rep.run_id)} ({escape(rep.name)})")
    for title, header, rows in tables(rep):  # cells hold names and error texts: literal, never rich markup
        table = Table(*map(escape, header), title=escape(title), title_justify="left")
        for r in rows:
            table.add_row(*map(escape, r))
        console.print(table)


def markdown(rep: Report) -> str:
    return "\n".join([f"# Report {rep.run_id}", "", f"Run name: `{rep.name}`", "", *markdown_tables(tables(rep))])


def markdown_tables(titled: list[tuple[str, list[str], list[list[str]]]]) -> list[str]:
    """(title, header, rows) tables as markdown lines, cells' `|` escaped: report.md's and compare.md's."""
    lines: list[str] = []
    for title, header, rows in titled:
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
        lines.append("")
    return lines


def _md_cell(text: str) -> str:
    """A cell as markdown reads it literally: one line (a newline would end the row), `|` escaped, and `<`/`>` as
    entities (a name like `<script>` is text, as on the HTML page)."""
    return " ".join(text.splitlines()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def to_json(rep: Report) -> dict[str, Any]:
    best = rep.best
    return {"run_id": rep.run_id, "run_dir": rep.run_dir, "name": rep.name, "data": rep.data,
            "tokenize": asdict(rep.tokenize) if rep.tokenize else None,
            "generation": asdict(rep.generation) if rep.generation else None,
            "training": asdict(rep.training) if rep.training else None, "peak_tflops": PEAK_TFLOPS,
            "loss_curve": [list(p) for p in rep.loss_curve],
            "val_curve": [list(p) for p in rep.val_curve],
            "metrics": list(rep.metrics),
            "checkpoints": [c.to_json(rep.metrics) for c in rep.checkpoints],
            "best_checkpoint": best.step if best else None,
            "best_checkpoint_val_loss": next((c.step for c in rep.checkpoints if c.best_val), None),
            "best_checkpoints": {k: [c.step for c in rep.checkpoints if k in c.best_of]
                                 for k in dict.fromkeys(k for c in rep.checkpoints for k in sorted(c.best_of))},
            "gpu_hours": _hours_json(rep),
            "failures": list(rep.failures), "retries": list(rep.retries), "missing": list(rep.missing),
            "missing_shards": [asdict(m) for m in rep.missing_shards],
            "uncompared": [{k: v for k, v in asdict(u).items() if v or k != "protocol"} for u in rep.uncompared]}


def _hours_json(rep: Report) -> dict[str, Any] | None:
    if not rep.gpu_hours:
        return None
    used, planned = total_hours(rep.gpu_hours)
    return {"used": used, "planned": planned, "stages": [asdict(h) for h in rep.gpu_hours]}
