"""`python -m harness.stages RUN_DIR STAGE [TASK]`: run one task of a submitted run as a launcher would.

The same entry as a Slurm or local task (`harness.launch.worker.run_task`), for starting a stage by hand: under
`torchrun --nproc-per-node N` (each process one rank), under `srun`, or as one plain process (multi-rank stages
then spawn their ranks). An entry point like the CLI: nothing imports it, so it may reach the launch layer.
"""

from __future__ import annotations

import sys

from harness.core.errors import HarnessError
from harness.core.stages import NAMES
from harness.launch.worker import run_task


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3) or argv[1] not in NAMES or (len(argv) == 3 and not argv[2].isdigit()):
        print(f"usage: python -m harness.stages RUN_DIR STAGE [TASK]; STAGE one of {', '.join(NAMES)}",
              file=sys.stderr)
        return 2
    try:
        print(run_task(argv[0], argv[1], int(argv[2]) if len(argv) == 3 else 0))
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
