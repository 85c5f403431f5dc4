"""Reliability tally of one test session: what the fault, fuzz, injection and secret tests tried and what
they found. Tests record through the session fixture `reliability` (`reliability.add("faults_injected")`);
the summary is printed at the end of the session, and written to results/reliability.json only when asked
(`pytest --reliability-out results/reliability.json`), so a plain test run leaves the tree unchanged.

Loaded from tests/conftest.py (tests/ is not a package, so it is imported by module name, not through
`pytest_plugins`). Counts only ever come from tests that ran: nothing here is a default or a constant.
"""

from __future__ import annotations

import json
import platform
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest

KEYS = ("faults_injected", "faults_survived", "bad_inputs_tried", "bad_inputs_reported", "specs_fuzzed",
        "hand_written_bad_specs", "injection_strings_tried", "canaries_fired", "tracebacks", "secrets_found",
        "files_scanned_for_secrets", "slurm_jobs_submitted")
"""The figures the summary always shows (0 when no test recorded one)."""


class Reliability:
    """Thread-safe counters plus a list of notes (one line per injected fault and how it ended)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.notes: list[str] = []
        self.tests: dict[str, str] = {}
        self._lock = threading.Lock()

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def note(self, text: str) -> None:
        with self._lock:
            self.notes.append(text)

    def as_dict(self) -> dict[str, Any]:
        counts = {k: int(self.counts.get(k, 0)) for k in KEYS}
        counts.update({k: int(v) for k, v in sorted(self.counts.items()) if k not in counts})
        return {"counts": counts, "notes": list(self.notes), "tests": dict(sorted(self.tests.items())),
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": platform.node()}


_TALLY = Reliability()


@pytest.fixture(scope="session")
def reliability() -> Iterator[Reliability]:
    """The session's tally (session-scoped, so hypothesis tests may use it too)."""
    yield _TALLY


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remember the outcome of every test that used the tally, for the JSON file."""
    if report.nodeid not in _TALLY.tests:
        return
    if report.when == "call" or report.outcome != "passed":
        _TALLY.tests[report.nodeid] = report.outcome


def pytest_collection_finish(session: pytest.Session) -> None:
    """After deselection (-k, -m): the tests of this session that record into the tally."""
    for item in session.items:
        if "reliability" in getattr(item, "fixturenames", ()):
            _TALLY.tests.setdefault(item.nodeid, "not run")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _TALLY.counts:
        return
    data = _TALLY.as_dict()
    tr = terminalreporter
    tr.write_sep("=", "reliability summary")
    for k, v in data["counts"].items():
        tr.write_line(f"{k:<28} {v}")
    for n in data["notes"]:
        tr.write_line(f"  - {n}")
    out = tr.config.getoption("--reliability-out", default="")
    tr.write_line(f"written to {out}" if out else "not written (pytest --reliability-out FILE writes it)")


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist controller: add a finished worker's tally (sent in its workeroutput) to the session's."""
    part = getattr(node, "workeroutput", {}).get("reliability")
    if not part:
        return
    with _TALLY._lock:
        _TALLY.counts.update({k: v for k, v in part["counts"].items() if v})
        _TALLY.notes.extend(part["notes"])
        for nodeid, outcome in part["tests"].items():
            if outcome != "not run" or nodeid not in _TALLY.tests:
                _TALLY.tests[nodeid] = outcome


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Written when asked and a test recorded something (a partial run writes a partial tally: its `tests`
    say which tests ran). An xdist worker only hands its tally to the controller, which writes the file."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["reliability"] = _TALLY.as_dict()
        return
    out = session.config.getoption("--reliability-out", default="")
    if not _TALLY.counts or not out:
        return
    data = _TALLY.as_dict()
    data["exit_status"] = int(exitstatus)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)
