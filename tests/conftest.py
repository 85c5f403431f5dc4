"""Shared fixtures. Slurm tests run against the project's own local cluster (sbatch/local-slurm.sh up);
CI sets HARNESS_REQUIRE_SLURM=1 so a missing cluster fails instead of skipping."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONF = Path(os.environ.get("TMPDIR", "/tmp")) / "harness-slurm" / "etc" / "slurm.conf"


def _controller_up() -> str:
    try:
        p = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    return "" if p.returncode == 0 and "UP" in p.stdout else (p.stdout + p.stderr).strip()


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """SLURM_CONF of a running local cluster; fails in CI, skips elsewhere when none is up."""
    if not os.environ.get("SLURM_CONF") and DEFAULT_CONF.exists():
        os.environ["SLURM_CONF"] = str(DEFAULT_CONF)
    why = _controller_up()
    if why:
        msg = f"no local Slurm cluster ({why}); start it with: bash sbatch/local-slurm.sh up"
        if os.environ.get("HARNESS_REQUIRE_SLURM") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return os.environ["SLURM_CONF"]


@pytest.fixture()
def no_slurm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A PATH without Slurm's client tools: the launcher must fall back to the local executor."""
    keep = [p for p in os.environ["PATH"].split(os.pathsep)
            if not (Path(p) / "sbatch").exists()]
    monkeypatch.setenv("PATH", os.pathsep.join(keep))
