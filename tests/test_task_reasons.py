"""A task's reason says how it ended, in one line: a signal, the out-of-memory killer or a time limit by name, a
failure by its error line, and never a log line; a state not yet in accounting is shown as not yet known."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from harness.core import failures
from harness.launch import slurmcli, slurmstate
from harness.launch.backend import TaskState

LOG_TAIL = ("2026-12-06 06:40:01 INFO harness.tokenize: shard 1: manifest .../shard-00001.json missing; tokenizing\n"
            "2026-12-06 06:40:02 INFO harness.tokenize: clip_003.mp4: 17 frames\n")


def st(state: str, **kw: Any) -> TaskState:
    return TaskState("", -1, state, "7_1", **kw)


@pytest.mark.parametrize(("code", "sig"), [("0:9", 9), ("9:0", 0), ("0:15", 15), ("", 0), ("1:0", 0), ("1:9", 0),
                                                 ("x", 0)])
def test_exit_signal_is_the_second_half(code: str, sig: int) -> None:
    assert slurmcli.exit_signal(code) == sig


def test_a_sigkilled_task_says_so_not_its_last_log_line(tmp_path: Path) -> None:
    out = tmp_path / "7_1_0_log.out"
    out.write_text("")
    out.with_suffix(".err").write_text(LOG_TAIL)
    s = st("FAILED", node="n1", exit_code="9:0", signal=9)
    assert slurmstate.explain("FAILED", s, str(out), False) == "killed by signal 9 (SIGKILL) on n1"


def test_a_log_line_is_never_a_reason() -> None:
    assert failures.reason(LOG_TAIL) == ""
    tb = LOG_TAIL + "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\nValueError: bad clip\n"
    assert failures.reason(tb) == "ValueError: bad clip"


def test_a_failed_task_without_an_error_line_gives_its_exit_code(tmp_path: Path) -> None:
    out = tmp_path / "7_1_0_log.out"
    out.with_suffix(".err").write_text(LOG_TAIL)
    assert slurmstate.explain("FAILED", st("FAILED", exit_code="3:0"), str(out), False) == "exit code 3:0"


@pytest.mark.parametrize(("limit", "said"), [("00:10:00", "time limit of 10 min reached"),
                                             ("02:00:00", "time limit of 2 h reached"),
                                             ("1-00:00:00", "time limit of 1 d reached"),
                                             ("00:00:30", "time limit of 1 min reached"),
                                             ("UNLIMITED", "time limit reached")])
def test_timeout_names_the_limit(limit: str, said: str) -> None:
    assert slurmstate.explain("TIMEOUT", st("TIMEOUT", time_limit=limit), "", False).startswith(said + ":")


def test_out_of_memory_names_the_node() -> None:
    assert slurmstate.explain("OUT_OF_MEMORY", st("OUT_OF_MEMORY", node="n2"), "", False).startswith(
        "out of memory on n2:")


def test_a_started_task_missing_from_both_queries_is_not_yet_known(tmp_path: Path) -> None:
    """The window between squeue dropping a killed task and accounting recording it: not CANCELLED."""
    log = tmp_path / "7_1_0_log.out"
    log.write_text("started\n")
    row = slurmstate._row("tokenize", 1, False, "7_1", str(log), time.time(), None, {"7"})
    assert row.state == "UNKNOWN" and "not in squeue or sacct yet" in row.reason
    never = slurmstate._row("tokenize", 2, False, "7_2", str(tmp_path / "7_2_0_log.out"), time.time(), None, {"7"})
    assert (never.state, never.reason) == ("CANCELLED", "cancelled while pending")
