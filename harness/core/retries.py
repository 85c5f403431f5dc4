"""Infrastructure failures, told apart from a task's own failures, and the retry record of each task.

A task is retried (up to `<stage>.retries` times) only for a failure of the node it ran on, never for one of its
own code or input: retrying a bug or a bad file costs queue time and ends the same way. Two paths lead here:
- the task is alive and its exception says the node is at fault (a lost GPU, an ECC error, a GPU the job asked
  for but cannot see, an NCCL timeout): `node_cause` classifies the text, the worker requeues itself;
- the node died under it (Slurm's NODE_FAIL): nothing ran the worker's handler, Slurm requeued the task, and the
  restarted task finds the failed attempt in Slurm's accounting (`from_history`).
Each attempt is kept in a per-task JSON file (`RunPaths.attempts`), so `status` and the report can say
`tokenize[0]: retried 1/2 (NODE_FAIL on n2)` without asking Slurm. Pure except `load`/`save`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from harness.core.atomic import atomic_write_json, read_json
from harness.core.paths import RunPaths

_DEVICE = re.compile(
    r"CUDA error: (?:unspecified launch failure|unknown error)"
    r"|uncorrectable ECC error|ECC error encountered|GPU is lost|fallen off the bus|\bXid\b"
    r"|cudaErrorDevicesUnavailable|CUDA driver initialization failed|NVML_ERROR_GPU_IS_LOST"
    r"|asks for GPUs \(.*\) but sees none|node health check failed", re.IGNORECASE)
"""Wordings of a broken GPU or node (CUDA runtime, NVML, the driver's Xid, the worker's own no-GPU check): the
node is at fault and is excluded from the retry."""
_NCCL = re.compile(
    r"Watchdog caught collective operation timeout|NCCL communicator was aborted|ProcessGroupNCCL.*time(?:d )?out"
    r"|ncclSystemError|ncclRemoteError|NCCL error.*(?:unhandled system error|remote process exited)"
    r"|DistNetworkError|Connection reset by peer.*(?:NCCL|c10d)", re.IGNORECASE)
"""Wordings of a collective that hung or lost a peer: some node failed, this rank cannot tell which, so the
retry excludes none (the rank that saw the broken device excludes its own)."""
NODE_STATES = frozenset({"NODE_FAIL", "BOOT_FAIL"})
"""Slurm's end states of an attempt that the node, not the task, ended."""


@dataclass(frozen=True)
class Cause:
    """Why an attempt ended for a node-level reason, and whether its node should be excluded from the retry."""

    what: str
    exclude: bool


@dataclass(frozen=True)
class Attempt:
    """One failed attempt of a task that counts against `<stage>.retries`."""

    node: str
    cause: str
    """One line: `NODE_FAIL`, or the classified error (`CUDA error: uncorrectable ECC error encountered`)."""
    job: str = ""
    time: float = 0.0

    @property
    def line(self) -> str:
        return f"{self.cause} on {self.node}" if self.node else self.cause


def node_cause(text: str) -> Cause | None:
    """The node-level cause in an exception's text, or None for a failure of the task's own code or input."""
    for line in reversed([ln.strip() for ln in text.splitlines() if ln.strip()]):
        if _DEVICE.search(line):
            return Cause(line[:200], True)
        if _NCCL.search(line):
            return Cause(line[:200], False)
    return None


def from_history(history: Sequence[tuple[str, str]], known: Sequence[Attempt]) -> tuple[Attempt, ...]:
    """`known` plus the node failures in Slurm's history of the task ((state, node) per attempt, oldest first)
    not recorded yet: a NODE_FAIL attempt is recorded once however often a later attempt reads the history."""
    seen = [a for a in known if a.cause in NODE_STATES]
    out = list(known)
    fails = [(state, node) for state, node in history if state in NODE_STATES]
    for state, node in fails[len(seen):]:
        out.append(Attempt(node, state))
    return tuple(out)


def may_retry(attempts: Sequence[Attempt], retries: int) -> bool:
    """Whether a task with these failed attempts may run again: each failure is one retry, `retries` in all."""
    return len(attempts) <= retries


def over_limit(stage: str, task: int, attempts: Sequence[Attempt], retries: int, key: str) -> str:
    """The reason a task stops: the failures it had and the key that allows more."""
    return (f"{stage}[{task}]: {len(attempts)} infrastructure failure(s) ({'; '.join(a.line for a in attempts)}), "
            f"{key} = {retries} retries allowed: not retried again")


def summary(stage: str, task: int, attempts: Sequence[Attempt], retries: int) -> str:
    """`tokenize[0]: retried 1/2 (NODE_FAIL on n2)`: the line status and the report show."""
    used = min(len(attempts), retries)
    stop = "" if len(attempts) <= retries else ", no retries left"
    return f"{stage}[{task}]: retried {used}/{retries} ({'; '.join(a.line for a in attempts)}{stop})"


# ------------------------------------------------------------------------------------------ the record
def read(path: Path) -> tuple[tuple[Attempt, ...], int]:
    """(the failed attempts recorded for a task, the `retries` it ran under); none when it never failed for a
    node."""
    if not path.is_file():
        return (), 0
    raw: dict[str, Any] = read_json(path)
    names = {f.name for f in dataclasses.fields(Attempt)}
    attempts = tuple(Attempt(**{k: v for k, v in a.items() if k in names}) for a in raw.get("attempts", []))
    return attempts, int(raw.get("retries", 0))


def load(path: Path) -> tuple[Attempt, ...]:
    return read(path)[0]


def save(path: Path, stage: str, task: int, attempts: Iterable[Attempt], retries: int) -> None:
    atomic_write_json(path, {"stage": stage, "task": task, "retries": retries,
                             "attempts": [dataclasses.asdict(a) for a in attempts]})


def run_lines(paths: RunPaths, stages: Iterable[str]) -> list[str]:
    """`summary` of every task of `stages` with a recorded failure: one folder listing per stage, so a
    1,000-task array that never failed costs one `stat`."""
    out = []
    for stage in stages:
        folder = paths.attempts_dir(stage)
        if not folder.is_dir():
            continue
        for f in sorted(folder.glob("*.json")):
            attempts, limit = read(f)
            if attempts and f.stem.isdigit():
                out.append(summary(stage, int(f.stem), attempts, limit))
    return out
