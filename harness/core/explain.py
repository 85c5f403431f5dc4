"""Where each planned value came from: the spec, a default, the cluster, or an assumption. `harness plan`
prints these lines so that no derived number (shards, throttles, array limits) appears without its reason."""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness.core.plan import Facts, Plan
from harness.core.spec import RunSpec


@dataclass(frozen=True)
class FactSources:
    """How the launcher learned each fact (a sentence fragment each)."""

    nodes: str
    max_array_size: str


def origins(spec: RunSpec, plan: Plan, facts: Facts, sources: FactSources) -> list[str]:
    """`spec` is the spec as written (plan.spec holds the resolved shard count)."""
    t = plan.spec.tokenize
    out = [f"nodes_available = {facts.nodes_available}: {sources.nodes}",
           f"MaxArraySize = {facts.max_array_size}: {sources.max_array_size}"]
    explicit = spec.tokenize.shards
    if explicit:
        out.append(f"tokenize.shards = {t.shards}: from the spec" +
                   (f" ({explicit}, capped at one input each)" if explicit != t.shards else ""))
    else:
        per = math.ceil(max(1, plan.num_inputs) / t.videos_per_shard)
        out.append(f"tokenize.shards = {t.shards}: max(ceil({plan.num_inputs:,} inputs / videos_per_shard "
                   f"{t.videos_per_shard}) = {per:,}, nodes_available {facts.nodes_available}), at most one input "
                   f"a shard")
    for s in plan.stages:
        if not s.array:
            continue
        section = getattr(spec, s.name)
        k = f"{s.name}.array_throttle"
        if section.array_throttle:
            out.append(f"{k} = {section.array_throttle}: from the spec (at most that many tasks at once)")
        else:
            out.append(f"{k} = 0: no limit (the default); Slurm runs as many of the {s.tasks:,} tasks as fit")
    return out
