"""The input list of a run: which videos (and prompts) are tokenized, in which order, by which shard.

The launcher calls `discover` once at submit time and stores the result in the run directory
(`<run>/inputs.jsonl`), so every tokenize task sees the same list even if the source directory changes
while the array runs, and the number of shards follows from the count. A bad entry (broken JSON line,
missing key, missing file, duplicate) becomes an item with `error` set, never an exception: the merge
summary names every one of them instead of the whole run dying on one file.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from harness.core.errors import HarnessError, Problem
from harness.lib import media
from harness.core.paths import RunPaths
from harness.core.atomic import atomic_write_text

if TYPE_CHECKING:
    from harness.core.spec import RunSpec


@dataclass(frozen=True)
class InputItem:
    index: int
    """Position in the input list; `shard_of` assigns it to a shard (merge orders documents shard by shard)."""
    path: str
    """Absolute video path (or, for a broken jsonl line, a `file:line` locator)."""
    prompt: str | None = None
    """Video2World prompt; None for the base recipe."""
    error: str | None = None
    """Why this item cannot be tokenized (reported by merge); None when it looks usable. Reasons read
    "[line N: ]<kind>: <detail>" so reports can group them by kind (`reason_kind`)."""

    @property
    def name(self) -> str:
        """How reports name the item: the file name, or the locator of a broken line."""
        return Path(self.path).name


def discover(spec: RunSpec) -> list[InputItem]:
    """The run's inputs in a deterministic order (directory listing sorted by relative path, manifest order,
    or jsonl order)."""
    d = spec.data
    key = "data.jsonl" if d.jsonl else "data.manifest" if d.manifest else "data.videos"
    try:
        if d.jsonl:
            return _from_jsonl(Path(d.jsonl).expanduser())
        if d.manifest:
            return _from_manifest(Path(d.manifest).expanduser())
        return _from_dir(Path(d.videos).expanduser(), d.extensions)
    except HarnessError as e:
        raise HarnessError(Problem(spec.source, key, e.problems[0].message)) from None


def count(spec: RunSpec) -> int:
    """len(discover(spec)) without building the items: what `harness plan` needs, at a million inputs."""
    d = spec.data
    if d.jsonl:
        return len(discover(spec))
    try:
        if d.manifest:
            path = Path(d.manifest).expanduser()
            comment = "" if path.suffix.lower() == ".jsonl" else "#"
            return sum(1 for ln in _read(path).splitlines() if ln.strip() and not (comment and
                                                                                 ln.lstrip().startswith(comment)))
        files, other = media.walk(_listable(Path(d.videos).expanduser()), media.suffixes(d.extensions))
        return len(files) + len(other)
    except HarnessError as e:
        raise HarnessError(Problem(spec.source, "data.manifest" if d.manifest else "data.videos",
                                   e.problems[0].message)) from None


def _listable(root: Path) -> str:
    if not root.is_dir():
        raise HarnessError(f"= {str(root)!r}: not a directory")
    return os.path.abspath(root)


def _from_dir(root: Path, extensions: Iterable[str]) -> list[InputItem]:
    base = _listable(root)
    files, other = media.walk(base, media.suffixes(extensions))
    bad = set(other)
    prefix = base.rstrip("/") + "/"
    broken = "not a regular file: broken symlink or special file"
    return [InputItem(i, prefix + rel, None, broken if bad and rel in bad else None)
            for i, rel in enumerate(sorted(files + other))]


def _from_manifest(path: Path) -> list[InputItem]:
    """A text file of video paths, one a line, or jsonl with a "path" key (`.jsonl`); relative paths are
    relative to the manifest. Nothing is stat-ed here: on a parallel filesystem a million stats are minutes of
    metadata load on the login node; a missing file is reported by the tokenize task that reads it."""
    text = _read(path)
    base = os.path.abspath(path.parent)
    as_json = path.suffix.lower() == ".jsonl"
    items: list[InputItem] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or (not as_json and line.startswith("#")):
            continue
        video, error = _manifest_entry(line, as_json)
        if video is not None:
            video = os.path.normpath(os.path.join(base, os.path.expanduser(video)))
            first = seen.setdefault(video, lineno)
            error = None if first == lineno else f"duplicate path: first on line {first}"
        items.append(InputItem(len(items), video or f"{path.name}:{lineno}", None,
                               f"line {lineno}: {error}" if error else None))
    return items


def _manifest_entry(line: str, as_json: bool) -> tuple[str | None, str | None]:
    if not as_json:
        return line, None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return None, f"not valid JSON: {e.msg} at column {e.colno}"
    if not isinstance(obj, dict) or not isinstance(obj.get("path"), str) or not obj["path"]:
        return None, 'missing key: path (each line must be {"path": "<video file>"})'
    return obj["path"], None


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise HarnessError(f"= {str(path)!r}: cannot read ({e.__class__.__name__}: {getattr(e, 'strerror', e)})") \
            from None


def _from_jsonl(path: Path) -> list[InputItem]:
    lines = _read(path).splitlines()
    items: list[InputItem] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path.name}:{lineno}"
        video, prompt, error = _parse_line(line, path.parent)
        if error is None:
            assert video is not None
            if video in seen:
                error = f"duplicate visual_input: first on line {seen[video]}"
            elif not Path(video).is_file():
                error = "visual_input not found: no such file"
            else:
                seen[video] = lineno
        if error is not None:
            error = f"line {lineno}: {error}"
        items.append(InputItem(len(items), video or where, prompt, error))
    return items


def _parse_line(line: str, base: Path) -> tuple[str | None, str | None, str | None]:
    """(absolute video path, prompt, error) of one jsonl line."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return None, None, f"not valid JSON: {e.msg} at column {e.colno}"
    if not isinstance(obj, dict):
        return None, None, 'not a JSON object: each line must be {"prompt": ..., "visual_input": ...}'
    missing = [k for k in ("prompt", "visual_input") if k not in obj]
    if missing:
        return None, None, f"missing key: {', '.join(missing)} (each line needs prompt and visual_input)"
    prompt, video = obj["prompt"], obj["visual_input"]
    if not isinstance(prompt, str) or not isinstance(video, str) or not video:
        return None, None, "bad value: prompt and visual_input must be strings, visual_input non-empty"
    p = Path(video).expanduser()
    p = p if p.is_absolute() else base / p
    return str(p.absolute()), prompt, None


def reason_kind(reason: str) -> str:
    """'line 3: missing key: prompt' -> 'missing key'; 'cannot decode: InvalidDataError: ...' -> 'cannot decode'."""
    return re.sub(r"^line \d+: ", "", reason).split(": ")[0]


def shard_of(index: int, num_shards: int) -> int:
    """Which tokenize shard owns input `index`; the one place this assignment is made."""
    return index % num_shards


def items_of_shard(items: Iterable[InputItem], shard: int, num_shards: int) -> list[InputItem]:
    return [it for it in items if shard_of(it.index, num_shards) == shard]


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
