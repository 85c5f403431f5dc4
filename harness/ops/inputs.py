"""The run's inputs as the login node sees them, for `plan`, `doctor` and `submit`: the library's listing
(`harness.lib.inputs`) of the source the spec names, with each error naming the spec file and key."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

from harness.core.errors import HarnessError, Problem
from harness.core.spec import RunSpec
from harness.lib import inputs as listing
from harness.lib import media
from harness.lib.inputs import InputItem

T = TypeVar("T")


def require_usable(spec: RunSpec, items: list[InputItem]) -> list[InputItem]:
    """For submit: a run whose listing has no usable input (an empty folder or jsonl, every line bad) would queue
    stage-assets and tokenize only for merge to fail; it is refused before anything is created."""
    if not any(it.error is None for it in items):
        first = next((it.error for it in items if it.error), "")
        why = f"all {len(items)} listed input(s) are unusable (first: {first})" if items else "no inputs found there"
        raise HarnessError(Problem(spec.source, data_key(spec), f"{why}: a run would have nothing to tokenize"))
    return items


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


def after_training(spec: RunSpec) -> list[tuple[str, str, str]]:
    """(key, what, problem or '') of the paths read only after training, `infer.inputs` and `evaluate.reference`:
    a typo there surfaces hours into a run, so doctor looks at them before the queue. Duplicates in a jsonl are
    fine here (infer names each generation apart)."""
    out = []
    if spec.infer.inputs:
        out.append(("infer.inputs", "videos/images or a Video2World jsonl to continue",
                    _infer_problem(Path(spec.infer.inputs).expanduser(), spec.data.extensions)))
    if spec.evaluate.reference:
        root = Path(spec.evaluate.reference).expanduser()
        why = _none_found(root, media.VIDEO_SUFFIXES) if root.is_dir() else f"{root}: not a directory"
        out.append(("evaluate.reference", "reference videos", why or _unmatched(spec, root)))
    return out


def _unmatched(spec: RunSpec, root: Path) -> str:
    """Where infer.inputs lists its inputs here: a problem when none of them finds a reference in `root` by the
    evaluate stage's own rule (`media.References`), which would score no video at any checkpoint."""
    src = Path(spec.infer.inputs).expanduser() if spec.infer.inputs else None
    if src is None or not (src.is_dir() or src.suffix == ".jsonl"):
        return ""  # the test split: its videos are known after merge
    try:
        sources = ([Path(it.path) for it in listing.from_jsonl(src) if not it.error] if src.suffix == ".jsonl"
                   else media.files_under(src, (*spec.data.extensions, *media.IMAGE_SUFFIXES)))
    except HarnessError:
        return ""  # infer.inputs' own check names it
    refs = media.References(root)
    inputs = src.absolute() if src.is_dir() else None
    if sources and not any(refs.find(p.stem, p.absolute(), inputs) for p in sources[:spec.infer.max_inputs]):
        return (f"{root}: no reference for any infer input (a reference is the file at the input's path under "
                "infer.inputs, else the only one of its name)")
    return ""


def _none_found(root: Path, exts: tuple[str, ...]) -> str:
    try:
        n = listing.count_dir(root, exts)
    except HarnessError as e:
        return e.problems[0].message
    return "" if n else f"{root}: no file with a suffix of {', '.join(exts)}"


def _infer_problem(root: Path, extensions: tuple[str, ...]) -> str:
    if root.is_dir():
        return _none_found(root, (*extensions, *media.IMAGE_SUFFIXES))
    if not (root.is_file() and root.suffix == ".jsonl"):
        return f"{root}: not a directory of videos/images nor a .jsonl file"
    try:
        items = listing.from_jsonl(root)
    except HarnessError as e:
        return e.problems[0].message
    bad = [it for it in items if it.error and "duplicate visual_input" not in it.error]
    more = f" (and {len(bad) - 1} more: " + "; ".join(it.error or "" for it in bad[1:4]) + \
        ("; ..." if len(bad) > 4 else "") + ")" if len(bad) > 1 else ""
    return f"{root}: {bad[0].error}{more}" if bad else "" if items else f"{root}: no lines"
