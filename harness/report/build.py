"""The run report: what the data, training and evaluation stages produced, as rich tables in the terminal
and as results files (`report.md`, `report.json`, PNG plots, and `report.html` with its `media/`, see
`harness.report.html`) under `<run.results_dir>/<run id>/`.

It reads only the run directory's result files (dataset summary, metrics.jsonl, eval/step-*.json); the
caller passes the failures it knows about (`harness report` from squeue/sacct, the report stage from the
completion markers), so this module never talks to Slurm. Missing inputs are reported, never invented.
Where evaluate is fanned out over input shards, a checkpoint's numbers are computed over the per-video
metrics of all its shards that were evaluated (`evalstats.merge_shards`, the same means evaluate writes), and
each shard without its file is named with its (checkpoint, shard), its task index and, where known, why.

This module reads and builds the `Report`; its values are declared in `harness.report.records`, its text forms
(tables, markdown, json) are made in `harness.report.tables` and its files written by `harness.report.files`.
Callers use the whole report through this module, which re-exports those names.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

from harness.core import metrics_table as mt
from harness.core import metricslog, retries
from harness.core import plan as plan_mod
from harness.core.errors import HarnessError, Problem
from harness.core.evalrecords import ShardRecord
from harness.core.evalstats import merge_shards
from harness.core.paths import CacheEntry, RunPaths
from harness.core.rundir import json_object
from harness.core.stages import STAGES
from harness.report import html as report_html
from harness.report.files import plots, write
from harness.report.records import (
    PEAK_TFLOPS,
    Checkpoint,
    Generation,
    MissingShard,
    Report,
    StageHours,
    Tokenize,
    Training,
    Uncompared,
    mark_best,
)
from harness.report.tables import fmt, markdown, render, tables, to_json

if TYPE_CHECKING:
    from harness.core.spec import RunSpec
    from harness.core.trainplan import TrainingPlan

__all__ = ["PEAK_TFLOPS", "Checkpoint", "Generation", "MissingShard", "Report", "Tokenize", "Training",
           "baseline_label", "build", "checkpoints", "fmt", "generation_stats", "markdown", "merge_shards", "plots",
           "read_evals", "read_metrics", "render", "results_dir", "tables", "to_json", "tokenize_stats", "training",
           "validation_curve", "with_validation", "write"]


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The step records by step (a torn last line skipped: `metricslog.rows`)."""
    return metricslog.by_step(path)


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


def _object(path: Path) -> dict[str, Any]:
    """A manifest the report sums, {} where it is missing, torn, or not a JSON object (the row then lacks it)."""
    try:
        return json_object(path)
    except (OSError, ValueError):
        return {}


def tokenize_stats(paths: RunPaths, shards: int) -> Tokenize | None:
    """Summed over the shard manifests' `stats` (clips, seconds) written by the tokenize tasks."""
    clips, seconds, n = 0, 0.0, 0
    for s in range(shards):
        stats = _object(paths.shard_manifest(s)).get("stats")
        if not isinstance(stats, dict):
            continue
        c, sec = _num(stats.get("clips")), _num(stats.get("seconds"))
        if c is None or sec is None:
            continue
        clips, seconds, n = clips + int(c), seconds + sec, n + 1
    if not n:
        return None
    return Tokenize(n, clips, seconds, clips / seconds if seconds > 0 else None)


def generation_stats(paths: RunPaths, spec: RunSpec, checkpoint_steps: Sequence[int]) -> Generation | None:
    """Summed over the infer manifests' batches (batch, new_tokens, prefill_s, decode_s) of every planned
    (checkpoint, shard) task that generated something."""
    tasks, videos, tokens, decode, prefill, caches = 0, 0, 0, 0.0, 0.0, set()
    for step, _, _, key in infer_pairs(spec, checkpoint_steps):
        man = _object(paths.infer_manifest(step, key))
        listed = man.get("batches")
        batches = [b for b in listed if isinstance(b, dict)] if isinstance(listed, list) else []
        if not batches:
            continue
        tasks += 1
        caches.add(str(man.get("kv_cache", "model")))
        for b in batches:
            n, new = int(_num(b.get("batch")) or 0), int(_num(b.get("new_tokens")) or 0)
            videos, tokens = videos + n, tokens + n * new
            decode += _num(b.get("decode_s")) or 0.0
            prefill += _num(b.get("prefill_s")) or 0.0
    if not tasks:
        return None
    return Generation(tasks, videos, tokens, decode, prefill, "+".join(sorted(caches)),
                      tokens / decode if decode > 0 else None)


def _best(rows: Sequence[Checkpoint], metrics: Sequence[str]) -> int | None:
    """Step of the best mean of the first selected metric, the later ones breaking ties, each in its direction."""
    chosen = mt.selected(metrics)

    def key(c: Checkpoint) -> tuple[float, ...]:
        vals = [c.value(m.name) for m in chosen]
        return tuple(-math.inf if v is None else (v if m.higher_is_better else -v) for m, v in zip(chosen, vals))

    scored = [c for c in rows if chosen and c.value(chosen[0].name) is not None]
    return max(scored, key=key).step if scored else None


