"""Campaigns: a spec with a [sweep] submitted as one campaign, and the run commands given a campaign id.

`submit` plans every member through the one plan path (`harness.ops.plan`: gathered once per group of members
that share their data), creates the campaign directory (`campaign.json`: the members and what each varies) and one
ordinary run directory per member, holding its effective spec. A group's first member runs stage-assets,
tokenize and merge; every other member of the group records that run as its data's (`shared.json`), submits only
finetune and the stages after it, its finetune waiting on that merge (Slurm: --dependency on the merge's job
ids; local: its driver waits for the other driver), and keeps the shared jobs in its jobs.json so its status
shows them. `status`, `resume`, `cancel` and `report` given a campaign id act on every member.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from harness.core import campaign as campaign_mod
from harness.core import overrides, rundir
from harness.core.atomic import atomic_write_json
from harness.core.errors import HarnessError, Problem
from harness.core.paths import SHARED_STAGES, CacheEntry, CampaignPaths, RunPaths, new_campaign_dir, new_run_dir
from harness.core.rundir import Submission
from harness.core.sweep import Expanded
from harness.launch.backend import load_plan
from harness.ops import cache, control, state, status
from harness.ops import plan as plan_ops
from harness.ops import submit as launching
from harness.ops.plan import ExecutorName

__all__ = ["SHARED_STAGES", "CampaignSubmitted", "Member", "cancel", "members", "report", "resolve", "resume",
           "show_status", "submit"]


@dataclass(frozen=True)
class Member:
    index: int
    paths: RunPaths
    values: str
    submissions: tuple[Submission, ...]


@dataclass(frozen=True)
class CampaignSubmitted:
    paths: CampaignPaths
    choice: launching.Choice
    members: tuple[Member, ...]
    seconds: float


def submit(spec_path: Path, expanded: Expanded, requested: ExecutorName = "auto", *,
           doctor: bool = True) -> CampaignSubmitted:
    """Every member planned and (with `doctor`) preflighted before anything is created or queued."""
    t0 = time.perf_counter()
    gathered = plan_ops.gather_members(expanded, requested, "submit")
    cp = campaign_mod.build(expanded, [g.facts for g in gathered])
    if doctor:
        for m, g in zip(cp.members, gathered):
            launching.preflight(m.member.spec, m.plan, g.choice, g.items)
    first = cp.members[0].plan.spec.run
    cpaths = new_campaign_dir(Path(first.workdir), first.name.rsplit("-", 1)[0])
    out: list[Member] = []
    for m, g in zip(cp.members, gathered):
        paths = new_run_dir(Path(m.plan.spec.run.workdir), m.member.name)
        owner = out[m.owner] if m.owner != m.member.index - 1 else None
        todo = {s.name: list(range(s.tasks)) for s in m.stages}
        prior: tuple[Submission, ...] = ()
        parents: dict[str, list[str]] = {}
        text = expanded.effective_toml(m.member)
        if owner is not None:
            paths = rundir.write_shared(paths, owner.paths, owner.paths.cache, owner.paths.builder)
            prior = tuple(s for s in rundir.read_jobs(owner.paths).submissions if s.stage in SHARED_STAGES)
            parents = {st: [s.job_id for s in prior if s.stage == st] for st in SHARED_STAGES
                       if st != "tokenize" or paths.cache is None}  # a build's tokenize may be long purged
        elif g.cache is not None:  # the group's owner with a token cache: reuses, waits on or builds the entry
            paths, subs, _ = launching.start_cached(paths, text, m.plan, g, todo)
            out.append(Member(m.member.index, paths, _values(m), tuple(subs)))
            _record(cpaths, expanded, out, cp)
            continue
        subs = launching.start(paths, text, m.plan, g, todo, parents, prior)
        if paths.cache is not None and g.cache is not None:
            cache.add_user(CacheEntry(paths.cache), paths, g.cache)
        out.append(Member(m.member.index, paths, _values(m), tuple(subs)))
        _record(cpaths, expanded, out, cp)
    return CampaignSubmitted(cpaths, gathered[0].choice, tuple(out), time.perf_counter() - t0)


def _values(m: campaign_mod.MemberPlan) -> str:
    return ", ".join(f"{k}={overrides.toml_text(v)}" for k, v in m.member.varied)


def _record(cpaths: CampaignPaths, expanded: Expanded, members: list[Member], cp: campaign_mod.CampaignPlan) -> None:
    """campaign.json, rewritten after each member is submitted so it never misses a live run."""
    rows = [{"index": m.index, "run_id": m.paths.run_id, "root": str(m.paths.root), "values": m.values,
             "data_from": str(m.paths.data_root)} for m in members]
    atomic_write_json(cpaths.campaign_json, {
        "campaign": cpaths.campaign_id, "source": expanded.source, "mode": expanded.mode, "keys": list(expanded.keys),
        "overrides": list(expanded.overrides), "planned_members": len(cp.members), "members": rows})


# ------------------------------------------------------------------------------------------ lookup
def resolve(name: str, workdir: str = "runs") -> CampaignPaths | None:
    """A campaign id (under workdir) or directory; None when `name` is no campaign (then it may be a run)."""
    for cand in (Path(name), Path(workdir) / name):
        if CampaignPaths(cand).is_campaign:
            return CampaignPaths(cand.absolute())
    return None


def members(cpaths: CampaignPaths) -> list[tuple[str, RunPaths]]:
    """(values, run paths) of every member, in campaign order."""
    return [(values, rundir.open_run(root)) for values, root in rundir.read_campaign(cpaths)]


# ------------------------------------------------------------------------------------------ commands
def show_status(cpaths: CampaignPaths, console: Console) -> int:
    """One row per member (its run, values and state); exit 1 unless every member completed."""
    t = Table("member", Column("run", overflow="fold"), "values", "state", Column("tasks", overflow="fold"),
              title=escape(f"campaign {cpaths.campaign_id}"), title_justify="left")
    complete, damaged = True, list[Problem]()
    for i, (values, root) in enumerate(rundir.read_campaign(cpaths), start=1):
        try:
            paths = rundir.open_run(root)
            rs = state.collect(paths, load_plan(paths))
        except HarnessError as e:
            damaged += e.problems
            t.add_row(str(i), escape(root.name), escape(values), "unreadable", escape(str(e.problems[0])))
            continue
        word = status.verdict(rs)
        complete = complete and word == "completed"
        data = "" if paths.shared is None else f" (data: {paths.shared.name})"
        t.add_row(str(i), escape(paths.run_id + data), escape(values), word, escape(rs.summary()))
    console.print(t)
    if damaged:
        raise HarnessError(damaged)
    return 0 if complete else 1


def each_member(cpaths: CampaignPaths, act: Callable[[RunPaths], object]) -> None:
    """`act` on every member in order; a member whose records are damaged or gone does not stop the others
    (a cancel still reaches them), and its problems are raised together at the end."""
    damaged: list[Problem] = []
    for _, root in rundir.read_campaign(cpaths):
        try:
            act(rundir.open_run(root))
        except HarnessError as e:
            damaged += e.problems
    if damaged:
        raise HarnessError(damaged)


def resume(cpaths: CampaignPaths, console: Console) -> int:
    """Members preparing data first, then those reading it, their finetune waiting on the resubmitted merge. A
    member whose records are damaged or gone (or whose resume fails) does not stop the others; the problems are
    raised together at the end, as `each_member` does."""
    ms, damaged = [], list[Problem]()
    for _, root in rundir.read_campaign(cpaths):
        try:
            ms.append(rundir.open_run(root))
        except HarnessError as e:
            damaged += e.problems
    resubmitted: dict[Path, dict[str, list[str]]] = {}
    for paths in sorted(ms, key=lambda p: p.shared is not None):
        parents = resubmitted.get(paths.data_root, {}) if paths.shared is not None else None  # owner resumed
        try:
            before = len(state.load_jobs(paths).submissions)
            control.resume(paths, console, shared_parents=parents)
            new = state.load_jobs(paths).submissions[before:]
        except HarnessError as e:
            damaged += e.problems
            continue
        if paths.shared is None:
            resubmitted[paths.root] = {st: [s.job_id for s in new if s.stage == st] for st in SHARED_STAGES
                                       if any(s.stage == st for s in new)}
    if damaged:
        raise HarnessError(damaged)
    return 0


def cancel(cpaths: CampaignPaths, console: Console, stage: str | None) -> int:
    each_member(cpaths, lambda paths: control.cancel(paths, console, stage))
    return 0


def report(cpaths: CampaignPaths, print_report: Callable[[RunPaths], int]) -> int:
    """Each member's report (`harness.ops.print_report`, passed in: the ops package imports this module)."""
    each_member(cpaths, print_report)
    return 0
