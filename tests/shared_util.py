"""What test workers share when pytest-xdist runs the suite in several processes (`-n N`): one lock file per
shared thing, and one directory of built artifacts for the whole run (each worker's basetemp is a child of it).
Without xdist the same calls work in the single process."""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def xdist_worker() -> str:
    """'gw0', 'gw1', ... inside an xdist worker; '' in a plain pytest process."""
    return os.environ.get("PYTEST_XDIST_WORKER", "")


def xdist_group(item: Any, name: str) -> None:
    """Put a collected test in an xdist group, with the "@name" suffix of its node id that the controller's
    `--dist loadgroup` scheduler groups by. pytest-xdist 3.8 appends that suffix by assigning `item._nodeid`,
    which pytest 9 no longer reads (a node's id is `item._id`): without this, every test was scheduled on its
    own, the local cluster's tests ran on both workers at once, and module fixtures were built on each."""
    import pytest

    item.add_marker(pytest.mark.xdist_group(name))
    if xdist_worker() and hasattr(item, "_id"):
        from _pytest.nodeid import coerce_node_id  # pytest >= 9: a node id is structured

        item._id = coerce_node_id(f"{item.nodeid}@{name}")


def shared_root(factory: Any) -> Path:
    """The run's temp root every worker sees: basetemp itself without xdist, its parent with it."""
    base = Path(factory.getbasetemp())
    return base.parent if xdist_worker() else base


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on path (released when the holder exits, even when killed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