def checkpoints(evals: dict[int, list[ShardRecord]], shards_planned: int = 1,
                metrics: Sequence[str] | None = None, baseline: str = "") -> tuple[Checkpoint, ...]:
    """step -> the evaluate results read for it (one per shard); `best` marks the best of `_best` among the
    checkpoints, `best_of` the best by each criterion (step 0, the baseline, labelled `baseline` where given, is
    compared against, never chosen)."""
    chosen = mt.selected(metrics)
    rows = []
    for step in sorted(evals):
        e = merge_shards(evals[step], metrics)
        rows.append(Checkpoint(step, {m.name: _num(e.mean.value(m.name)) for m in chosen}, len(e.videos), False,
                               e.frames, len(evals[step]), shards_planned, len(e.failed),
                               evals[step][0].result.protocol_label, *_other_means(evals[step], metrics),
                               baseline=baseline if step == 0 else "",
                               predicted={m.name: _num(e.mean.predicted.get(m.name)) for m in chosen}))
    best = _best([c for c in rows if not c.baseline], [m.name for m in chosen])
    return mark_best([dataclasses.replace(c, best=c.step == best) for c in rows])


def _other_means(shards: Sequence[ShardRecord], metrics: Sequence[str] | None
                 ) -> tuple[dict[str, dict[str, float | None]], dict[str, int]]:
    """For each protocol besides the main one, by its label: metric -> mean over every shard's videos, and how
    many videos those means are over."""
    out: dict[str, dict[str, float | None]] = {}
    videos: dict[str, int] = {}
    for proto in dict.fromkeys(p for s in shards for p in s.protocols()[1:]):
        under = [dataclasses.replace(s, result=r, others=()) for s in shards if (r := s.under(proto)) is not None]
        e = merge_shards(under, metrics)
        label = under[0].result.protocol_label
        out[label] = {m.name: _num(e.mean.value(m.name)) for m in mt.selected(metrics)}
        videos[label] = len(e.videos)
    return out, videos


def uncompared(evals: dict[int, list[ShardRecord]]) -> tuple[Uncompared, ...]:
    """Every video of the read evaluate results that is in no mean of the main protocol, and why; then those in
    the main protocol's means that another protocol could not score (their protocol named)."""
    out = []
    for step in sorted(evals):
        for rec in evals[step]:
            r = rec.result
            out += [Uncompared(step, f.name, f"failed: {f.error}") for f in r.failed]
            out += [Uncompared(step, n, "no reference found") for n in r.missing_reference]
            out += [Uncompared(step, n, "not generated") for n in r.missing_generated]
            lost = {f.name for f in r.failed} | set(r.missing_reference) | set(r.missing_generated)
            out += [Uncompared(step, f.name, f"failed: {f.error}", o.protocol_label) for o in rec.others
                    for f in o.failed if f.name not in lost]
    return tuple(out)


