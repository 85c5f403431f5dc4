"""Stand-in programs a test puts first on PATH where the real one is missing here (enroot, Pyxis's srun flags):
each records every call's argv, one line each, so the test can count and read the calls."""

from __future__ import annotations

import shlex
from pathlib import Path


def _script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/bash\n" + body, encoding="utf-8")
    path.chmod(0o755)
    return path


def enroot(bin_dir: Path, log: Path, *, sleep_s: float = 0.0, rc: int = 0) -> Path:
    """`enroot`: appends its argv to `log`, sleeps `sleep_s`, writes a small file to the `-o` path (unless it
    exits with a nonzero `rc`), like `enroot import -o FILE URI` without the registry."""
    return _script(bin_dir / "enroot", f"""echo "$*" >> {shlex.quote(str(log))}
out=""
while [ $# -gt 0 ]; do [ "$1" = "-o" ] && out="$2"; shift; done
sleep {sleep_s}
[ {rc} -ne 0 ] && exit {rc}
[ -e "$out" ] && {{ echo "[ERROR] File already exists: $out" >&2; exit 1; }}
printf 'hsqs stand-in squashfs' > "$out"
""")


def srun(bin_dir: Path, log: Path, real_srun: str, run_for: str) -> Path:
    """`srun` of a cluster with Pyxis, stood in: records `$SLURM_JOB_NAME` and its argv to `log`; a job whose
    name ends with `run_for` runs through the real srun, every other job's step is stood in (exits 0)."""
    return _script(bin_dir / "srun", f"""echo "$SLURM_JOB_NAME $*" >> {shlex.quote(str(log))}
case "$SLURM_JOB_NAME" in
  *{run_for}) exec {shlex.quote(real_srun)} "$@" ;;
esac
exit 0
""")
