"""torchmetrics' metrics are imported on first use, not when Lightning imports torchmetrics
(harness.cosmos.lazymetrics)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from types import ModuleType

import pytest

from harness.cosmos.lazymetrics import SPLIT, rest_on_first_use, split_init


def test_split_keeps_the_files_line_numbers_and_runs_whole_without_the_split_line() -> None:
    source = "import os\nx = 1" + SPLIT + "\ny = 2\n"
    head, rest = split_init(source) or ("", "")
    assert head == "import os\nx = 1"
    assert rest.splitlines()[2:] == source.splitlines()[2:] and rest.splitlines()[:2] == ["", ""]
    assert split_init("import os\nfrom torchmetrics import Metric\n") is None


def test_the_rest_runs_once_and_a_concurrent_reader_waits_for_it() -> None:
    module = ModuleType("fake")
    module.__dict__["runs"] = 0
    rest = compile("import time\nruns += 1\ntime.sleep(0.2)\nlate = 'loaded'\n", "fake.py", "exec")
    module.__getattr__ = rest_on_first_use(module, rest)  # type: ignore[method-assign]  # PEP 562 module __getattr__
    got: list[str] = []
    threads = [threading.Thread(target=lambda: got.append(module.late)) for _ in range(4)]
    for t in threads:
        t.start()
        time.sleep(0.01)
    for t in threads:
        t.join()
    assert got == ["loaded"] * 4 and module.runs == 1 and "__getattr__" not in vars(module)
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        module.nope  # noqa: B018 (the attribute access is the test)


def _names(code: str) -> dict[str, object]:
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]  # json gives Any


def test_through_the_harness_lightnings_names_come_first_and_the_rest_on_first_use() -> None:
    """A fresh process: after `import harness`, `import torchmetrics` binds `Metric` and `MetricCollection` and
    imports no metric; the first other name loads the rest, and the namespace then equals a plain import's, with
    one log handler (the `__init__`'s head ran once)."""
    probe = ("import sys, json{h}, torchmetrics; early = 'torchmetrics.functional' in sys.modules; "
             "same = torchmetrics.Metric is sys.modules['torchmetrics.metric'].Metric; "
             "from torchmetrics import MeanMetric; "
             "print(json.dumps({{'early': early, 'same': same, 'late': 'torchmetrics.functional' in sys.modules, "
             "'handlers': len(torchmetrics._logger.handlers), 'names': sorted(vars(torchmetrics)), "
             "'all': len(torchmetrics.__all__), 'mean': MeanMetric.__module__}}))")
    hooked, plain = _names(probe.format(h=", harness")), _names(probe.format(h=""))
    assert hooked["early"] is False and plain["early"] is True
    assert hooked["same"] is True and hooked["late"] is True and hooked["handlers"] == 1
    assert {k: hooked[k] for k in ("names", "all", "mean", "handlers")} == \
        {k: plain[k] for k in ("names", "all", "mean", "handlers")}
