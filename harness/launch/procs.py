"""Which processes belong to a local run: its driver's process group, told by when and what the processes run.

A local driver starts in its own session, so its pid is also the process group id of everything it starts (the
submitit controllers, the stage tasks and their workers). jobs.json keeps that pid and when it was recorded; after
a crash, an OOM kill or a reboot the number may belong to an unrelated process, even to the leader of an unrelated
group, and signalling it would stop someone else's work. So a process counts as the run's only where it is in
that group and either is the driver itself (that pid, started before the submission was recorded: a process that
took the number later started later) or names the run directory, or a path inside it, in its arguments (a task's
submitit log folder: the tasks outlive a killed driver). While one such process exists the kernel does not hand
the group's number to another process, so the whole group is the run's: `stop` may then signal the group, which
also reaches workers whose arguments name nothing.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

PROC = Path("/proc")
GRACE_S = 10.0
"""Between SIGTERM and SIGKILL: the finetune stage saves a checkpoint on SIGTERM; submitit's tasks ignore it
(they keep running through Slurm's preemption warning), so whatever is left after this is killed."""


def _stat(pid: str) -> tuple[str, int, int] | None:
    """(state, process group, start time in clock ticks since boot) of a process, None when gone or unreadable."""
    try:
        rest = (PROC / pid / "stat").read_text().rsplit(")", 1)[1].split()
        return rest[0], int(rest[2]), int(rest[19])
    except (OSError, IndexError, ValueError):
        return None


def _started(ticks: int) -> float:
    """A process's start as wall-clock seconds (boot time from /proc/stat plus its start ticks)."""
    boot = next(float(ln.split()[1]) for ln in (PROC / "stat").read_text().splitlines() if ln.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _names_run(pid: str, root: Path) -> bool:
    """Whether one of the process's arguments, read from its own working directory, is `root` or inside it."""
    try:
        args = (PROC / pid / "cmdline").read_bytes().split(b"\0")
        cwd = Path(os.readlink(PROC / pid / "cwd"))
    except OSError:
        return False
    for raw in args:
        if not raw or raw.startswith(b"-"):
            continue
        p = (cwd / os.fsdecode(raw)).resolve()
        if p == root or root in p.parents:
            return True
    return False


def members(pgid: int, root: Path, recorded: float) -> list[int] | None:
    """Live (not zombie) processes of group `pgid` when one of them is the run's, else []; None without /proc.
    `recorded`: when jobs.json recorded the driver (the driver started before it; 1 s of tick rounding)."""
    if not (PROC / "self" / "stat").exists():
        return None
    stats = {p: st for p in os.listdir(PROC) if p.isdigit() and (st := _stat(p)) is not None}
    group = {p: st for p, st in stats.items() if st[1] == pgid and st[0] != "Z"}
    driver = group.get(str(pgid))
    if driver is not None and _started(driver[2]) <= recorded + 1.0:
        return [int(p) for p in group]
    root = root.resolve()
    return [int(p) for p in group] if any(_names_run(p, root) for p in group) else []


def alive(pgid: int, root: Path, recorded: float, fallback: bool) -> bool:
    """Whether the run's driver or any of its tasks still runs; `fallback` (the bare pid check) without /proc."""
    found = members(pgid, root, recorded)
    return fallback if found is None else bool(found)


def stop(pgid: int, root: Path, recorded: float, fallback: bool, grace_s: float | None = None) -> bool:
    """SIGTERM the run's process group, then SIGKILL what is left after `grace_s`. False when nothing of the
    run was running (nothing is signalled). Without /proc, `fallback` (the bare pid check) decides, and the group
    gets SIGTERM only."""
    found = members(pgid, root, recorded)
    if found is None and fallback:
        _signal(pgid, signal.SIGTERM)
        return True
    if not found:
        return False
    _signal(pgid, signal.SIGTERM)
    deadline = time.monotonic() + (GRACE_S if grace_s is None else grace_s)
    while members(pgid, root, recorded) and time.monotonic() < deadline:
        time.sleep(0.1)
    if members(pgid, root, recorded):
        _signal(pgid, signal.SIGKILL)
    return True


def _signal(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
