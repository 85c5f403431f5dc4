"""Media files: which suffixes are videos and images, how a folder of them is listed at scale, and the alignment
sidecar the infer stage writes beside each generated video for the evaluate stage to read. One home for these,
so the input discovery, the infer stage and the evaluate stage agree on what a video is."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from harness.core.atomic import read_json
from harness.core.errors import HarnessError
from harness.core.evalstats import ALIGNMENT_CONVENTION

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def suffixes(extensions: Iterable[str]) -> frozenset[str]:
    return frozenset(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)


def walk(root: str, exts: frozenset[str]) -> tuple[list[str], dict[str, str]]:
    """(relative paths of regular files, {relative path: why it is no input} of other entries) whose suffix is in
    `exts`, under `root`, unsorted. One `scandir` per directory and no `stat` per file: `DirEntry.is_dir/is_file`
    read the d_type the directory listing already returned (a stat happens per directory, for symlinks, and on
    filesystems that report no d_type). Symlinked directories are followed (datasets are often linked in) after
    the real tree, in path order, each real directory searched once: a link to a directory already searched (a
    cycle, a second link) is reported, not followed, and every file keeps one deterministic path. One entry that
    cannot be read (a symlink loop, a dangling link, a directory that refuses listing, a directory named like a
    video) is reported with its reason and the walk goes on: one bad entry never blocks a run."""
    w = _Walk(root, tuple(exts))
    try:
        top = os.stat(root)
    except OSError as err:
        raise HarnessError(f"= {root!r}: cannot list {err.filename} ({err.strerror})") from None
    w.seen.add((top.st_dev, top.st_ino))
    while w.stack or w.links:
        if not w.stack:
            w.follow_next_link()
            continue
        rel = w.stack.pop()
        try:
            with os.scandir(root + "/" + rel if rel else root) as it:
                for e in it:
                    w.entry(e, rel)
        except OSError as err:
            if not rel:
                raise HarnessError(f"= {root!r}: cannot list {err.filename} ({err.strerror})") from None
            w.other[rel.rstrip("/")] = f"directory not listed: {err.strerror}"
    return w.files, w.other


@dataclass
class _Walk:
    root: str
    suffixes: tuple[str, ...]
    files: list[str] = field(default_factory=list)
    other: dict[str, str] = field(default_factory=dict)
    seen: set[tuple[int, int]] = field(default_factory=set)
    """(device, inode) of every directory searched or queued."""
    stack: list[str] = field(default_factory=lambda: [""])
    links: list[str] = field(default_factory=list)
    """Symlinked directories met, followed once the real tree is searched."""

    def entry(self, e: os.DirEntry[str], rel: str) -> None:
        name = e.name
        video_name = name.lower().endswith(self.suffixes) and name.rfind(".") > 0
        try:
            if e.is_dir():  # a directory, or a symlink to one
                if video_name:
                    self.other[rel + name] = "a directory named like a video: not an input, and not searched"
                elif e.is_symlink():
                    self.links.append(rel + name)
                else:
                    st = e.stat()
                    self.seen.add((st.st_dev, st.st_ino))
                    self.stack.append(rel + name + "/")
            elif not video_name:
                return
            elif e.is_file():
                self.files.append(rel + name)
            else:
                self.other[rel + name] = ("broken symlink" if e.is_symlink()
                                          else "not a regular file (a pipe, socket or device)")
        except OSError as err:  # a symlink loop (ELOOP), a path component refusing access
            if video_name or e.is_symlink():
                self.other[rel + name] = f"cannot read: {err.strerror}"

    def follow_next_link(self) -> None:
        self.links.sort(reverse=True)
        path = self.links.pop()
        try:
            st = os.stat(self.root + "/" + path)
        except OSError as err:
            self.other[path] = f"cannot read: {err.strerror}"
            return
        if (st.st_dev, st.st_ino) in self.seen:
            self.other[path] = "a symlink to a directory already searched (not searched again)"
            return
        self.seen.add((st.st_dev, st.st_ino))
        self.stack.append(path + "/")


def files_under(root: Path, exts: Iterable[str]) -> list[Path]:
    """Regular files under `root` with one of `exts`, in the order of their relative paths."""
    found, _ = walk(os.path.abspath(root), suffixes(exts))
    return [root / rel for rel in sorted(found)]


class References:
    """evaluate.reference, searched as inputs are (recursively, `walk`). A generated video's reference is
    the file at its source's path relative to the inputs' folder (that suffix first, then any), else the only file
    with its source's stem, else the only one with its own name: a renamed duplicate (x-2 from sub/b/x.mp4)
    finds its source's namesake, and a stem two references share is no match rather than a guess."""

    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise HarnessError(f"evaluate.reference = {str(root)!r}: not a directory")
        self.exact: dict[str, Path] = {}
        self.by_rel: dict[str, list[Path]] = {}
        self.by_stem: dict[str, list[Path]] = {}
        for p in files_under(root, (*VIDEO_SUFFIXES, *IMAGE_SUFFIXES)):
            rel = p.relative_to(root)
            self.exact[rel.as_posix()] = p
            self.by_rel.setdefault(rel.with_suffix("").as_posix(), []).append(p)
            self.by_stem.setdefault(p.stem, []).append(p)

    def find(self, name: str, source: Path | None, inputs: Path | None) -> Path | None:
        if source is not None and inputs is not None and source.is_relative_to(inputs):
            rel = source.relative_to(inputs)
            if rel.as_posix() in self.exact:
                return self.exact[rel.as_posix()]
            if len(same := self.by_rel.get(rel.with_suffix("").as_posix(), [])) == 1:
                return same[0]
        for stem in ([source.stem] if source is not None else []) + [name]:
            if len(same := self.by_stem.get(stem, [])) == 1:
                return same[0]
        return None


@dataclass(frozen=True)
class Sidecar:
    """`<name>.json` next to `<name>.mp4`, written by the infer stage: which source each generated frame shows."""

    reference: str
    """Absolute path of the source video (or image) the generation was conditioned on."""
    reference_frames: tuple[int | None, ...]
    """Per generated frame: the source frame it stands for (None: no ground truth exists)."""
    context_frames: int
    """Generated frames 0..context_frames-1 reproduce the context; the rest are predicted."""
    step: int = 0
    seed: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    prompt: str | None = None
    """Video2World: the prompt the generation followed (None: the base model, or a sidecar written before)."""

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "reference_frames": list(self.reference_frames),
                "convention": ALIGNMENT_CONVENTION}

    @staticmethod
    def read(path: Path) -> "Sidecar":
        try:
            raw = read_json(path)
            return Sidecar(reference=str(raw["reference"]),
                           reference_frames=tuple(None if r is None else int(r) for r in raw["reference_frames"]),
                           context_frames=int(raw["context_frames"]), step=int(raw.get("step", 0)),
                           seed=int(raw.get("seed", 0)), temperature=float(raw.get("temperature", 1.0)),
                           top_p=float(raw.get("top_p", 1.0)), prompt=_text(raw.get("prompt")))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise HarnessError(f"{path}: not a valid alignment sidecar ({e.__class__.__name__}: {e}); it needs "
                               f"reference, reference_frames, context_frames") from None


def _text(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"prompt must be a string, not {type(value).__name__}")
    return value


def sidecar_path(video: Path) -> Path:
    return video.with_suffix(".json")
