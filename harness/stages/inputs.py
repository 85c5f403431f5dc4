"""The run's input list in its run directory (`<run>/inputs.jsonl`): written once at submit time, read by every
tokenize task and by merge, so all of them see the same list even if the source changes while the array runs.
Listing the source is the library's (`harness.lib.inputs`), done on the login node (`harness.ops.inputs`).
"""

from __future__ import annotations

import json
from dataclasses import asdict

from harness.core.atomic import atomic_write_text
from harness.core.errors import HarnessError
from harness.core.paths import RunPaths
from harness.lib.inputs import InputItem


def write_inputs(paths: RunPaths, items: list[InputItem]) -> None:
    text = "".join(json.dumps(asdict(it), sort_keys=True) + "\n" for it in items)
    atomic_write_text(paths.inputs_jsonl, text)


def read_inputs(paths: RunPaths) -> list[InputItem]:
    path = paths.inputs_jsonl
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise HarnessError(f"{path}: cannot read the run's input list ({e.strerror}); was the run submitted?") \
            from None
    items = [InputItem(**json.loads(line)) for line in lines if line.strip()]
    for i, it in enumerate(items):
        if it.index != i:
            raise HarnessError(f"{path}: line {i + 1} has index {it.index}, expected {i}")
    return items
