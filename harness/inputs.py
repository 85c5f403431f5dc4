"""The input list of a run: which videos (and prompts) are tokenized, in which order, by which shard.

The launcher calls `discover` once at submit time and stores the result in the run directory
(`<run>/inputs.jsonl`), so every tokenize task sees the same list even if the source directory changes
while the array runs, and the number of shards follows from the count. A bad entry (broken JSON line,
missing key, missing file, duplicate) becomes an item with `error` set, never an exception: the merge
summary names every one of them instead of the whole run dying on one file.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from harness.errors import HarnessError, Problem
from harness.rundir import RunPaths, atomic_write_text

if TYPE_CHECKING:
    from harness.spec import RunSpec


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
    """The run's inputs in a deterministic order (directory listing sorted by relative path, or jsonl order)."""
    try:
        if spec.data.jsonl:
            return _from_jsonl(Path(spec.data.jsonl).expanduser())
        return _from_dir(Path(spec.data.videos).expanduser(), spec.data.extensions)
    except HarnessError as e:
        key = "data.jsonl" if spec.data.jsonl else "data.videos"
        raise HarnessError(Problem(spec.source, key, e.problems[0].message)) from None


def _from_dir(root: Path, extensions: Iterable[str]) -> list[InputItem]:
    if not root.is_dir():
        raise HarnessError(f"= {str(root)!r}: not a directory")
    exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    found = sorted((p for p in root.rglob("*") if p.suffix.lower() in exts and not p.is_dir()),
                   key=lambda p: p.relative_to(root).as_posix())
    items = []
    for i, p in enumerate(found):
        error = None if p.is_file() else "not a regular file: broken symlink or special file"
        items.append(InputItem(i, str(p.absolute()), None, error))
    return items


def _from_jsonl(path: Path) -> list[InputItem]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise HarnessError(f"= {str(path)!r}: cannot read ({e.__class__.__name__}: {getattr(e, 'strerror', e)})") \
            from None
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


def inputs_path(paths: RunPaths) -> Path:
    return paths.root / "inputs.jsonl"


def write_inputs(paths: RunPaths, items: list[InputItem]) -> None:
    text = "".join(json.dumps(asdict(it), sort_keys=True) + "\n" for it in items)
    atomic_write_text(inputs_path(paths), text)


def read_inputs(paths: RunPaths) -> list[InputItem]:
    path = inputs_path(paths)
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
