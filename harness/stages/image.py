"""import-image: one `enroot import` of the registry image into the cache, before the first container stage.

Runs on a compute node outside any container (plain srun; the registry must be reachable from there, as for
Pyxis's own pull). Under an exclusive flock on `<name>.sqsh.lock`, so that two runs or campaigns importing the
same image at once import it once: the second waits, then finds the marker and returns. enroot writes
`<name>.sqsh.partial` (a leftover of a killed import is removed first: enroot refuses to overwrite), the
harness renames it to `<name>.sqsh` only after enroot exits 0, then writes `<name>.sqsh.done` with the size.
A final name without a matching marker (a rename whose marker write was cut off) is imported again, never used.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess

from harness.core import image as image_mod
from harness.core.atomic import atomic_write_text
from harness.core.errors import HarnessError
from harness.core.paths import RunPaths
from harness.core.spec import RunSpec

log = logging.getLogger("harness.image")


def run(spec: RunSpec, task: int, paths: RunPaths) -> None:
    cache = image_mod.wanted(spec)
    if cache is None:
        raise HarnessError(f"{spec.source}: container.image = {spec.container.image!r}: import-image needs a "
                           f"registry image with container.import_image = true")
    cache.sqsh.parent.mkdir(parents=True, exist_ok=True)
    with open(cache.lock, "a", encoding="utf-8") as lock:
        log.info("waiting for %s", cache.lock)
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when this process dies
        if image_mod.complete(cache):
            log.info("%s is complete (%s): reused, nothing imported", cache.sqsh, cache.done)
            return
        imported(cache)


def imported(cache: image_mod.ImageCache) -> None:
    """enroot import to the partial name, rename, then the marker; the caller holds the lock."""
    enroot = shutil.which("enroot")
    if enroot is None:
        raise HarnessError(f"{os.uname().nodename}: enroot is not on PATH; import-image runs `enroot import` on a "
                           f"compute node (install enroot there, or give container.image a .sqsh path)")
    for stale in (cache.done, cache.partial, cache.sqsh):
        stale.unlink(missing_ok=True)
    argv = [enroot, "import", "-o", str(cache.partial), cache.source]
    log.info("importing: %s", " ".join(argv))
    rc = subprocess.run(argv, check=False).returncode
    if rc != 0 or not cache.partial.is_file():
        cache.partial.unlink(missing_ok=True)
        raise HarnessError(f"enroot import {cache.source} exited {rc}"
                           f"{'' if rc else ' without writing ' + str(cache.partial)}; see its output above")
    os.replace(cache.partial, cache.sqsh)
    size = cache.sqsh.stat().st_size
    atomic_write_text(cache.done, image_mod.done_record(cache, size))
    log.info("imported %s: %s (%d bytes)", cache.source, cache.sqsh, size)
