"""The cluster facts a plan is built for, per backend: Slurm's (`slurmcli.cluster_facts`) or the local
driver's, which has no array limit and one machine."""

from __future__ import annotations

from harness.core import plan as plan_mod
from harness.core.spec import RunSpec
from harness.launch import slurmcli

LOCAL_MAX_ARRAY_SIZE = 1_000_000
"""The local driver has no array limit: one chunk per stage."""


def gather(spec: RunSpec, executor: str, num_inputs: int) -> plan_mod.Facts:
    if executor == "local":
        return plan_mod.Facts(num_inputs=num_inputs, max_array_size=LOCAL_MAX_ARRAY_SIZE, nodes_available=1)
    cluster = slurmcli.cluster_facts(spec.tokenize.partition, spec.tokenize.nodes_available)
    return plan_mod.Facts(num_inputs=num_inputs, max_array_size=cluster.max_array_size,
                          nodes_available=cluster.nodes_available)
