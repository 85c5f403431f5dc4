"""Lifetimes of the helper processes a stage starts (spawned ranks).

Torch-free on purpose: a spawned rank imports this before its target, inside the garbage collector's pause
(`harness.lib.heap.quiet_imports`), and arms the parent-death signal before anything slow.
"""

from __future__ import annotations

import os
import signal


def die_with_parent(parent: int) -> None:
    """A spawned rank whose stage process is killed (SIGKILL, the OOM killer, a node agent) must not live on:
    alone it would hold its GPU memory, pinned host buffers and half a collective forever, and could write into
    the run after a resume started new ranks. Linux's parent-death signal ends it with its parent. Call it
    first thing in the child, with the parent's pid."""
    import ctypes  # noqa: PLC0415

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: no parent-death signal, the old behaviour
        return
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
