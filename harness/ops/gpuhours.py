"""GPU-hours used, per stage and per run, beside the plan's estimate: for `harness status`, the report and
`harness compare`. The used hours come from the task states the backend already reads (one sacct call on a
cluster, `local_state.json` locally: `TaskState.gpu_seconds`), so this adds no query of its own."""

from __future__ import annotations

from harness.core import estimate
from harness.core.plan import Plan
from harness.ops.state import RunState
from harness.report.records import StageHours, total_hours


def planned(plan: Plan) -> dict[str, float | None]:
    """Stage -> the plan's GPU-hours estimate; a stage that requests no GPU is planned at 0. Only the stages the
    plan has are estimated (a campaign member whose data another member prepares has no tokenize)."""
    fns = {"tokenize": estimate.tokenize, "finetune": estimate.finetune, "infer": estimate.infer,
           "evaluate": estimate.evaluate}
    est = {s.name: fns[s.name](plan).gpu_hours for s in plan.stages if s.name in fns}
    return {s.name: est.get(s.name) if s.name in est else (0.0 if not s.resources.gpus_per_node else None)
            for s in plan.stages}


def usage(rs: RunState, plan: Plan) -> tuple[StageHours, ...]:
    """One row per stage of the plan, in DAG order."""
    est = planned(plan)
    used = {s.name: sum(r.gpu_seconds for r in s.rows) / 3600 for s in rs.stages}
    return tuple(StageHours(s.name, used.get(s.name, 0.0), est[s.name]) for s in plan.stages)


__all__ = ["StageHours", "planned", "total_hours", "usage"]
