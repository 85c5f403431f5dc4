"""`harness plan --out DIR`: the rendered sbatch scripts written into a folder, the one side effect of a plan."""

from __future__ import annotations

from pathlib import Path

from harness.core.atomic import atomic_write_text
from harness.ops.plan import CampaignView, PlanView

PLAN_INDEX = ".harness-plan"
"""In a `plan --out` folder: the scripts the last plan wrote there, one name a line."""


def write_scripts(v: PlanView | CampaignView, out: Path) -> int:
    """`harness plan --out DIR`: each script under its file name; the number written. Scripts an earlier plan
    wrote there and this one does not (a split array's `04-infer-1.sbatch`) are removed, so the folder is this
    plan's; files the harness did not write are left alone."""
    names = [s.file_name for s in v.scripts]
    index = out / PLAN_INDEX
    earlier = index.read_text(encoding="utf-8").splitlines() if index.is_file() else []
    for s in v.scripts:
        atomic_write_text(out / s.file_name, s.text)
    root = out.resolve()
    for stale in sorted(set(earlier) - set(names)):
        path = (out / stale).resolve()
        if stale.endswith(".sbatch") and path.is_relative_to(root):  # an index edited by hand removes no more
            path.unlink(missing_ok=True)
    atomic_write_text(index, "".join(n + "\n" for n in names))
    return len(v.scripts)
