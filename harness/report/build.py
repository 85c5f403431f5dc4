"""The run report: what the data, training and evaluation stages produced, as rich tables in the terminal
and as results files (`report.md`, `report.json`, PNG plots, and `report.html` with its `media/`, see
`harness.report.html`) under `<run.results_dir>/<run id>/`.

It reads only the run directory's result files (dataset summary, metrics.jsonl, eval/step-*.json); the
caller passes the failures it knows about (`harness report` from squeue/sacct, the report stage from the
completion markers), so this module never talks to Slurm. Missing inputs are reported, never invented.
Where evaluate is fanned out over input shards, a checkpoint's numbers are computed over the per-video
metrics of all its shards that were evaluated (`evalstats.video_means`, the same means evaluate writes), and
each shard without its file is named with its (checkpoint, shard), its task index and, where known, why.
"""

from __future__ import annotations

import io
import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from rich.console import Console
from rich.table import Table

from harness.core import plan as plan_mod
from harness.report import html as report_html
from harness.core.evalstats import frames_note, video_means
from harness.core.paths import RunPaths
from harness.core.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from harness.core.spec import RunSpec
    from harness.core.trainplan import TrainingPlan

PEAK_TFLOPS = 989.0
"""Dense bf16 peak of one H100/H200 SXM GPU, TFLOP/s: the one MFU denominator of the project."""


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
    psnr: float | None
    ssim: float | None
    videos: int
    best: bool
    """Highest mean PSNR (SSIM breaks ties) among the evaluated checkpoints."""
    frames: str = ""
    """Which frames were compared, as the evaluate stage states it."""
    shards: int = 1
    """Input shards whose evaluate results were read (the videos are theirs)."""
    shards_planned: int = 1
    failed_videos: int = 0
    """Pairs the evaluate stage could not score (named in the shard files' `failed`)."""


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
    checkpoints: tuple[Checkpoint, ...]
    failures: tuple[dict[str, Any], ...]
    missing: tuple[str, ...]
    """Result files that were expected but absent (a stage failed or has not run)."""
    metrics: tuple[str, ...] = ("psnr", "ssim")
    """evaluate.metrics: the only quality columns shown."""
    missing_shards: tuple[MissingShard, ...] = ()
    samples: tuple[report_html.Sample, ...] = ()
    """The evaluated videos report.html shows (the first few of each checkpoint)."""

    @property
    def best(self) -> Checkpoint | None:
        return next((c for c in self.checkpoints if c.best), None)


# ------------------------------------------------------------------------------------------ build
def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl lines; a torn last line (the writer was killed mid-line) is skipped, not fatal."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            out.append(row)
    return sorted(out, key=lambda r: r["step"])


def _median(rows: Sequence[dict[str, Any]], key: str) -> float | None:
    vals = [v for v in (_num(r.get(key)) for r in rows) if v is not None]
    return statistics.median(vals) if vals else None


def training(rows: list[dict[str, Any]], last_step: int) -> Training | None:
    if not rows:
        return None
    steady = rows[1:] or rows
    tflops = _median(steady, "tflops")
    losses = [r for r in rows if _num(r.get("loss")) is not None]
    return Training(steps=rows[-1]["step"], last_step=last_step, logged=len(rows),
                    final_loss=float(losses[-1]["loss"]) if losses else None,
                    tokens_per_s=_median(steady, "tokens_per_s"), tflops=tflops,
                    mfu=tflops / PEAK_TFLOPS if tflops is not None else None)


def tokenize_stats(paths: RunPaths, shards: int) -> Tokenize | None:
    """Summed over the shard manifests' `stats` (clips, seconds) written by the tokenize tasks."""
    clips, seconds, n = 0, 0.0, 0
    for s in range(shards):
        try:
            stats = json.loads(paths.shard_manifest(s).read_text(encoding="utf-8")).get("stats") or {}
        except (OSError, ValueError):
            continue
        c, sec = _num(stats.get("clips")), _num(stats.get("seconds"))
        if c is None or sec is None:
            continue
        clips, seconds, n = clips + int(c), seconds + sec, n + 1
    if not n:
        return None
    return Tokenize(n, clips, seconds, clips / seconds if seconds > 0 else None)


def merge_shards(shards: Sequence[dict[str, Any]], metrics: Sequence[str] = ("psnr", "ssim")) -> dict[str, Any]:
    """One checkpoint's evaluate result from its shards' files: a single file as written, several combined
    over their per-video records (means recomputed over all videos, not averaged over shards)."""
    if len(shards) == 1:
        return shards[0]
    videos = [v for e in shards for v in (e.get("videos") or []) if isinstance(v, dict)]
    return {"videos": videos, "mean": video_means(videos, metrics), "frames": frames_note(videos),
            "failed": [f for e in shards for f in (e.get("failed") or [])]}


