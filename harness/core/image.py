"""A registry container image imported once into a squashfs file that every container stage then runs from.

Pyxis given a registry URI pulls and unpacks the image in every container task (each finetune attempt, each
infer array task, each member of a campaign); given a `.sqsh` path it only mounts the file. So where
`container.image` is a registry URI (`nvcr.io#nvidia/nemo:26.02`), the plan adds one `import-image` task that
runs `enroot import -o <cache>/<name>.sqsh.partial docker://<uri>` and then renames the file to its final name,
and every container stage's `--container-image` names that `.sqsh`. The final name is only ever a whole file:
enroot writes the partial name, the rename is atomic, and the `.done` marker (written after the rename, with the
file's size) is what "complete" means. A complete file is reused by every later run with the same cache.

This module is pure but for `complete` (two stats and a small read), which the plan's gatherer and the
import task share so that both judge a cached file the same way.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from harness.core.sections import RunSpec

CacheState = Literal["off", "missing", "complete"]
"""What the plan's gatherer found (`harness.core.plan.Facts.image`): "missing" (the .sqsh is to be imported),
"complete" (reused, nothing submitted), "off" (nothing to import: no registry image, `container.import_image`
false, the local executor, which runs no container, or a run submitted before images were imported)."""

SCHEME = "docker://"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def is_registry(image: str) -> bool:
    """A registry URI (what enroot imports), as opposed to '' (no container) or a squashfs file."""
    return bool(image) and not image.endswith(".sqsh")


def sqsh_name(uri: str) -> str:
    """`nvcr.io#nvidia/nemo:26.02` -> `nvcr.io+nvidia+nemo+26.02.sqsh`: registry, repository and tag kept (two
    registries' `nemo:26.02` never share a file), a user name before '@' dropped (the same image), every run of
    other characters one '+'."""
    ref = uri.removeprefix(SCHEME)
    user, at, rest = ref.partition("@")
    if at and "/" not in user and "#" not in user:
        ref = rest
    return _UNSAFE.sub("+", ref).strip("+.") + ".sqsh"


@dataclass(frozen=True)
class ImageCache:
    """One registry image's place in the cache: the final file, its partial name, marker and lock."""

    uri: str
    sqsh: Path
    reused: bool = False
    """Complete when the plan was made: not imported again, no import-image task submitted."""

    def _beside(self, suffix: str) -> Path:
        return self.sqsh.with_name(f"{self.sqsh.name}.{suffix}")

    @property
    def source(self) -> str:
        """What `enroot import` is given: the URI under enroot's docker:// scheme."""
        return self.uri if self.uri.startswith(SCHEME) else SCHEME + self.uri

    @property
    def partial(self) -> Path:
        """enroot's output name (`-o`); renamed to `sqsh` once enroot exits 0, so `sqsh` is never partial."""
        return self._beside("partial")

    @property
    def done(self) -> Path:
        """Written after the rename, with the file's size: present and matching = complete."""
        return self._beside("done")

    @property
    def lock(self) -> Path:
        """flock'ed by the import task, so two runs importing at once import once."""
        return self._beside("lock")


def cache_dir(spec: RunSpec) -> Path:
    """`container.cache_dir`, or `<run.workdir>/images`: beside the run directories, so every run of a workdir
    (and every member of a campaign) finds the file, on the filesystem every node already sees."""
    return Path(spec.container.cache_dir or Path(spec.run.workdir) / "images").expanduser()


def wanted(spec: RunSpec) -> ImageCache | None:
    """The image to import for `spec`: a registry URI, importing on, some stage run in the container."""
    c = spec.container
    if not (c.import_image and is_registry(c.image) and c.stages):
        return None
    return ImageCache(c.image, cache_dir(spec) / sqsh_name(c.image))


def planned(spec: RunSpec, state: CacheState) -> ImageCache | None:
    """The plan's image (None: container stages use `container.image` as written) for the gathered state."""
    cache = wanted(spec)
    if cache is None or state == "off":
        return None
    return ImageCache(cache.uri, cache.sqsh, reused=state == "complete")


def done_record(cache: ImageCache, size: int) -> str:
    return json.dumps({"uri": cache.uri, "sqsh": str(cache.sqsh), "bytes": size})


def complete(cache: ImageCache) -> bool:
    """The final file and its marker both present, and the file still the size the marker recorded."""
    try:
        size = cache.sqsh.stat().st_size
        return bool(json.loads(cache.done.read_text(encoding="utf-8")).get("bytes") == size)
    except (OSError, ValueError, AttributeError):
        return False
