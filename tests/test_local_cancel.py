"""`harness cancel` of a local run signals the run's own processes, all of them, and nothing else: the driver's
pid in jobs.json may since belong to another process (a crashed driver, a reboot), and submitit's tasks ignore
SIGTERM (they run on through Slurm's preemption warning)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import cli
from harness.launch import procs
from harness.launch.backend import Submission
from harness.ops import state
from harness.ops import submit as launching
from test_ops import make_run

IGNORE_TERM = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
               "open(sys.argv[2], 'w').close(); time.sleep(600)")
"""A stage task as submitit runs it: SIGTERM ignored, its arguments naming its log folder inside the run."""
DRIVER = ("import subprocess, sys, time; "
          "subprocess.Popen([sys.executable, '-c', sys.argv[1], sys.argv[2] + '/logs/tokenize/7', sys.argv[3]]); "
          "time.sleep(600)")
"""A driver: dies on SIGTERM, its task (in its process group) does not."""


def record(paths: launching.RunPaths, pid: int, when: float) -> None:
    launching.record_jobs(paths, launching.Choice("local", "test"),
                          [Submission("*", f"local:{pid}", (), False, when, 0)])


def test_a_pid_reused_by_another_session_is_not_the_driver(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The driver died unrecorded and its number now leads someone else's session: status does not call the
    run live, and cancel signals nothing."""
    paths, plan, _ = make_run(tmp_path, executor="local")
    submitted = time.time() - 60  # the driver was recorded a minute ago; its number was taken since
    other = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        record(paths, other.pid, submitted)
        assert not state.collect(paths, plan).driver_alive
        assert cli.main(["cancel", str(paths.root)]) == 0
        assert f"local driver {other.pid} was not running" in capsys.readouterr().out
        time.sleep(0.3)
        assert other.poll() is None, "cancel killed a process that is not the run's"
    finally:
        other.kill()
        other.wait()


def test_cancel_stops_the_tasks_that_ignore_sigterm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    paths, plan, _ = make_run(tmp_path, executor="local")
    started = tmp_path / "task-started"
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, IGNORE_TERM, str(paths.root), str(started)],
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert time.monotonic() < deadline and driver.poll() is None, "the stand-in task never started"
            time.sleep(0.05)
        record(paths, driver.pid, time.time())
        group = procs.members(driver.pid, paths.root, time.time())
        assert group is not None and len(group) == 2 and driver.pid in group
        assert state.collect(paths, plan).driver_alive
        monkeypatch.setattr(procs, "GRACE_S", 1.0)
        assert cli.main(["cancel", str(paths.root)]) == 0
        assert f"local driver {driver.pid} stopped" in capsys.readouterr().out
        assert procs.members(driver.pid, paths.root, time.time()) == []
        rs = state.collect(paths, plan)
        assert rs.final and not rs.driver_alive
    finally:
        driver.kill()
        driver.wait()


def test_the_driver_is_told_by_its_start_before_it_was_recorded(tmp_path: Path) -> None:
    """Whatever its arguments say (or before they can be read), the process with the recorded pid that started
    before the record is the driver; one that started after it took the number later."""
    root = tmp_path / "run"
    root.mkdir()
    p = subprocess.Popen(["sleep", "600"], start_new_session=True)  # arguments that name nothing of the run
    try:
        time.sleep(0.05)
        after = time.time()
        assert procs.members(p.pid, root, after) == [p.pid]
        assert procs.members(p.pid, root, after - 60) == []
    finally:
        p.kill()
        p.wait()
