"""`harness bench compare RUN`: the nightly regression check of a finished run.

Metrics come from the run's result files (through harness.report.build, so they are the numbers the report
shows). Each is checked, ReFrame style, against a reference `(value, lower, upper, unit)` whose bounds are
fractions of the value (per system, with a "*" fallback), and against the median of the last N passing
history entries of the same cluster and container image, with the same fractional bounds. Every
violation is listed; the run is appended to the JSONL history; the exit code is 1 on any violation.
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.bench import at_least
from harness.core import metrics_table as mt
from harness.core.atomic import atomic_write_text, output_file
from harness.core.errors import HarnessError, Problem
from harness.core.paths import RunPaths
from harness.core.rundir import read_jobs, read_spec
from harness.report import build as report


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    fmt: str
    """report.fmt kind: the number is shown exactly as the report shows it."""


RUN_METRICS: tuple[Metric, ...] = (
    Metric("tokenize_clips_per_s", "tokenize clips/s per task", "rate"),
    Metric("train_tokens_per_s", "train tokens/s", "rate"),
    Metric("mfu", "MFU", "mfu"),
    Metric("final_loss", "final loss", "loss"),
)
"""The throughput and training metrics; the quality ones follow from `metrics_table` (`metrics()`)."""


def metrics() -> tuple[Metric, ...]:
    """Every nightly metric: the run's, then each evaluation metric's reference at the final checkpoint."""
    return RUN_METRICS + tuple(Metric(m.reference, f"{m.label} (final checkpoint)", m.name) for m in mt.METRICS)


@dataclass(frozen=True)
class Reference:
    value: float
    lower: float
    """Fraction of value, <= 0: the smallest allowed value is value * (1 + lower); -inf = no lower bound."""
    upper: float
    """Fraction of value, >= 0: the largest allowed value is value * (1 + upper); inf = no upper bound."""
    unit: str


# ------------------------------------------------------------------------------------------ references
def load_references(path: Path, system: str) -> dict[str, Reference]:
    """Metric -> reference for `system`, each metric falling back to the "*" entry."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise HarnessError(Problem(str(path), "", f"cannot read references ({e})")) from None
    systems = doc.get("systems")
    if not isinstance(systems, dict):
        raise HarnessError(Problem(str(path), "systems", "missing: expected [systems.\"*\"] and per-cluster tables"))
    known = {m.key for m in metrics()}
    for name, table in systems.items():
        if not isinstance(table, dict):
            raise HarnessError(Problem(str(path), f"systems.{name}", "expected a table of metrics"))
        for key in table:
            if key not in known:
                raise HarnessError(Problem(str(path), f"systems.{name}.{key}",
                                           f"unknown metric (allowed: {', '.join(sorted(known))})"))
    merged = {**systems.get("*", {}), **systems.get(system, {})}
    return {k: _reference(path, system if k in systems.get(system, {}) else "*", k, v) for k, v in merged.items()}


def _reference(path: Path, system: str, key: str, v: Any) -> Reference:
    where = f'systems."{system}".{key}'
    ok = isinstance(v, list) and len(v) == 4 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                     for x in v[:3]) and isinstance(v[3], str)
    if not ok:
        raise HarnessError(Problem(str(path), where, "expected [value, lower, upper, \"unit\"] (bounds as "
                                                     "fractions of value, e.g. [1200.0, -0.1, inf, \"tokens/s\"])"))
    ref = Reference(float(v[0]), float(v[1]), float(v[2]), v[3])
    if not (ref.lower <= 0 <= ref.upper) or not math.isfinite(ref.value):
        raise HarnessError(Problem(str(path), where, "needs a finite value, lower <= 0 and upper >= 0"))
    return ref


def bounds(center: float, ref: Reference) -> tuple[float, float]:
    """Allowed interval around `center` (the reference value or the history median)."""
    span = abs(center)
    return center + ref.lower * span, center + ref.upper * span


