"""`harness compare RUN [RUN ...]`: finds the runs (run ids, run directories or campaigns, whose members then
count as runs), reads what each produced, and hands it to `harness.report.compare`, which builds the table
that is printed and written under `<run.results_dir of the first run>/compare-<id>/`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from rich.console import Console

from harness.core import metricslog, rundir
from harness.core.errors import HarnessError, Problem
from harness.core.paths import RunPaths
from harness.core.plan import Plan
from harness.launch.backend import load_plan
from harness.ops import campaign, gpuhours, state, status
from harness.report import build as report
from harness.report import compare as cmp
from harness.report import compare_files


def resolve(names: Sequence[str], workdir: str) -> list[RunPaths]:
    """Every named run, a campaign's members in its order; a run named twice counts once."""
    out: list[RunPaths] = []
    for name in names:
        cpaths = campaign.resolve(name, workdir)
        found = [p for _, p in campaign.members(cpaths)] if cpaths is not None else [state.resolve_run(name, workdir)]
        out += [p for p in found if p.root.resolve() not in {q.root.resolve() for q in out}]  # a link: one run
    if len(out) < 2:
        raise HarnessError(Problem(" ".join(names), "run", "compare needs at least two runs (run ids, run "
                                                           "directories or a campaign with two members)"))
    return out


def _progress(paths: RunPaths, plan: Plan) -> tuple[float | None, float | None, str]:
    """(used, planned) GPU-hours of the whole run and its verdict; used and verdict unknown (None, '') where the
    run's states cannot be read (a Slurm controller that does not answer): compare still shows the rest."""
    try:
        rs = state.collect(paths, plan)
    except HarnessError:
        est = [v for v in gpuhours.planned(plan).values() if v is not None]
        return None, sum(est) if est else None, ""
    return *gpuhours.total_hours(gpuhours.usage(rs, plan)), status.verdict(rs)


def read_run(paths: RunPaths) -> cmp.RunData:
    """The run's spec, the evaluate files of each planned evaluation step, its logged validation losses, its
    generation rate per step, its GPU-hours and whether it is done."""
    plan = load_plan(paths)
    steps = plan.eval_steps
    evals, _ = report.read_evals(paths, plan.spec, steps, [], [])
    val = {r["step"]: float(v) for r in metricslog.val_rows(paths.metrics_jsonl)  # NaN: no loss, as the report reads
           if isinstance(v := r.get(cmp.VAL_LOSS), (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    gen = {s: g.tokens_per_s for s in steps
           if (g := report.generation_stats(paths, plan.spec, [s])) is not None and g.tokens_per_s is not None}
    used, planned, verdict = _progress(paths, plan)
    return cmp.RunData(paths.run_id, plan.spec.run.name, rundir.read_spec_record(paths),
                       {s: tuple(evals.get(s, ())) for s in steps}, val, used, planned,
                       report.baseline_label(plan.spec), gen, verdict)


def out_dir(first: RunPaths, c: cmp.Comparison) -> Path:
    spec = rundir.read_spec(first)
    return Path(spec.run.results_dir).expanduser() / f"compare-{compare_files.compare_id(c.runs)}"


def compare(names: Sequence[str], workdir: str, console: Console) -> int:
    runs = resolve(names, workdir)
    c = cmp.compare([read_run(p) for p in runs])
    compare_files.render(c, console)
    for f in compare_files.write(c, out_dir(runs[0], c)):
        console.print(f"wrote {f}", markup=False, soft_wrap=True)
    return 0
