"""A rank target for tests of the rank spawner (tests/test_ranks.py): records its pid, then waits to be killed.

It ignores SIGINT, the parent-death signal torch.multiprocessing arms: a rank inside a long C++ call (an NCCL
wait, a checkpoint write) never returns to the interpreter to raise KeyboardInterrupt, so SIGINT alone does not
end it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any


def sleep(spec: Any, task: int, paths: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pid_file = Path(paths.root) / f"rank-{os.environ['RANK']}.pid"
    pid_file.write_text(str(os.getpid()))
    time.sleep(600)


def threads(spec: Any, task: int, paths: Any) -> None:
    """Joins the process group as a finetune rank does, then records its intra-op thread count."""
    import torch

    from harness.cosmos import parallel

    parallel.init(tp=1)
    (Path(paths.root) / f"rank-{os.environ['RANK']}.threads").write_text(str(torch.get_num_threads()))
    parallel.shutdown()


def fail(spec: Any, task: int, paths: Any) -> None:
    """Fails with a traceback far larger than a pipe's buffer (the error's way back to the stage)."""
    raise RuntimeError("x" * 200_000 + f" rank {os.environ['RANK']} failed on purpose")