def check(value: float, center: float, ref: Reference) -> str | None:
    """None when value lies within the bounds around center; else what is wrong, in one phrase."""
    lo, hi = bounds(center, ref)
    if value < lo:
        return f"{value:.6g} < {lo:.6g} (={center:.6g}{ref.lower:+.0%})"
    if value > hi:
        return f"{value:.6g} > {hi:.6g} (={center:.6g}{ref.upper:+.0%})"
    return None


# ------------------------------------------------------------------------------------------ metrics
def extract(paths: RunPaths) -> dict[str, float | None]:
    """The nightly metrics of a run, from the numbers its report is made of."""
    return extract_with_protocol(paths)[0]


def extract_with_protocol(paths: RunPaths) -> tuple[dict[str, float | None], str]:
    """`extract`'s metrics and the evaluation protocol of the quality ones (`EvalResult.protocol_label`;
    '' where no checkpoint was evaluated): numbers of different protocols never compare."""
    from harness.launch.backend import load_plan

    plan = load_plan(paths)
    rep = report.build(paths, plan.spec, [], plan.training)
    t, k = rep.training, rep.tokenize
    final = next((c for c in rep.checkpoints if c.step == plan.checkpoint_steps[-1]), None)
    return ({"tokenize_clips_per_s": k.clips_per_s if k else None,
             "train_tokens_per_s": t.tokens_per_s if t else None, "mfu": t.mfu if t else None,
             "final_loss": t.final_loss if t else None,
             **{m.reference: final.value(m.name) if final else None for m in mt.METRICS}},
            final.protocol if final else "")


def identity(paths: RunPaths) -> dict[str, str]:
    """What history entries are keyed by: cluster, container image, harness commit, date."""
    from harness.launch import slurmcli

    cluster = "local"
    if read_jobs(paths).executor == "slurm" and not slurmcli.controller_error():
        cluster = slurmcli.config().get("ClusterName", "") or "unknown-slurm"
    image = read_spec(paths).container.image or "none"
    return {"cluster": cluster, "image": image, "commit": _commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                             time.gmtime())}


def _commit() -> str:
    src = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(src), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


# ------------------------------------------------------------------------------------------ history
def read_history(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    import json

    out = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError) as e:
        raise HarnessError(Problem(str(path), "--history", f"cannot read ({e.__class__.__name__}: {e})")) from None
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            raise HarnessError(Problem(f"{path}:{i}", "", "not a JSON line")) from None
        if not isinstance(entry, dict) or not isinstance(entry.get("metrics", {}), dict):
            raise HarnessError(Problem(f"{path}:{i}", "", "not a history entry: a JSON object whose 'metrics' is "
                                                          "an object"))
        out.append(entry)
    return out


