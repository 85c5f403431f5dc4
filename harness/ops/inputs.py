"""The run's inputs as the login node sees them, for `plan`, `doctor` and `submit`: the library's listing
(`harness.lib.inputs`) of the source the spec names, with each error naming the spec file and key."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

from harness.core.errors import HarnessError, Problem
from harness.core.spec import RunSpec
from harness.lib import inputs as listing
from harness.lib.inputs import InputItem

T = TypeVar("T")


def data_key(spec: RunSpec) -> str:
    """The one spec key the inputs come from: jsonl wins over a manifest, a manifest over the directory."""
    d = spec.data
    return "data.jsonl" if d.jsonl else "data.manifest" if d.manifest else "data.videos"


def _keyed(spec: RunSpec, list_them: Callable[[], T]) -> T:
    try:
        return list_them()
    except HarnessError as e:
        raise HarnessError(Problem(spec.source, data_key(spec), e.problems[0].message)) from None


def discover(spec: RunSpec) -> list[InputItem]:
    """The run's inputs in a deterministic order (directory listing sorted by relative path, manifest order,
    or jsonl order)."""
    d = spec.data
    if d.jsonl:
        return _keyed(spec, lambda: listing.from_jsonl(Path(d.jsonl).expanduser()))
    if d.manifest:
        return _keyed(spec, lambda: listing.from_manifest(Path(d.manifest).expanduser()))
    return _keyed(spec, lambda: listing.from_dir(Path(d.videos).expanduser(), d.extensions))


def count(spec: RunSpec) -> int:
    """len(discover(spec)) without building the items (a jsonl's lines are checked, so it is listed)."""
    d = spec.data
    if d.jsonl:
        return len(discover(spec))
    if d.manifest:
        return _keyed(spec, lambda: listing.count_manifest(Path(d.manifest).expanduser()))
    return _keyed(spec, lambda: listing.count_dir(Path(d.videos).expanduser(), d.extensions))
