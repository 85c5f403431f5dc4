"""Listing a run's inputs: which videos (and prompts) are tokenized, in which order, by which shard.

The listing knows no run spec: it takes a directory, a manifest or a jsonl file. The login node lists once at
submit time (`harness.ops.inputs`) and the run directory keeps the result (`harness.stages.inputs`), so every
tokenize task sees the same list even if the source changes while the array runs. A bad entry (broken JSON line,
missing key, missing file, duplicate) becomes an item with `error` set, never an exception: the merge summary
names every one of them instead of the whole run dying on one file. Errors about the source itself read
"= '<path>': <why>", for the caller to prefix with the spec key it came from.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from harness.core.errors import HarnessError
from harness.lib import media


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


def count_manifest(path: Path) -> int:
    """len(from_manifest(path)) without building the items: what `harness plan` needs, at a million inputs."""
    comment = "" if path.suffix.lower() == ".jsonl" else "#"
    return sum(1 for ln in _read(path).splitlines() if ln.strip() and not (comment and
                                                                         ln.lstrip().startswith(comment)))


def count_dir(root: Path, extensions: Iterable[str]) -> int:
    """len(from_dir(root, extensions)) without sorting or building the items."""
    files, other = media.walk(_listable(root), media.suffixes(extensions))
    return len(files) + len(other)


def _listable(root: Path) -> str:
    if not root.is_dir():
        raise HarnessError(f"= {str(root)!r}: not a directory")
    return os.path.abspath(root)


def from_dir(root: Path, extensions: Iterable[str]) -> list[InputItem]:
    """Every file under `root` with one of `extensions`, sorted by relative path."""
    base = _listable(root)
    files, other = media.walk(base, media.suffixes(extensions))
    prefix = base.rstrip("/") + "/"
    return [InputItem(i, prefix + rel, None, other.get(rel)) for i, rel in enumerate(sorted([*files, *other]))]


def from_manifest(path: Path) -> list[InputItem]:
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
    if not isinstance(obj, dict):
        return None, 'not a JSON object: each line must be {"path": "<video file>"}'
    if "path" not in obj:
        return None, 'missing key: path (each line must be {"path": "<video file>"})'
    if not isinstance(obj["path"], str) or not obj["path"]:
        return None, f'bad value: path = {json.dumps(obj["path"])}, must be a non-empty string (the video file)'
    return obj["path"], None


def _read(path: Path) -> str:
    """The text of a listing; a UTF-8 byte-order mark (some editors write one) is not part of its first line."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise HarnessError(f"= {str(path)!r}: cannot read ({e.__class__.__name__}: {getattr(e, 'strerror', e)})") \
            from None


def _lines(path: Path) -> list[str | UnicodeDecodeError]:
    """A listing's lines, each decoded on its own (a byte-order mark is not part of the first)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise HarnessError(f"= {str(path)!r}: cannot read ({e.__class__.__name__}: {e.strerror})") from None
    out: list[str | UnicodeDecodeError] = []
    for b in raw.removeprefix(b"\xef\xbb\xbf").splitlines():
        try:
            out.append(b.decode("utf-8"))
        except UnicodeDecodeError as e:
            out.append(e)
    return out


def from_jsonl(path: Path) -> list[InputItem]:
    """Video2World's `{"prompt": ..., "visual_input": ...}` lines, in file order; relative videos are relative
    to the jsonl file."""
    items: list[InputItem] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(_lines(path), start=1):
        where = f"{path.name}:{lineno}"
        if isinstance(line, UnicodeDecodeError):  # that line alone: the others are good prompts
            bad = f"byte {line.object[line.start]:#04x} at column {line.start + 1}"
            items.append(InputItem(len(items), where, None, f"line {lineno}: not UTF-8: {bad}"))
            continue
        if not line.strip():
            continue
        video, prompt, error = _parse_line(line, path.parent)
        if error is None:
            assert video is not None
            if video in seen:
                error = f"duplicate visual_input: first on line {seen[video]}; this line and its prompt are left out"
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
    for key, text in (("prompt", prompt), ("visual_input", video)):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:  # JSON's "\ud83d" alone: no character, and the T5 tokenizer refuses it
            return None, None, f"bad value: {key} holds a lone surrogate {text[e.start]!r} at character {e.start + 1}"
    p = Path(video).expanduser()
    p = p if p.is_absolute() else base / p
    return os.path.normpath(p.absolute()), prompt, None  # a/../a/x.mp4 and ./a/x.mp4 are one video


def reason_kind(reason: str) -> str:
    """'line 3: missing key: prompt' -> 'missing key'; 'cannot decode: InvalidDataError: ...' -> 'cannot decode'."""
    return re.sub(r"^line \d+: ", "", reason).split(": ")[0]


def shard_of(index: int, num_shards: int) -> int:
    """Which tokenize shard owns input `index`; the one place this assignment is made."""
    return index % num_shards


def items_of_shard(items: Iterable[InputItem], shard: int, num_shards: int) -> list[InputItem]:
    return [it for it in items if shard_of(it.index, num_shards) == shard]
