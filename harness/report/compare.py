"""`harness compare`'s model: several runs' checkpoints side by side, one row per (run, checkpoint), with the spec
keys that differ between the runs as columns and the best row of each metric marked.

Pure: the caller (`harness.ops.compare`) reads each run's records into a `RunData`; this module decides which
videos the numbers are over and builds the rows; `harness.report.compare_files` renders them. A mean over
different videos says nothing about the models, so where the runs' evaluated videos differ (another input set,
a shard without results) or their evaluation settings differ, every mean is recomputed over the videos every
row has (`Comparison.common`), and the page says so; with no such video there is nothing to compare.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from harness.core import metrics_table as mt
from harness.core.errors import HarnessError, Problem
from harness.core.evalrecords import ShardRecord, videos_of
from harness.core.evalstats import merge_shards, video_means
from harness.report.records import VAL_LOSS, best_marks

EXCLUDED_KEYS: tuple[str, ...] = ("run.name", "run.workdir", "run.results_dir", "data.cache_dir")
"""Spec keys left out of the differing columns: names and output places, which differ between any two runs (the
token cache's place too: its entries are keyed by what decides the tokens, wherever they are kept)."""


@dataclass(frozen=True)
class RunData:
    """What compare needs of one run, read by `harness.ops.compare`."""

    run_id: str
    name: str
    spec: Mapping[str, Any]
    """spec.json as stored (sections of keys)."""
    evals: Mapping[int, Sequence[ShardRecord]]
    """Every planned checkpoint step (the rows) -> its evaluate shard files that were read (none: '-')."""
    val_loss: Mapping[int, float] = field(default_factory=dict)
    """Step -> validation loss, at every step metrics.jsonl has one (the plot's line; a row shows its step's)."""
    gpu_hours: float | None = None
    """GPU-hours the run used (all stages), where known."""
    gpu_hours_planned: float | None = None
    baseline: str = "pretrained"
    """What step 0 is, where the run evaluated it (`harness.report.build.baseline_label`)."""
    gen_rate: Mapping[int, float] = field(default_factory=dict)
    """Step -> generated tokens per decode second of its infer tasks (`harness.report.build.generation_stats`):
    a campaign over `infer.*` keys (the KV cache, the batch) weighs quality against speed in one table."""
    verdict: str = ""
    """running, completed, cancelled, failed or incomplete (`harness.ops.status.verdict`); '' where unknown."""

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(self.spec.get("evaluate", {}).get("metrics") or mt.names())


@dataclass(frozen=True)
class Row:
    run_id: str
    step: int
    label: str
    values: Mapping[str, float | None]
    """Metric name, its `predicted_key` (the predicted frames' mean) and `VAL_LOSS` -> value; None where the run
    has none."""
    videos: int
    protocol: str
    gpu_hours: float | None
    differing: tuple[str, ...]
    """The run's value of each differing key, in `Comparison.differing` order."""
    gen_tokens_per_s: float | None = None
    best: frozenset[str] = frozenset()
    """The criteria (`criteria`: each metric over all and over predicted frames, `VAL_LOSS`) whose best value
    over every row this row holds."""


@dataclass(frozen=True)
class Comparison:
    runs: tuple[str, ...]
    names: tuple[str, ...]
    metrics: tuple[str, ...]
    """The metrics every run evaluated (`metrics_table` names)."""
    differing: tuple[str, ...]
    rows: tuple[Row, ...]
    common: tuple[str, ...] | None
    """The videos every mean is over, where the runs' videos or evaluation settings differ; None: all of them."""
    notes: tuple[str, ...]
    gpu_hours: tuple[tuple[float | None, float | None], ...] = ()
    """Per run: (used, planned estimate)."""
    val_curves: tuple[tuple[tuple[int, float], ...], ...] = ()
    """Per run: (step, validation loss) of every logged step."""


def flat(spec: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """'section.key' -> the value as JSON text, so lists and nested tables compare as values."""
    out: dict[str, str] = {}
    for k, v in spec.items():
        if isinstance(v, Mapping):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return out


def differing_keys(runs: Sequence[RunData]) -> tuple[str, ...]:
    """The spec keys whose value is not the same in every run (a key one run lacks differs), sorted."""
    flats = [flat(r.spec) for r in runs]
    keys = sorted(set().union(*flats) - set(EXCLUDED_KEYS))
    return tuple(k for k in keys if len({f.get(k, "(unset)") for f in flats}) > 1)


def _settings(run: RunData) -> str:
    """Everything that decides how a video is scored: the evaluate section and the fitting of references."""
    f = flat(run.spec)
    return json.dumps({k: v for k, v in f.items() if k.startswith("evaluate.") or k == "video.resize"}, sort_keys=True)


def _video_sets(runs: Sequence[RunData]) -> list[frozenset[str]]:
    return [frozenset(v.name for v in videos_of(shards)) for r in runs for shards in r.evals.values() if shards]


def _common(runs: Sequence[RunData]) -> tuple[tuple[str, ...] | None, tuple[str, ...]]:
    """(the videos to restrict to or None, the notes saying why); raises when the runs share no video."""
    sets = _video_sets(runs)
    settings = {_settings(r) for r in runs}
    if not sets or (len(set(sets)) == 1 and len(settings) == 1):
        return None, ()
    common = frozenset.intersection(*sets)
    why = [w for w, c in (("different evaluated videos", len(set(sets)) > 1),
                          ("different evaluation settings (evaluate.*, video.resize)", len(settings) > 1)) if c]
    if not common:
        raise HarnessError(Problem(", ".join(r.run_id for r in runs), "videos",
                                   f"no video was evaluated in every run and checkpoint ({' and '.join(why)}): "
                                   "nothing to compare"))
    union = frozenset.union(*sets)
    return tuple(sorted(common)), (f"{' and '.join(why).capitalize()}: every mean is over the {len(common)} "
                                   f"video(s) common to all rows (of {len(union)}).",)


def _row(run: RunData, step: int, shards: Sequence[ShardRecord], metrics: Sequence[str],
         common: tuple[str, ...] | None, differing: Sequence[str]) -> Row:
    f = flat(run.spec)
    values: dict[str, float | None] = {VAL_LOSS: run.val_loss.get(step)}
    videos, protocol = 0, "-"
    if shards:
        if common is None:
            e = merge_shards(shards, metrics)
            means, videos = e.mean, len(e.videos)
        else:
            kept = [v for v in videos_of(shards) if v.name in set(common)]
            means, videos = video_means(kept, metrics), len(kept)
        values.update({m: _finite(means.value(m)) for m in metrics})
        values.update({mt.get(m).predicted_key: _finite(means.predicted.get(m)) for m in metrics})
        protocol = shards[0].result.protocol_label
    label = f"0 ({run.baseline})" if step == 0 else str(step)
    return Row(run.run_id, step, label, values, videos, protocol, run.gpu_hours,
               tuple(f.get(k, "(unset)") for k in differing), run.gen_rate.get(step))


def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def criteria(metrics: Sequence[str]) -> tuple[str, ...]:
    """The columns a best row is marked in: the validation loss, each metric over all compared frames, then each
    over the predicted frames."""
    return (VAL_LOSS, *metrics, *(mt.get(m).predicted_key for m in metrics))


def _mark_best(rows: Sequence[Row], keys: Sequence[str]) -> tuple[Row, ...]:
    """Each key's best value over the checkpoint rows (ties: every row holding it), in its direction. Step 0, a
    run's baseline (the weights before post-training), is compared against, never marked: as in each report."""
    scored = [r for r in rows if r.step != 0]
    marks = dict(zip((id(r) for r in scored), best_marks([r.values for r in scored], keys)))
    return tuple(dataclasses.replace(r, best=marks.get(id(r), frozenset())) for r in rows)


def _unfinished(run: RunData) -> str:
    """A run not yet (or never) done: its best-marked rows may change, or stand for less than was planned."""
    missing = sum(1 for shards in run.evals.values() if not shards)
    tail = f"; {missing} of its {len(run.evals)} checkpoint row(s) have no evaluation yet" if missing else ""
    return (f"Run {run.run_id} is {run.verdict}{tail}: compare it again once it completes"
            if run.verdict == "running" else f"Run {run.run_id} {run.verdict}{tail}: `harness status "
            f"{run.run_id}` says which tasks, `harness resume` runs them again")


def compare(runs: Sequence[RunData]) -> Comparison:
    """The rows of every run's checkpoints (step order, runs in the order given); raises HarnessError when the
    runs have no video in common."""
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):
        raise HarnessError(Problem(", ".join(ids), "run", "a run is named twice: compare needs different runs"))
    metrics = tuple(m.name for m in mt.selected(set.intersection(*(set(r.metrics) for r in runs))))
    common, notes = _common(runs)
    differing = differing_keys(runs)
    rows = [_row(r, step, r.evals.get(step, ()), metrics, common, differing)
            for r in runs for step in sorted(r.evals)]
    unfinished = ("running", "failed", "cancelled", "incomplete")
    notes += tuple(_unfinished(r) for r in runs if r.verdict in unfinished)
    notes += tuple(f"Run {r.run_id} is {r.verdict or 'of unknown state'}, but {n} of its {len(r.evals)} checkpoint "
                   "row(s) have no evaluation results (files gone from its eval folder?): its rows show '-'"
                   for r in runs if r.verdict not in unfinished and (n := sum(not s for s in r.evals.values())))
    protocols = {r.protocol for r in rows if r.protocol != "-"}
    if len(protocols) > 1:
        notes += (f"The rows were scored under different protocols ({', '.join(sorted(protocols))}): their "
                  "numbers do not compare with each other.",)
    return Comparison(tuple(ids), tuple(r.name for r in runs), metrics, differing,
                      _mark_best(rows, criteria(metrics)), common, notes,
                      tuple((r.gpu_hours, r.gpu_hours_planned) for r in runs),
                      tuple(tuple(sorted(r.val_loss.items())) for r in runs))