def checkpoints(evals: dict[int, list[dict[str, Any]]], shards_planned: int = 1,
                metrics: Sequence[str] = ("psnr", "ssim")) -> tuple[Checkpoint, ...]:
    """step -> the evaluate results read for it (one per shard). Best: highest mean PSNR (SSIM breaks ties),
    or highest SSIM where PSNR is not among `metrics`."""
    rows = []
    for step in sorted(evals):
        e = merge_shards(evals[step], metrics)
        mean = e.get("mean") or {}
        frames = e.get("frames", "")
        rows.append((step, _num(mean.get("psnr")) if "psnr" in metrics else None,
                     _num(mean.get("ssim")) if "ssim" in metrics else None, len(e.get("videos") or []),
                     frames if isinstance(frames, str) else json.dumps(frames), len(evals[step]),
                     len(e.get("failed") or [])))
    k = 1 if "psnr" in metrics else 2
    scored = [r for r in rows if r[k] is not None]
    best = max(scored, key=lambda r: (r[k], r[2] if r[2] is not None else -1.0))[0] if scored else None
    return tuple(Checkpoint(s, p, q, n, s == best, f, got, shards_planned, bad)
                 for s, p, q, n, f, got, bad in rows)


def _read(path: Path, missing: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        missing.append(str(path))
    except ValueError as e:
        missing.append(f"{path} (unreadable: {e})")
    return None


def build(paths: RunPaths, spec: RunSpec, failures: Iterable[dict[str, Any]], plan: TrainingPlan) -> Report:
    """`plan`: the run's training plan (`harness.core.trainplan`): its checkpoint steps are the evaluations expected,
    its last step where training ends."""
    checkpoint_steps = plan.checkpoint_steps
    missing: list[str] = []
    data = _read(paths.dataset_summary, missing)
    rows = read_metrics(paths.metrics_jsonl) if paths.metrics_jsonl.is_file() else []
    if not rows:
        missing.append(str(paths.metrics_jsonl))
    failures = tuple(failures)
    evals, lost = read_evals(paths, spec, checkpoint_steps, failures, missing)
    curve = tuple((r["step"], float(r["loss"])) for r in rows if _num(r.get("loss")) is not None)
    metrics = tuple(spec.evaluate.metrics)
    return Report(run_id=paths.run_id, name=spec.run.name, data=data if isinstance(data, dict) else {},
                  tokenize=tokenize_stats(paths, spec.tokenize.shards), training=training(rows, plan.last_step),
                  loss_curve=curve, checkpoints=checkpoints(evals, plan_mod.infer_shards(spec.infer), metrics),
                  failures=failures, missing=tuple(missing), missing_shards=tuple(lost), metrics=metrics,
                  samples=report_html.pick_samples(evals))


def read_evals(paths: RunPaths, spec: RunSpec, checkpoint_steps: Sequence[int], failures: Sequence[dict[str, Any]],
               missing: list[str]) -> tuple[dict[int, list[dict[str, Any]]], list[MissingShard]]:
    """Every (checkpoint, shard)'s evaluate file; the absent ones become MissingShard rows that say why,
    from the failures of that pair's infer or evaluate task when the caller knows them."""
    evals: dict[int, list[dict[str, Any]]] = {}
    lost: list[MissingShard] = []
    known = {(f.get("stage"), f.get("task")): f for f in failures}
    for c, step in enumerate(checkpoint_steps):
        for k in range(plan_mod.infer_shards(spec.infer)):
            task = plan_mod.infer_task_index(spec, c, k)
            e = _read(paths.eval_json(step, plan_mod.infer_task(spec, task).key), missing)
            if isinstance(e, dict):
                evals.setdefault(step, []).append(e)
                continue
            why = [f"{st}[{task}] {f.get('state', '')}" + (f" ({f['reason']})" if f.get("reason") else "")
                   for st in ("infer", "evaluate") if (f := known.get((st, task)))]
            lost.append(MissingShard(step, k, task, "; ".join(why) or "no result file"))
    return evals, lost


def results_dir(spec: RunSpec, paths: RunPaths) -> Path:
    return Path(spec.run.results_dir).expanduser() / paths.run_id


# ------------------------------------------------------------------------------------------ format
def fmt(v: float | None, kind: str) -> str:
    """The one formatting of each number, shared by the terminal, markdown and tests."""
    if v is None:
        return "-"
    return {"loss": f"{v:.4f}", "psnr": f"{v:.2f}", "ssim": f"{v:.4f}", "rate": f"{v:,.1f}",
            "tflops": f"{v:.3g}", "mfu": f"{100 * v:.3g}%"}.get(kind, f"{v:g}")


HIDDEN = frozenset({"documents"})
"""Summary fields too long for a table (one row per video); they stay in report.json."""


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
    if rep.tokenize is not None:
        k = rep.tokenize
        out.append(("tokenize", ["shards", "clips", "task seconds", "clips/s per task"],
                    [[str(k.shards), str(k.clips), f"{k.seconds:.1f}", fmt(k.clips_per_s, "rate")]]))
    t = rep.training
    if t is not None:
        out.append(("training", ["steps", "last step", "final loss", "tokens/s", "TFLOP/s per GPU",
                                 f"MFU (peak {PEAK_TFLOPS:g})"],
                    [[str(t.steps), str(t.last_step), fmt(t.final_loss, "loss"), fmt(t.tokens_per_s, "rate"),
                      fmt(t.tflops, "tflops"), fmt(t.mfu, "mfu")]]))
    out += _checkpoint_tables(rep)
    if rep.failures:
        out.append(("failures", ["stage", "task", "state", "exit", "reason", "log"],
                    [[str(f.get("stage", "")), str(f.get("task", "")), str(f.get("state", "")),
                      str(f.get("exit_code", "") or "-"), str(f.get("reason", "") or "-"),
                      str(f.get("log", "") or "-")] for f in rep.failures]))
    if rep.missing:
        out.append(("missing results", ["file"], [[m] for m in rep.missing]))
    return out


def _checkpoint_tables(rep: Report) -> list[tuple[str, list[str], list[list[str]]]]:
    """Per checkpoint its means over every evaluated video; with input shards, how many shards those videos
    came from and a table naming each shard that has no result."""
    out: list[tuple[str, list[str], list[list[str]]]] = []
    if rep.checkpoints:
        frames = {c.frames for c in rep.checkpoints}
        same = len(frames) == 1
        sharded = any(c.shards_planned > 1 for c in rep.checkpoints)
        shown = [(k, label) for k, label in (("psnr", "PSNR (dB)"), ("ssim", "SSIM")) if k in rep.metrics]
        header = ["step"] + [label for _, label in shown] + ["videos"] + (["shards"] if sharded else []) + ["best"] \
            + ([] if same else ["frames compared"])
        out.append(("checkpoints", header,
                    [[str(c.step)] + [fmt(getattr(c, k), k) for k, _ in shown] + [str(c.videos)]
                     + ([f"{c.shards}/{c.shards_planned}"] if sharded else []) + ["*" if c.best else ""]
                     + ([] if same else [c.frames or "-"]) for c in rep.checkpoints]))
        if same and frames != {""}:
            out.append(("frames compared (every checkpoint)", ["alignment"], [[frames.pop()]]))
    if rep.missing_shards:
        out.append(("missing shards (their videos are in no mean)", ["step", "shard", "infer/evaluate task", "why"],
                    [[str(m.step), str(m.shard), str(m.task), m.why] for m in rep.missing_shards]))
    return out


def render(rep: Report, console: Console) -> None:
    console.print(f"[bold]report[/] {rep.run_id} ({rep.name})")
    for title, header, rows in tables(rep):
        table = Table(*header, title=title, title_justify="left")
        for r in rows:
            table.add_row(*r)
        console.print(table)


def markdown(rep: Report) -> str:
    lines = [f"# Report {rep.run_id}", "", f"Run name: `{rep.name}`", ""]
    for title, header, rows in tables(rep):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
        lines.append("")
    return "\n".join(lines)


def to_json(rep: Report) -> dict[str, Any]:
    best = rep.best
    return {"run_id": rep.run_id, "name": rep.name, "data": rep.data,
            "tokenize": asdict(rep.tokenize) if rep.tokenize else None, "training": asdict(rep.training) if rep.training else None, "peak_tflops": PEAK_TFLOPS,
            "loss_curve": [list(p) for p in rep.loss_curve],
            "metrics": list(rep.metrics),
            "checkpoints": [{k: v for k, v in asdict(c).items() if k not in ("psnr", "ssim") or k in rep.metrics}
                            for c in rep.checkpoints],
            "best_checkpoint": best.step if best else None,
            "failures": list(rep.failures), "missing": list(rep.missing),
            "missing_shards": [asdict(m) for m in rep.missing_shards]}


# ------------------------------------------------------------------------------------------ files
def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def plots(rep: Report) -> dict[str, bytes]:
    """loss.png (loss vs step) and eval.png (PSNR and SSIM vs checkpoint step), where there is data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    if rep.loss_curve:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([s for s, _ in rep.loss_curve], [v for _, v in rep.loss_curve], lw=1.2)
        ax.set(xlabel="step", ylabel="loss", title=f"{rep.name}: training loss")
        ax.grid(alpha=0.3)
        out["loss.png"] = _png(fig)
        plt.close(fig)
    scored = [c for c in rep.checkpoints if c.psnr is not None or c.ssim is not None]
    if scored:
        keys = [(k, label) for k, label in (("psnr", "PSNR (dB)"), ("ssim", "SSIM")) if k in rep.metrics]
        fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.5), layout="constrained", squeeze=False)
        for ax, (key, label) in zip(axes[0], keys):
            pts = [(c.step, getattr(c, key)) for c in scored if getattr(c, key) is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
            best = rep.best
            if best is not None and getattr(best, key) is not None:
                ax.scatter([best.step], [getattr(best, key)], s=120, facecolors="none", edgecolors="red",
                           label=f"best (step {best.step})")
                ax.legend(loc="best", fontsize=8)
            ax.set(xlabel="checkpoint step", ylabel=label)
            ax.grid(alpha=0.3)
        fig.suptitle(f"{rep.name}: evaluation")
        out["eval.png"] = _png(fig)
        plt.close(fig)
    return out


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
