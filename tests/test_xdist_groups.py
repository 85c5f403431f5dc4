"""`-n N --dist loadgroup` (the README's parallel form of the test command) keeps an xdist group on one worker:
the local cluster's tests rely on it to run one after another, and modules with a module-scoped fixture to
build it once. Checked with the grouping helper the suite's conftest uses, on a toy suite of two workers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("xdist")

CONFTEST = """
import sys
sys.path.insert(0, {tests!r})
import pytest
from shared_util import xdist_group

@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.name.startswith("test_grouped"):
            xdist_group(item, "cluster")
"""

TOY = "".join(f"def test_{kind}_{i}():\n    time.sleep(0.05)\n\n\n" for kind in ("grouped", "free") for i in range(8))
"""The grouped tests first, one after another: ungrouped, a scheduler alternates its first units between workers."""


def test_a_group_runs_on_one_worker(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST.format(tests=str(Path(__file__).parent)))
    (tmp_path / "test_toy.py").write_text("import time\n\n\n" + TOY)
    out = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-v", "-p",
                          "no:cacheprovider", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path,
                         timeout=300).stdout
    ran = re.findall(r"\[(gw\d)\] \[\s*\d+%\] PASSED \S+::(test_\w+)", out)
    assert len(ran) == 16, out
    assert len({gw for gw, name in ran if name.startswith("test_grouped")}) == 1, out
    assert len({gw for gw, _ in ran}) == 2, out  # the other worker took the free tests
