"""The ranks a stage spawns die with it: a SIGKILLed finetune must not leave ranks holding GPUs and half a
collective (seen on 2 x H200: a killed 4B stage's ranks outlived it into the resumed run)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import specs
from harness.launch.backend import pid_alive

REPO = Path(__file__).resolve().parents[1]

SPAWN = """
import sys
from harness.core import spec as spec_mod
from harness.core.paths import RunPaths
from harness.stages import ranks
spec = spec_mod.loads(open(sys.argv[1]).read(), sys.argv[1])
ranks.spawn(spec, 0, RunPaths(__import__("pathlib").Path(sys.argv[2])), 2, "rank_sleeper:sleep")
"""


def _wait(cond, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


def test_spawned_ranks_die_with_a_killed_stage(tmp_path: Path) -> None:
    spec = specs.write(tmp_path / "run.toml", specs.tiny_run(tmp_path, name="ranks", videos=tmp_path))
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}
    stage = subprocess.Popen([sys.executable, "-c", SPAWN, str(spec), str(tmp_path)], env=env,
                             start_new_session=True)
    pid_files = [tmp_path / f"rank-{r}.pid" for r in (0, 1)]
    try:
        assert _wait(lambda: all(p.is_file() and p.read_text() for p in pid_files), 120), "ranks did not start"
        pids = [int(p.read_text()) for p in pid_files]
        assert all(pid_alive(p) for p in pids)
        os.kill(stage.pid, signal.SIGKILL)  # the stage process only, as a node agent or the OOM killer would
        stage.wait()
        assert _wait(lambda: not any(pid_alive(p) for p in pids), 20), f"ranks {pids} outlived their stage"
    finally:
        try:
            os.killpg(stage.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
