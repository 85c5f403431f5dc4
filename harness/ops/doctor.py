"""`harness doctor`: preflight on the login node, so that a run does not fail after hours in the queue.

Every check is one line: pass, fail, or skip with the reason, and each failure names the spec key to change.
Gathering (Slurm queries through harness.launch.slurmcli, file system probes) is kept apart from judging:
`slurm_checks` is a pure function of the plan and a `Cluster` snapshot. `submit` runs the cheap subset
(`CHEAP`) before it creates the run directory.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from harness.core import footprint
from harness.core.errors import HarnessError, Problem
from harness.core.plan import Plan, StagePlan, split_counts
from harness.core.spec import RunSpec
from harness.core.stages import stage as stage_def
from harness.launch import slurmcli
from harness.ops import assetcheck
from harness.ops.image_cache import cache_checks, writable
from harness.ops.inputs import after_training, data_key

if TYPE_CHECKING:
    from harness.lib.inputs import InputItem
    from harness.ops.plan import Gathered

Status = Literal["pass", "fail", "skip"]
Group = Literal["slurm", "container", "paths", "assets", "inputs", "sbatch"]
ALL: tuple[Group, ...] = ("inputs", "slurm", "container", "assets", "paths", "sbatch")
CHEAP: tuple[Group, ...] = ("slurm", "container", "paths")
"""What `submit` checks: Slurm and container facts, and room in the run directory. Inputs are listed by submit
itself, and assets are verified by stage-assets, which reports a missing one as its own failure."""

_ENROOT_URI = re.compile(r"^(docker://)?([\w.-]+@)?([A-Za-z0-9.-]+(:\d+)?#)?[a-z0-9]+([._/-][a-z0-9]+)*(:[\w][\w.-]{0,127})?$")
"""enroot's `docker://[USER@][REGISTRY#]IMAGE[:TAG]` (NVIDIA/enroot doc/cmd/import.md, "Schemes"); Pyxis hands
--container-image to `enroot import docker://...`."""


@dataclass(frozen=True)
class Check:
    status: Status
    key: str
    """The spec key (or keys) the check is about; where to make a fix."""
    what: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<4}  {self.key}: {self.what}: {self.detail}"


@dataclass(frozen=True)
class Cluster:
    """A snapshot of what the controller and accounting say; None where a query could not answer."""

    partitions: dict[str, slurmcli.Partition]
    nodes: tuple[slurmcli.Node, ...]
    max_array_size: int
    accounts: set[str] | None = None
    qos: set[str] | None = None
    srun_help: str = ""


def gather_cluster() -> Cluster | str:
    """The cluster's inventory (six client calls), or why there is none."""
    why = slurmcli.controller_error()
    if why:
        return why
    return Cluster(slurmcli.partitions(), tuple(slurmcli.nodes()), slurmcli.max_array_size(slurmcli.config()),
                   slurmcli.sacctmgr_names("account"), slurmcli.sacctmgr_names("qos"), slurmcli.srun_help())


def key(stage: StagePlan, name: str) -> str:
    """The spec key of a stage's resource (the registry knows its table: stage-assets reads [assets])."""
    return stage_def(stage.name).key(name)


# ------------------------------------------------------------------------------------------- slurm (pure)
def slurm_checks(plan: Plan, cluster: Cluster) -> list[Check]:
    out = _names(plan, "partition", set(cluster.partitions), "partition")
    out += _names(plan, "account", cluster.accounts, "account")
    out += _names(plan, "qos", cluster.qos, "QOS")
    for s in plan.stages:
        part = _partition_of(s, cluster)
        if part is None:
            continue
        out.append(_time(s, part))
        out.append(_nodes(s, part, cluster.nodes))
        if s.array:
            out.append(_array(s, cluster.max_array_size))
    return out


def _names(plan: Plan, field_name: str, have: set[str] | None, label: str) -> list[Check]:
    """One line per distinct value, naming every stage key that uses it."""
    by_value: dict[str, list[str]] = {}
    for s in plan.stages:
        value = getattr(s.resources, field_name)
        if value:
            by_value.setdefault(value, []).append(key(s, field_name))
    out = []
    for value, keys in by_value.items():
        k = ", ".join(keys)
        if have is None:
            out.append(Check("skip", k, f"{label} {value!r} exists", "accounting (sacctmgr) did not answer"))
        elif value in have:
            out.append(Check("pass", k, f"{label} {value!r} exists", "found"))
        else:
            out.append(Check("fail", k, f"{label} {value!r} exists",
                             f"no such {label}; the cluster has: {', '.join(sorted(have)) or 'none'}"))
    return out


def _partition_of(s: StagePlan, cluster: Cluster) -> slurmcli.Partition | None:
    name = s.resources.partition
    if name:
        return cluster.partitions.get(name)
    return next((p for p in cluster.partitions.values() if p.default), None)


