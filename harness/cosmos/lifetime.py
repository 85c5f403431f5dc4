"""Lifetimes of the helper processes a stage starts (spawned ranks, the checkpoint writer's queue server).

Torch-free on purpose: a spawned helper imports the module of its entry function before it runs it, and the
queue server, whose entry lived beside the checkpoint code, spent 8.7 s importing torch and megatron-core at
every finetune start on the 2-core CI machine (a profile of one finetune task: 29.7 s in all).
"""

from __future__ import annotations

import os
import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)


def die_with_parent(parent: int) -> None:
    """A helper process (a spawned rank, the checkpoint writer's queue server) whose stage process is killed
    (SIGKILL, the OOM killer, a node agent) must not live on: alone a rank would hold its GPU memory, pinned host
    buffers and half a collective forever, and could write into the run after a resume started new ranks. Linux's
    parent-death signal ends it with its parent. Call it first thing in the child, with the parent's pid."""
    import ctypes  # noqa: PLC0415

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: no parent-death signal, the old behaviour
        return
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def outlive_stop_signals(parent: int) -> None:
    """The queue server's initializer: the stop signals are ignored, not blocked (a spawned interpreter already
    runs threads that would take a blocked signal's default action), so a preemption cannot break a save in
    flight; SIGKILL at the end of KillWait still ends it, and so does its trainer's death (a server that
    outlived a SIGKILLed trainer was found holding 420 MB)."""
    die_with_parent(parent)
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