def medians(history: list[dict[str, Any]], cluster: str, image: str, window: int,
            protocol: str | None = None) -> dict[str, tuple[float, int]]:
    """metric -> (median, entries) over the last `window` PASSING entries of this cluster and image:
    a regression that was caught never becomes part of the baseline. With `protocol`, the quality metrics
    count only entries evaluated under it (an entry without `eval_protocol` predates the key: aligned with
    the area resize, the only protocol then)."""
    same = [h for h in history if h.get("cluster") == cluster and h.get("image") == image and h.get("passed")]
    quality = {m.reference for m in mt.METRICS}
    out = {}
    for m in metrics():
        pool = same if protocol is None or m.key not in quality else \
            [h for h in same if h.get("eval_protocol", "aligned, resize area") == protocol]
        vals = [v for h in pool if _finite(v := h.get("metrics", {}).get(m.key))]  # NaN would make the median NaN
        vals = vals[-window:]
        if vals:
            out[m.key] = (statistics.median(vals), len(vals))
    return out


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def append_history(path: Path, entry: dict[str, Any]) -> None:
    import json

    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    atomic_write_text(path, old + json.dumps(entry, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------------------ verdict
def evaluate(values: dict[str, float | None], refs: dict[str, Reference],
             base: dict[str, tuple[float, int]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Per-metric rows and EVERY violation (missing value, missing reference, reference, history)."""
    rows, violations = [], []
    for m in metrics():
        v, ref, hist = values.get(m.key), refs.get(m.key), base.get(m.key)
        row: dict[str, Any] = {"metric": m.key, "value": v, "reference": ref.__dict__ if ref else None,
                               "history_median": hist[0] if hist else None, "history_n": hist[1] if hist else 0,
                               "problems": []}
        if v is None:
            row["problems"].append("not measured (the stage that produces it failed or did not run)")
        elif ref is None:
            row["problems"].append("no reference for this metric (add it under [systems.\"*\"])")
        else:
            if (why := check(v, ref.value, ref)) is not None:
                row["problems"].append(f"reference: {why}")
            if hist is not None and (why := check(v, hist[0], ref)) is not None:
                row["problems"].append(f"history median of {hist[1]}: {why}")
        violations += [f"{m.key}: {p}" for p in row["problems"]]
        rows.append(row)
    return rows, violations


def table(rows: list[dict[str, Any]], protocol: str = "") -> Table:
    """`protocol`: the evaluation protocol of the quality metrics, named in their rows."""
    quality = {m.reference for m in mt.METRICS}
    t = Table("metric", "value", "reference (bounds)", "history median (n)", "verdict", title="nightly compare",
              title_justify="left")
    for m, r in zip(metrics(), rows):
        ref = r["reference"]
        ref_text = "-"
        if ref:
            lo, hi = bounds(ref["value"], Reference(**ref))
            ref_text = f"{ref['value']:.6g} {ref['unit']} [{lo:.6g}, {hi:.6g}]"
        hist = f"{r['history_median']:.6g} ({r['history_n']})" if r["history_median"] is not None else "-"
        verdict = "[green]ok[/]" if not r["problems"] else "[red]" + escape("; ".join(r["problems"])) + "[/]"
        label = f"{m.label}, protocol {protocol}" if protocol and m.key in quality else m.label
        t.add_row(label, report.fmt(r["value"], m.fmt), ref_text, hist, verdict)
    return t


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="harness bench compare", description=__doc__)
    p.add_argument("run", help="run id or run directory of a finished nightly run")
    p.add_argument("--workdir", default="runs/nightly", help="where to look up a run id")
    p.add_argument("--history", default="results/nightly/history.jsonl")
    p.add_argument("--references", default="configs/nightly/references.toml")
    p.add_argument("--window", type=at_least(1), default=5, help="history entries the median is taken over")
    p.add_argument("--system", default=None, help="references entry to use (default: the cluster name)")
    return p.parse_args(argv)


def run(args: list[str]) -> dict[str, Any]:
    from harness.ops.state import resolve_run

    a = parse(list(args))
    if a.window < 1:
        raise HarnessError(Problem("--window", "", f"must be >= 1, not {a.window}"))
    paths = resolve_run(a.run, a.workdir)
    who = identity(paths)
    refs = load_references(Path(a.references), a.system or who["cluster"])
    values, protocol = extract_with_protocol(paths)
    history = output_file(Path(a.history), "--history")  # appended to at the end: checked before the work
    base = medians(read_history(history), who["cluster"], who["image"], a.window, protocol or None)
    rows, violations = evaluate(values, refs, base)
    console = Console(highlight=False)
    console.print(table(rows, protocol))
    for v in violations:
        console.print(f"[red]REGRESSION[/] {escape(v)}", soft_wrap=True)
    console.print(f"{paths.run_id} on {who['cluster']} ({who['image']}, commit {who['commit']}): "
                  f"{'PASS' if not violations else f'{len(violations)} violation(s)'}", soft_wrap=True, markup=False)
    entry = {"run_id": paths.run_id, **who, "metrics": values, "eval_protocol": protocol,
             "passed": not violations, "violations": violations}
    append_history(history, entry)
    return {**entry, "history": str(history), "exit_code": 1 if violations else 0}