def _time(s: StagePlan, p: slurmcli.Partition) -> Check:
    r, what = s.resources, f"time_min {s.resources.time_min} within partition {p.name}'s MaxTime"
    if p.max_time_min is None:
        return Check("pass", key(s, "time_min"), what, "MaxTime is UNLIMITED")
    if r.time_min <= p.max_time_min:
        return Check("pass", key(s, "time_min"), what, f"MaxTime {p.max_time_min} min")
    return Check("fail", key(s, "time_min"), what,
                 f"{r.time_min} min > MaxTime {p.max_time_min} min: Slurm would leave the job pending forever "
                 f"(PartitionTimeLimit); lower it or pick another partition")


def _nodes(s: StagePlan, p: slurmcli.Partition, nodes: tuple[slurmcli.Node, ...]) -> Check:
    r = s.resources
    cpus = r.cpus_per_task * r.ntasks_per_node
    want = f"{r.nodes} node(s) with {r.gpus_per_node} GPU(s), {cpus} CPU(s), {r.mem_gb or 'any'} GB"
    what = f"partition {p.name} has {want}"
    members = [n for n in nodes if p.name in n.partitions]
    fit = [n for n in members if n.gpus >= r.gpus_per_node and n.cpus >= cpus and n.mem_mb >= r.mem_gb * 1024]
    if len(fit) >= r.nodes:
        return Check("pass", key(s, "nodes"), what, f"{len(fit)} node(s) fit")
    if not members:
        return Check("fail", key(s, "partition"), what, "the partition has no nodes")
    best = max(members, key=lambda n: (n.gpus, n.cpus, n.mem_mb))
    largest = f"largest node {best.name}: {best.gpus} GPU(s), {best.cpus} CPU(s), {best.mem_mb // 1024} GB"
    if all(n.gpus < r.gpus_per_node for n in members):
        k = key(s, "gpus_per_node")
    elif all(n.cpus < cpus for n in members):
        k = key(s, "cpus_per_task")
    elif all(n.mem_mb < r.mem_gb * 1024 for n in members):
        k = key(s, "mem_gb")
    else:
        k = key(s, "nodes")
    return Check("fail", k, what, f"only {len(fit)} of {len(members)} node(s) fit; {largest}")


def _array(s: StagePlan, max_array: int) -> Check:
    biggest = max(b - a for a, b in s.chunks)
    what = f"array of {s.tasks} task(s) within MaxArraySize {max_array}"
    if biggest <= max_array:
        return Check("pass", key(s, "array_throttle"), what,
                     f"{len(s.chunks)} sbatch call(s) of at most {biggest} task(s)")
    return Check("fail", key(s, "array_throttle"), what, f"a chunk of {biggest} tasks exceeds it")


# ------------------------------------------------------------------------------------ container and pyxis
def container_checks(spec: RunSpec, srun_help: str | None) -> list[Check]:
    image = spec.container.image
    if not image:
        return [Check("skip", "container.image", "container image", "no container (container.image = '')")]
    out = []
    if image.endswith(".sqsh"):
        p = Path(image).expanduser()
        ok = p.is_file() and os.access(p, os.R_OK)
        out.append(Check("pass" if ok else "fail", "container.image", "squashfs image readable",
                         str(p) if ok else f"{p}: {'not readable' if p.exists() else 'no such file'}"))
    else:
        ok = bool(_ENROOT_URI.match(image))
        out.append(Check("pass" if ok else "fail", "container.image", "enroot URI well formed",
                         image if ok else f"{image!r}: expected [USER@][REGISTRY#]IMAGE[:TAG], "
                                          f"e.g. nvcr.io#nvidia/nemo:25.02.rc3"))
    if srun_help is None:
        out.append(Check("skip", "container.image", "Pyxis loaded (srun --container-image)",
                         "no Slurm controller: the local executor runs without containers"))
    elif "--container-image" in srun_help:
        out.append(Check("pass", "container.image", "Pyxis loaded (srun --container-image)", "listed by srun --help"))
    else:
        out.append(Check("fail", "container.image", "Pyxis loaded (srun --container-image)",
                         "srun --help lists no --container-image: install Pyxis, or set container.image = ''"))
    return out


# ------------------------------------------------------------------------------------------ run directory
def path_checks(plan: Plan) -> list[Check]:
    spec = plan.spec
    sizes = footprint.items(plan)
    need = {"run.workdir": footprint.total(sizes, "workdir"), "assets.hf_home": footprint.total(sizes, "hf_home")}
    dirs = {"run.workdir": spec.run.workdir, "assets.hf_home": spec.assets.hf_home}
    out: list[Check] = []
    devices: dict[int, list[tuple[str, Path]]] = {}
    for k, d in dirs.items():
        where, why = writable(Path(d).expanduser())
        out.append(Check("pass" if not why else "fail", k, "writable", why or str(where)))
        if why:
            continue
        devices.setdefault(os.stat(where).st_dev, []).append((k, where))
    for group in devices.values():
        keys = [k for k, _ in group]
        want = sum(need[k] for k in keys)
        free = shutil.disk_usage(group[0][1]).free
        basis = "; ".join(f"{i.what} {footprint.human(i.bytes)}" for i in sizes
                          if ("run.workdir" if i.where == "workdir" else "assets.hf_home") in keys and i.bytes)
        what = f"free space for ~{footprint.human(want)} ({basis or 'nothing'})"
        out.append(Check("pass" if free >= want else "fail", ", ".join(keys), what,
                         f"{footprint.human(free)} free on {group[0][1]}"))
    return out


