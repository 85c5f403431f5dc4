"""Benches that need several ranks (tensor or data parallel) run under torchrun, as a user's job would.

`harness bench train --tp 2` started as one process re-launches itself with `torch.distributed.run`
(standalone rendezvous, one rank per GPU) and returns rank 0's figures; started by torchrun or srun already
it just runs. The ranks find each other through `harness.cosmos.parallel.rank_env`, the stages' own path.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def launched(world: int) -> bool:
    """True when this process is one of `world` ranks (or world is 1)."""
    from harness.cosmos.parallel import rank_env

    have = rank_env().world
    if have not in (1, world):
        raise SystemExit(f"{have} ranks were started, the bench needs {world}")
    return world == 1 or have == world


def relaunch(module: str, argv: list[str], world: int, result: Path) -> dict[str, Any]:
    """Run `python -m module argv` on `world` local ranks; rank 0 writes `result`, read back here."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
           "-m", module, *argv]
    subprocess.run(cmd, check=True)
    return json.loads(result.read_text(encoding="utf-8"))


def is_rank0() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0
