"""report stage: write the run's results files (report.md, report.json, report.html, plots) after evaluate (afterany).

It runs on a compute node, so it judges failures by the completion markers alone (no Slurm queries): a
task of an earlier stage without a marker is listed as incomplete. `harness report RUN` rewrites the same
files later with Slurm's view of each failure (state, exit code, log).
"""

from __future__ import annotations

import logging

from harness.core import trainplan
from harness.core.paths import RunPaths, is_done
from harness.core.rundir import read_plan_record
from harness.core.spec import RunSpec
from harness.report import build as report
from harness.report import tracking

log = logging.getLogger("harness.report.build")


def incomplete_tasks(paths: RunPaths) -> list[dict[str, object]]:
    """Tasks of the other stages without a completion marker, from the saved plan's stage sizes."""
    out: list[dict[str, object]] = []
    for stage in read_plan_record(paths)["stages"]:
        if stage["name"] == "report":
            continue
        for t in range(stage["tasks"]):
            if not is_done(paths, stage["name"], t):
                out.append({"stage": stage["name"], "task": t, "state": "INCOMPLETE",
                            "reason": "no completion marker", "log": ""})
    return out


def run(spec: RunSpec, task: int, paths: RunPaths) -> None:
    rep = report.build(paths, spec, incomplete_tasks(paths), trainplan.planned(spec))
    for f in report.write(rep, report.results_dir(spec, paths)):
        log.info("wrote %s", f)
    log.info("wrote %s", tracking.log_evaluation(spec.tracking, paths, rep.checkpoints))