# ------------------------------------------------------------------------------------------------- inputs
def _sentence(why: str) -> str:
    """A spec problem's `= '/x': not a directory` (made to follow a key) as words: `'/x' is not a directory`."""
    if not why.startswith("= "):
        return why
    value, _, what = why[2:].partition(": ")
    return f"{value} is {what}" if what.startswith("not ") else f"{value}: {what}"


def input_checks(spec: RunSpec, items: list[InputItem] | None, why: str) -> list[Check]:
    k = data_key(spec)
    if items is None:
        return [Check("fail", k, "inputs cannot be listed", _sentence(why))]
    bad = [it for it in items if it.error]
    first = next((it for it in items if not it.error), None)
    out = [Check("pass" if first else "fail", k, "inputs listed",
                 f"{len(items):,} input(s), {len(bad):,} unusable" + (f" (first: {bad[0].error})" if bad else ""))]
    if first is not None:
        try:
            with open(first.path, "rb") as f:
                f.read(1)
            out.append(Check("pass", k, "first input readable", first.path))
        except OSError as e:
            out.append(Check("fail", k, "first input readable", f"{first.path}: {e.strerror}"))
    if not spec.infer.inputs and first is not None:  # infer generates from the test split
        usable = len(items) - len(bad)
        sizes = split_counts(usable, spec.data.split)
        out.append(Check("fail" if not sizes[2] else "pass", "data.split", "test split to generate from",
                         f"{usable} usable input(s) split {sizes[0]}/{sizes[1]}/{sizes[2]}" +
                         ("; the test split is empty: add inputs or set infer.inputs" if not sizes[2] else "")))
    return out


# ---------------------------------------------------------------------------------------------- together
def run(spec: RunSpec, plan: Plan, cluster: Cluster | str, items: list[InputItem] | None, items_why: str = "",
        groups: tuple[Group, ...] = ALL) -> list[Check]:
    """Every check of the chosen groups, in a fixed order. `cluster` is the snapshot, or why there is none."""
    out: list[Check] = []
    if "inputs" in groups:
        out += input_checks(spec, items, items_why)
        out += [Check("fail" if why else "pass", k, what, why or "found") for k, what, why in after_training(spec)]
    if "slurm" in groups:
        if isinstance(cluster, str):
            out.append(Check("skip", "*.partition", "Slurm partitions, accounts, QOS, nodes, time limits",
                             f"{cluster}: the run would use submitit's local executor"))
        else:
            out += slurm_checks(plan, cluster)
    if "container" in groups:
        out += container_checks(spec, None if isinstance(cluster, str) else cluster.srun_help)
        out += [Check(*c) for c in cache_checks(plan)]
    if "assets" in groups:
        out += [Check(*c) for c in assetcheck.asset_checks(spec)]
    if "paths" in groups:
        out += path_checks(plan)
    return out


def diagnose(spec_path: Path, groups: tuple[Group, ...] = ALL, overrides: tuple[str, ...] = ()
             ) -> tuple[RunSpec, list[Check]]:
    """`harness doctor SPEC [key=value ...]`: load, plan as `submit` would here, check that plan; every member of
    a sweep, each check's key then naming its member."""
    from harness.ops import plan as plan_ops
    from harness.ops import scripts

    expanded = plan_ops.load_members(spec_path, overrides, for_submit=False)
    cluster, checks = gather_cluster(), []
    for m in expanded.members:
        plan, got = plan_here(m.spec, cluster)
        found = run(m.spec, plan, cluster, got.items, got.items_why, groups)
        if "sbatch" in groups and not isinstance(cluster, str):
            failed = {k.split(".")[0] for c in found if c.status == "fail" for k in c.key.split(", ")}
            found += [Check(*c) for c in scripts.test_only(plan_ops.scripts(plan, got), failed)]
        checks += [replace(c, key=f"{m.label}: {c.key}") for c in found] if expanded.is_sweep else found
    return expanded.members[0].spec, checks


def plan_here(spec: RunSpec, cluster: Cluster | str) -> tuple[Plan, Gathered]:
    """The plan `submit` would send from this machine (`harness.ops.plan.gather`: the executor that answers, its
    cluster facts, the listed inputs), with the cluster snapshot's answer standing in for another ping."""
    from harness.ops import plan as plan_ops

    got = plan_ops.gather(spec, "auto", "doctor", why_not=cluster if isinstance(cluster, str) else "")
    return plan_ops.build(spec, got), got


def raise_on_failure(spec: RunSpec, checks: list[Check]) -> None:
    """For `submit`: every failed check as one line naming the spec file and key (exit 2), before anything is
    queued; `harness doctor` shows every check, `submit --no-doctor` skips them."""
    failed = [c for c in checks if c.status == "fail"]
    if failed:
        raise HarnessError([Problem(spec.source, c.key, f"preflight: {c.what}: {c.detail}") for c in failed])
