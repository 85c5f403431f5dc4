"""A campaign's plan: its members' plans, with the stages that prepare the data run once per group of members
that would tokenize identically. Pure, as `harness.core.plan`.

Two members share stage-assets, tokenize and merge when every key those stages read is equal (`share_key`:
the whole spec except the training, generation, evaluation, report and tracking tables and the run's name and
results directory); the first member of a group runs them in its own run directory (the group's owner), and
every other member's finetune waits on the owner's merge and reads the owner's dataset
(`harness.core.paths.RunPaths.shared`). A sweep over training keys alone thus tokenizes once. The container
table is part of that key, so the group's owner also runs import-image (where a registry image is imported) and
every member's container stages wait on it: one import for the group. Groups that differ in other data keys plan
an import task each; the task's lock and marker make all but the first a no-op (`harness.stages.image`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from harness.core import plan as plan_mod
from harness.core import spec as spec_mod
from harness.core.paths import CACHED_STAGES, SHARED_STAGES
from harness.core.stages import NAMES as STAGES
from harness.core.sweep import Expanded, Member

PER_RUN_SECTIONS = ("finetune", "infer", "evaluate", "report", "tracking")
"""Tables no shared stage reads: members differing only here share their data."""


PER_RUN_VIDEO_KEYS = ("fps",)
"""Keys of the video table only infer reads (the frame rate its mp4 files are written at)."""


def share_key(spec: spec_mod.RunSpec) -> str:
    """Equal for two specs whose shared stages (stage-assets, tokenize, merge) would write the same files."""
    d: dict[str, Any] = {k: v for k, v in spec_mod.to_dict(spec).items() if k not in PER_RUN_SECTIONS}
    d["run"] = {k: v for k, v in d["run"].items() if k not in ("name", "results_dir")}
    d["video"] = {k: v for k, v in d["video"].items() if k not in PER_RUN_VIDEO_KEYS}
    return json.dumps(d, sort_keys=True, default=str)


@dataclass(frozen=True)
class MemberPlan:
    member: Member
    plan: plan_mod.Plan
    owner: int
    """Position (0-based) of the member whose run runs this member's shared stages; its own position if it does."""

    @property
    def stages(self) -> tuple[plan_mod.StagePlan, ...]:
        """The stages this member submits: all of them, or those after the shared ones."""
        return tuple(s for s in self.plan.stages if self.runs(s.name))

    def runs(self, stage: str) -> bool:
        return self.owner == self.member.index - 1 or stage not in SHARED_STAGES


@dataclass(frozen=True)
class CampaignPlan:
    expanded: Expanded
    members: tuple[MemberPlan, ...]

    @property
    def owners(self) -> tuple[int, ...]:
        return tuple(sorted({m.owner for m in self.members}))

    def sharing(self, owner: int) -> tuple[int, ...]:
        """1-based indices of the members whose data `owner`'s run prepares."""
        return tuple(m.member.index for m in self.members if m.owner == owner)

    def jobs(self, cached: Mapping[int, str] | None = None) -> list[tuple[str, int, str]]:
        """(stage, sbatch calls, for which members) of the whole campaign, in plan order: what it submits.
        `cached`: owner -> why its tokenize and merge are not submitted (a token-cache entry reused, or built
        by another submit or another member): 0 calls, and why."""
        out = []
        for name in STAGES:
            for m in self.members:
                if m.runs(name) and any(s.name == name for s in m.plan.stages):  # import-image: where planned
                    calls = len(m.plan.stage(name).chunks)
                    whom = _members(self.sharing(m.owner)) if name in SHARED_STAGES else _members((m.member.index,))
                    if name in CACHED_STAGES and m.owner in (cached or {}):
                        calls, whom = 0, f"{whom}: {(cached or {})[m.owner]}"
                    out.append((name, calls, whom))
        return out


def _members(indices: Sequence[int]) -> str:
    return ("member " if len(indices) == 1 else "members ") + ", ".join(map(str, indices))


def build(expanded: Expanded, facts: Sequence[plan_mod.Facts]) -> CampaignPlan:
    """`facts[i]` for member i (gathered once per share group by the caller: the same inputs, the same cluster)."""
    keys: dict[str, int] = {}
    members = []
    for i, (m, f) in enumerate(zip(expanded.members, facts)):
        owner = keys.setdefault(share_key(m.spec), i)
        members.append(MemberPlan(m, plan_mod.build(m.spec, f), owner))
    return CampaignPlan(expanded, tuple(members))
