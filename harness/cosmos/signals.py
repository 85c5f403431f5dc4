"""Checkpoint-then-requeue on Slurm's warning signal, cooperating with submitit.

Slurm sends SIGUSR2 `signal_delay_s` before the time limit (submitit's `--signal=USR2@N`) to every task, and
SIGTERM on preemption or scancel. submitit's own SIGUSR2 handler (installed before the worker runs) calls the
task's `checkpoint()`, runs `scontrol requeue` on rank 0 and exits; if it ran mid-step nothing would be saved.
So the trainer installs a flag-only handler, all ranks agree on the flag after each step, save a checkpoint
together, and only then hand over: rank 0 calls submitit's saved handler (requeue + exit), other ranks exit
quietly (SystemExit, which submitit does not report as a task error). Without submitit (tests, torchrun) or on
SIGTERM, every rank raises `Preempted` so the stage is not marked done and a rerun resumes.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


class Preempted(RuntimeError):
    """Training stopped on a signal after writing a complete checkpoint; rerunning the stage resumes it."""


class StopSignal:
    def __init__(self) -> None:
        self.signum = 0
        self.previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in SIGNALS:
            self.previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = self.signum or signum
        log.warning("caught %s: checkpointing after this step", signal.Signals(signum).name)

    def restore(self) -> None:
        for sig, prev in self.previous.items():
            signal.signal(sig, prev)
        self.previous = {}

    def agreed(self, device: torch.device) -> int:
        """The signal any rank caught (0 if none), identical on every rank."""
        if not dist.is_initialized():
            return self.signum
        flag = torch.tensor([self.signum], dtype=torch.int64, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def exit(self, signum: int, step: int) -> None:
        prev = self.previous.get(signum)
        self.restore()
        if signum == signal.SIGUSR2 and callable(prev) and "submitit" in getattr(prev, "__module__", ""):
            rank = dist.get_rank() if dist.is_initialized() else 0
            log.warning("checkpoint at step %d written; handing over to submitit to requeue", step)
            if rank == 0:
                prev(signum, None)  # checkpoint() + scontrol requeue + sys.exit
            sys.exit(-1)
        raise Preempted(f"stopped by {signal.Signals(signum).name} after a complete checkpoint at step {step}")
