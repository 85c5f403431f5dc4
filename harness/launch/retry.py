"""A task retrying itself after an infrastructure failure (`<stage>.retries`): the side effects of
`harness.core.retries` inside a running Slurm task. What is and is not retried, and how, is in the README
("Infrastructure failures").

- `begin`, at the start of a task that Slurm restarted (SLURM_RESTART_COUNT > 0): the attempts ended by its node
  (NODE_FAIL, read from `sacct -D`: that attempt ran no handler of its own) join the task's record; past the
  limit the task stops at once with a reason naming every failure and the key. A restart without a node failure
  (a time-limit or preemption requeue of submitit's) counts nothing.
- `after_failure`, when the task's code raised: a node-level cause (`core.retries.node_cause`) with retries left
  is recorded, the task requeued (`scontrol requeue`) and its node excluded (`ExcNodeList`). It starts again
  after Slurm's hold on a requeued job (~2 min), as after a NODE_FAIL.
Without Slurm (the local executor, a task by hand) neither does anything: nothing could run it again.
"""

from __future__ import annotations

import logging
import os
import time

from harness.core import retries
from harness.core.errors import HarnessError
from harness.core.paths import RunPaths
from harness.core.spec import RunSpec
from harness.core.stages import stage as stage_def
from harness.launch import slurmcli

log = logging.getLogger("harness")


class Requeued(HarnessError):
    """The task requeued itself after a node-level failure; its next attempt runs elsewhere."""


def slurm_task_id() -> str:
    """This task's Slurm id (`123_4` for an array task), '' outside Slurm."""
    array, index = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and index:
        return f"{array}_{index}"
    return os.environ.get("SLURM_JOB_ID", "")


def node_name() -> str:
    return os.environ.get("SLURMD_NODENAME") or os.uname().nodename


def _limit(spec: RunSpec, stage: str) -> tuple[int, str]:
    row = stage_def(stage)
    return int(getattr(spec, row.section).retries), row.key("retries")


def _writer() -> bool:
    """One rank of a multi-rank task writes the record; every rank decides alike from the same inputs."""
    return os.environ.get("SLURM_PROCID", "0") == "0"


def begin(paths: RunPaths, spec: RunSpec, stage: str, task: int) -> None:
    sid = slurm_task_id()
    if not sid or int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) == 0:
        return
    record = paths.attempts(stage, task)
    known = retries.load(record)
    try:
        attempts = retries.from_history(slurmcli.history(sid), known)
    except HarnessError as e:  # accounting unreachable: run on, the node failure uncounted, and say so
        log.warning("%s[%d]: could not read the task's attempts from sacct (%s): node failures not counted",
                    stage, task, e)
        return
    limit, key = _limit(spec, stage)
    if attempts != known and _writer():
        retries.save(record, stage, task, attempts, limit)
    if not retries.may_retry(attempts, limit):
        raise HarnessError(retries.over_limit(stage, task, attempts, limit, key))
    if attempts:
        log.warning("%s", retries.summary(stage, task, attempts, limit))


def _text(e: BaseException) -> str:
    """The exception and its causes, each as `Type: message`: where a wrapped CUDA or NCCL error shows."""
    out, seen = [], set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        out.append(f"{type(cur).__name__}: {cur}")
        cur = cur.__cause__ or cur.__context__
    return "\n".join(reversed(out))


def after_failure(paths: RunPaths, spec: RunSpec, stage: str, task: int, e: BaseException) -> None:
    """Requeue the task when `e` is a node-level failure with retries left (raises `Requeued`); otherwise return,
    and the caller re-raises `e`: the task fails once, as any failure of its own code or input does."""
    sid = slurm_task_id()
    cause = retries.node_cause(_text(e)) if isinstance(e, Exception) else None
    if cause is None or not sid:
        return
    record, node = paths.attempts(stage, task), node_name()
    attempts = (*retries.load(record), retries.Attempt(node, cause.what, sid, time.time()))
    limit, key = _limit(spec, stage)
    if not retries.may_retry(attempts, limit):
        retries.save(record, stage, task, attempts, limit)
        log.error("%s", retries.over_limit(stage, task, attempts, limit, key))
        return
    try:
        requeued = requeue_elsewhere(sid, node if cause.exclude else "")
    except HarnessError as err:  # Slurm would not: the task fails with its own error, as without retries
        log.error("%s[%d]: could not requeue after %s: %s", stage, task, cause.what, err)
        return
    if not requeued:
        raise Requeued(f"{cause.what}: node-level failure on {node}; another rank requeued the task") from e
    retries.save(record, stage, task, attempts, limit)
    raise Requeued(f"{cause.what}: node-level failure on {node}; requeued"
                   f"{' without ' + node if cause.exclude else ''}: {retries.summary(stage, task, attempts, limit)}"
                   ) from e


def requeue_elsewhere(sid: str, exclude: str) -> bool:
    """Requeue the task, then keep it off `exclude` ('' = no node); False when another rank requeued it first
    (its exclusion is added all the same)."""
    others = slurmcli.excluded_nodes(sid) if exclude else []
    requeued = slurmcli.requeue(sid)
    if exclude:
        slurmcli.exclude_nodes(sid, others + [exclude])
    return requeued
