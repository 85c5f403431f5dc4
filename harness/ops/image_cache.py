"""The imported container image's cache seen from the login node: its state for the plan, and doctor's checks.

`state` is the one place the plan's `Facts.image` is learned (plan, doctor and submit gather through
`harness.ops.plan`); `cache_checks` judges the cache directory for doctor: writable, and room for the image
(`container.image_gb`) where the plan imports one.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Literal

from harness.core import footprint
from harness.core import image as image_mod
from harness.core.plan import Plan
from harness.core.spec import RunSpec

KEY = "container.cache_dir"
Row = tuple[Literal["pass", "fail", "skip"], str, str, str]
"""(status, key, what, detail): a doctor `Check`'s fields (doctor imports this module, not the reverse)."""


def state(spec: RunSpec, local: bool) -> image_mod.CacheState:
    """Whether the registry image is to be imported, or is complete in the cache and reused; `local`: the local
    executor runs no container, so it imports nothing."""
    cache = image_mod.wanted(spec)
    if cache is None or local:
        return "off"
    return "complete" if image_mod.complete(cache) else "missing"


def writable(d: Path) -> tuple[Path, str]:
    """(the directory or its nearest existing parent, '' or why it cannot be written); probes with a temp file."""
    where = d
    while not where.exists() and where != where.parent:
        where = where.parent
    if not where.is_dir():
        return where, f"{where} is not a directory"
    try:
        with tempfile.NamedTemporaryFile(prefix=".harness-doctor-", dir=where):
            pass
    except OSError as e:
        return where, f"cannot create a file in {where} ({e.strerror})"
    return where, ""


def cache_checks(plan: Plan) -> list[Row]:
    """Doctor's rows for the cache; none where the plan imports no image."""
    i = plan.image
    if i is None:
        return []
    what = "imported image cache"
    if i.reused:
        return [("pass", KEY, what, f"{i.sqsh} is complete: reused, nothing to import")]
    where, why = writable(i.sqsh.parent)
    if why:
        return [("fail", KEY, f"{what} writable", why)]
    want, free = plan.spec.container.image_gb * 10**9, shutil.disk_usage(where).free
    return [("pass", KEY, f"{what} writable", str(where)),
            ("pass" if free >= want else "fail", f"{KEY}, container.image_gb",
             f"free space for the image (~{footprint.human(want)})", f"{footprint.human(free)} free on {where}")]