def _read(path: Path, missing: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        missing.append(str(path))
    except ValueError as e:
        missing.append(f"{path} (unreadable: {e})")
    return None


def build(paths: RunPaths, spec: RunSpec, failures: Iterable[dict[str, Any]], plan: TrainingPlan,
          gpu_hours: Sequence[StageHours] = ()) -> Report:
    """`plan`: the run's training plan (`harness.core.trainplan`): its evaluation steps are the evaluations expected,
    its last step where training ends. `gpu_hours`: per stage, where the caller read the task states."""
    checkpoint_steps = plan.eval_steps
    missing: list[str] = []
    freed = paths.cache is not None and CacheEntry(paths.cache).freed_json.is_file()  # `harness cache rm`
    data = None if freed else _read(paths.dataset_summary, missing)
    rows = read_metrics(paths.metrics_jsonl)
    if not rows:
        missing.append(str(paths.metrics_jsonl))
    failures = tuple(failures)
    evals, lost = read_evals(paths, spec, checkpoint_steps, failures, missing)
    curve = tuple((r["step"], float(r["loss"])) for r in rows if _num(r.get("loss")) is not None)
    val = validation_curve(paths.metrics_jsonl)
    metrics = tuple(spec.evaluate.metrics)
    rows_ = with_validation(checkpoints(evals, plan_mod.infer_shards(spec.infer), metrics, baseline_label(spec)),
                            dict(val))
    return Report(run_id=paths.run_id, run_dir=str(paths.root.resolve()), name=spec.run.name,
                  data=data if isinstance(data, dict) else {},
                  tokenize=tokenize_stats(paths, spec.tokenize.shards), training=training(rows, plan.last_step),
                  loss_curve=curve, checkpoints=rows_, failures=failures, missing=tuple(missing),
                  missing_shards=tuple(lost), metrics=metrics, samples=report_html.pick_samples(evals), val_curve=val,
                  gpu_hours=tuple(gpu_hours),
                  retries=tuple(retries.run_lines(paths, [s.name for s in STAGES])),
                  generation=generation_stats(paths, spec, checkpoint_steps), uncompared=uncompared(evals))


def validation_curve(path: Path) -> tuple[tuple[int, float], ...]:
    """(step, validation loss) of each validation point finetune logged (`metricslog.val_rows`)."""
    return tuple((r["step"], float(r["val_loss"])) for r in metricslog.val_rows(path)
                 if _num(r.get("val_loss")) is not None)


def with_validation(rows: Sequence[Checkpoint], val: dict[int, float]) -> tuple[Checkpoint, ...]:
    """The rows with their validation loss; the lowest among the run's checkpoints marked `best_val` and in
    `best_of` (step 0's baseline row shows its loss, the starting point, but is no checkpoint to choose)."""
    scored = [c.step for c in rows if c.step in val and not c.baseline]
    best = min(scored, key=lambda s: val[s]) if scored else None
    return mark_best([dataclasses.replace(c, val_loss=val.get(c.step), best_val=c.step == best) for c in rows])


def baseline_label(spec: RunSpec) -> str:
    """What step 0 is: the pretrained weights, or a random initialisation where model.checkpoint is ''."""
    return "pretrained" if spec.model.checkpoint else "random initialisation"


def read_evals(paths: RunPaths, spec: RunSpec, checkpoint_steps: Sequence[int], failures: Sequence[dict[str, Any]],
               missing: list[str]) -> tuple[dict[int, list[ShardRecord]], list[MissingShard]]:
    """Every (checkpoint, shard)'s evaluate file; the absent ones become MissingShard rows that say why,
    from the failures of that pair's infer or evaluate task when the caller knows them."""
    evals: dict[int, list[ShardRecord]] = {}
    lost: list[MissingShard] = []
    known = {(f.get("stage"), f.get("task")): f for f in failures}
    for step, k, task, key in infer_pairs(spec, checkpoint_steps):
        path = paths.eval_json(step, key)
        e = _read(path, missing)
        damage = _damage(e) if e is not None else ""
        if damage:
            missing.append(f"{path} ({damage})")
        elif e is not None:
            rec = ShardRecord.from_json(e)
            if _empty(rec):
                lost.append(MissingShard(step, k, task, EMPTY_LISTED if spec.infer.inputs else EMPTY_SHARD))
            else:
                evals.setdefault(step, []).append(rec)
            continue
        why = [f"{st}[{task}] {f.get('state', '')}" + (f" ({f['reason']})" if f.get("reason") else "")
               for st in ("infer", "evaluate") if (f := known.get((st, task)))]
        own = "no result file" if not path.exists() else f"its result file is damaged ({damage or 'unreadable'})"
        lost.append(MissingShard(step, k, task, "; ".join(why) or own))
    return evals, lost


def _damage(e: Any) -> str:
    """What makes a parsed evaluation file no result ('' if none): evaluate always writes an object with a
    `videos` list of objects and a `mean` object, so anything else was cut, edited or written by something else."""
    if not isinstance(e, dict):
        return f"a JSON {type(e).__name__}, not an object"
    if not isinstance(e.get("videos"), list) or not all(isinstance(v, dict) for v in e["videos"]):
        return "no 'videos' list of objects"
    return "" if isinstance(e.get("mean"), dict) else "no 'mean' object"


EMPTY_LISTED = ("no inputs: the input list ended before this shard (infer.inputs lists fewer inputs than "
                "infer.max_inputs: set that to its size)")
EMPTY_SHARD = ("no inputs: the input list ended before this shard (fewer test videos than planned, e.g. inputs "
               "that did not tokenize: the data summary names them)")


def _empty(rec: ShardRecord) -> bool:
    """A shard infer had nothing to give: no video, no failure, nothing missing."""
    return not (rec.result.videos or rec.result.left_out)


def infer_pairs(spec: RunSpec, checkpoint_steps: Sequence[int]) -> Iterator[tuple[int, int, int, int | None]]:
    """(checkpoint step, shard, infer/evaluate task index, its files' key) of every planned pair, in task order."""
    for c, step in enumerate(checkpoint_steps):
        for k in range(plan_mod.infer_shards(spec.infer)):
            task = plan_mod.infer_task_index(spec, c, k)
            yield step, k, task, plan_mod.infer_task(spec, task).key


def results_dir(spec: RunSpec, paths: RunPaths) -> Path:
    """`<run.results_dir>/<run id>`; refused where it holds the report of another run directory of that id that
    still exists (a copy of the run, which would replace the original's report); a moved run takes it over."""
    out = Path(spec.run.results_dir).expanduser() / paths.run_id
    try:
        other = str(json_object(out / "report.json").get("run_dir") or "")
    except (OSError, ValueError):
        return out
    if other and Path(other) != paths.root.resolve() and RunPaths(Path(other)).is_run:
        raise HarnessError(Problem(str(out), "run.results_dir", f"holds the report of {other}, another run "
                                   f"directory of id {paths.run_id} (a copy?): rename this copy's folder, or give it "
                                   "another run.results_dir in its spec.json"))
    return out
