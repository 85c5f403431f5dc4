"""The rendered sbatch scripts outside a submit: written into a folder (`harness plan --out DIR`, the one side
effect of a plan) and shown to the controller without queueing (`harness doctor`'s `sbatch --test-only`)."""

from __future__ import annotations

from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness.core.atomic import atomic_write_text
from harness.core.stages import stage as stage_def
from harness.launch import slurm
from harness.ops.image_cache import Row
from harness.ops.plan import CampaignView, PlanView, Script

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


def test_only(scripts: tuple[Script, ...], failed: Collection[str] = ()) -> list[Row]:
    """`harness doctor`'s last word on each stage: its first script shown to the controller with
    `sbatch --test-only`, so a value only Slurm can judge (a `sbatch_extra` option, a constraint, a QOS limit)
    fails here rather than midway through a submit. (status, key, what, detail) rows, one per stage; a stage whose
    table is in `failed` (another check of it failed, and sbatch would only repeat it) is skipped."""
    first = {s.stage: s for s in reversed(scripts)}  # each stage's first script (chunks differ in range only)
    todo = [s for s in scripts if first[s.stage] is s]
    tables = {s.stage: stage_def(s.stage).key("sbatch_extra").rsplit(".", 1)[0] for s in todo}
    asked = [s for s in todo if tables[s.stage] not in failed]
    with ThreadPoolExecutor(max(1, min(8, len(asked)))) as pool:  # one controller round trip, not one a stage
        said = dict(zip([s.stage for s in asked], pool.map(lambda s: slurm.test_only(s.text), asked)))
    rows: list[Row] = []
    for s in todo:
        table, what = tables[s.stage], f"sbatch --test-only of the {s.stage} script"
        if s.stage not in said:
            rows.append(("skip", f"{table}.*", what, f"a check of [{table}] above failed"))
        else:
            why = said[s.stage]
            rows.append(("fail" if why else "pass", f"{table}.*", what, why or "the controller would accept it"))
    return rows
