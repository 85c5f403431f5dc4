"""Shared fixtures. Slurm tests run against the project's own local cluster (sbatch/local-slurm.sh up);
CI sets HARNESS_REQUIRE_SLURM=1 so a missing cluster fails instead of skipping."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONF = Path(os.environ.get("TMPDIR", "/tmp")) / "harness-slurm" / "etc" / "slurm.conf"


def _controller_up() -> str:
    try:
        p = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    return "" if p.returncode == 0 and "UP" in p.stdout else (p.stdout + p.stderr).strip()


def _start_cluster() -> str:
    """Bring up sbatch/local-slurm.sh's cluster (packages must be installed; needs root)."""
    if os.geteuid() != 0 or shutil.which("slurmctld") is None:
        return "slurmctld not installed or not root (run: sudo bash sbatch/local-slurm.sh install)"
    p = subprocess.run(["bash", str(REPO / "sbatch" / "local-slurm.sh"), "up"], capture_output=True, text=True,
                       timeout=180, env={**os.environ, "SKIP_INSTALL": "1"})
    return "" if p.returncode == 0 else p.stderr.strip()[-500:]


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[str]:
    """SLURM_CONF of the project's local cluster: reused if one answers, else started here and stopped
    after the session. Fails when HARNESS_REQUIRE_SLURM=1 (CI), skips elsewhere when none can run."""
    started = False
    if not os.environ.get("SLURM_CONF"):
        os.environ["SLURM_CONF"] = str(DEFAULT_CONF)
    why = _controller_up() if Path(os.environ["SLURM_CONF"]).exists() else "no slurm.conf"
    if why and os.environ["SLURM_CONF"] == str(DEFAULT_CONF):
        why = _start_cluster() or _controller_up()
        started = not why
    if why:
        msg = f"no local Slurm cluster ({why}); start it with: bash sbatch/local-slurm.sh up"
        if os.environ.get("HARNESS_REQUIRE_SLURM") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    yield os.environ["SLURM_CONF"]
    if started:
        subprocess.run(["bash", str(REPO / "sbatch" / "local-slurm.sh"), "down"], capture_output=True, timeout=120)


@pytest.fixture()
def no_slurm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A PATH without Slurm's client tools: the launcher must fall back to the local executor."""
    keep = [p for p in os.environ["PATH"].split(os.pathsep)
            if not (Path(p) / "sbatch").exists()]
    monkeypatch.setenv("PATH", os.pathsep.join(keep))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="rewrite tests/golden/*.sbatch")
    parser.addoption("--reliability-out", default="", help="write the reliability tally to this JSON file")


# ---------------------------------------------------------------------------- reliability tally (issue 8)
# The `reliability` fixture and the end-of-session summary (results/reliability.json) live in
# tests/reliability_plugin.py; importing its hooks here registers them (tests/ is not a package).
from reliability_plugin import (  # noqa: E402,F401
    pytest_collection_finish, pytest_runtest_logreport, pytest_sessionfinish, pytest_terminal_summary,
    reliability)
