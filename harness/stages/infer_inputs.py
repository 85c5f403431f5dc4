"""The infer stage's input list: which videos and images (with their prompts) the infer tasks continue, in which
order, under which output names.

With infer.inputs empty the list is the merged dataset's test split, fixed once merge has run. infer.inputs (a
directory, or a Video2World jsonl) is listed once per run, by the first infer task to start, into
`RunPaths.infer_inputs_jsonl`; every other task, at every checkpoint and on every resume, reads that list. So
shards neither overlap nor drop inputs when the source changes while the array runs, and a resumed task writes
the names its first attempt did. It is listed at task time, not at submit, because an rglob over a large tree is
what made planning slow, and the folder may well be filled while the model trains. A listing with no inputs is
not kept: the task fails, and a resume after the folder is fixed lists it again. Once any infer task has written,
the stored list is the only one: gone or damaged, it stops the task rather than be listed anew.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.core.atomic import atomic_create_text, atomic_write_text
from harness.core.errors import HarnessError
from harness.core.paths import RunPaths
from harness.lib import media
from harness.lib.media import IMAGE_SUFFIXES

if TYPE_CHECKING:
    from harness.core.spec import RunSpec
    from harness.lib.inputs import InputItem

log = logging.getLogger("harness.infer")


@dataclass(frozen=True)
class InferInput:
    name: str
    """Output file stem (unique within the checkpoint's directory)."""
    source: str
    """The video or image the context comes from; the evaluate stage's reference."""
    image: bool = False
    prompt: str | None = None
    context_tokens: np.ndarray | None = field(default=None, compare=False)
    """Already-encoded context (dataset test split); None: encode the source."""
    prompt_embedding: np.ndarray | None = field(default=None, compare=False)
    prompt_length: int = 0


def list_inputs(spec: RunSpec, paths: RunPaths, start: int = 0, stop: int | None = None) -> list[InferInput]:
    """Items [start, stop) of the ordered input list (all of it by default); an empty slice past the end of a
    list shorter than planned is no error, an empty list is."""
    src = spec.infer.inputs
    keep = range(start, spec.infer.max_inputs if stop is None else stop)
    items = _from_dataset(spec, paths, keep) if not src else _listed(spec, paths)
    items = items[: spec.infer.max_inputs]
    if not items:
        raise HarnessError(f"infer.inputs = {src!r}: no inputs found" if src else
                           f"{paths.dataset_split}: the test split is empty; set data.split's test weight or "
                           "infer.inputs")
    return _unique_names(items)[keep.start:keep.stop]


def _listed(spec: RunSpec, paths: RunPaths) -> list[InferInput]:
    """The run's list of infer.inputs: the stored one, else listed now and stored unless another task stored its
    own first (then that one stands). A run directory reused with other settings lists again, but only before
    any infer task has written: a new list then could move inputs between shards already done."""
    path, key = paths.infer_inputs_jsonl, _key(spec)
    stored = _read_listed(path, key) if path.is_file() else None
    if stored is not None:
        return stored
    _refuse_a_second_list(paths)
    items = _from_path(spec, Path(spec.infer.inputs).expanduser())[: spec.infer.max_inputs]
    if not items:
        return []
    text = json.dumps({**key, "count": len(items)}) + "\n" + "".join(
        json.dumps({"name": it.name, "source": it.source, "image": it.image, "prompt": it.prompt}) + "\n"
        for it in items)
    if path.is_file():
        atomic_write_text(path, text)
    elif not atomic_create_text(path, text):
        return _read_listed(path, key) or items
    return items


def _refuse_a_second_list(paths: RunPaths) -> None:
    path = paths.infer_inputs_jsonl
    written = sorted(p.name for p in paths.infer_root.iterdir() if p.name != path.name and not
                     p.name.startswith(".")) if paths.infer_root.is_dir() else []
    if written:
        raise HarnessError(f"{path}: the run's list of infer.inputs is gone or was made with other settings, and "
                           f"infer tasks have already written from it ({', '.join(written[:3])}"
                           f"{', ...' if len(written) > 3 else ''}); a new list could move inputs between shards "
                           "already done: restore the file, or submit the spec again as a new run")


def _key(spec: RunSpec) -> dict[str, Any]:
    """What the stored list was listed with: the first line of the file (with the count of lines after it)."""
    return {"infer.inputs": spec.infer.inputs, "infer.max_inputs": spec.infer.max_inputs,
            "data.extensions": list(spec.data.extensions)}


def _read_listed(path: Path, key: dict[str, Any]) -> list[InferInput] | None:
    """The stored list, None where it was listed with other settings than `key`."""
    out = []
    try:
        head, *lines = path.read_text(encoding="utf-8").splitlines()
        header = json.loads(head)
        if not isinstance(header, dict) or {k: v for k, v in header.items() if k != "count"} != key:
            return None
        if header.get("count") != len(lines):
            raise ValueError(f"{len(lines)} inputs listed where its first line says {header.get('count')}")
        for line in lines:
            d = json.loads(line)
            prompt = d["prompt"]
            if not isinstance(d["name"], str) or not isinstance(d["source"], str) or \
                    not isinstance(d["image"], bool) or not (prompt is None or isinstance(prompt, str)):
                raise TypeError(f"a field of the wrong type in {line[:80]!r}")
            out.append(InferInput(d["name"], d["source"], d["image"], prompt))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise HarnessError(f"{path}: the run's list of infer.inputs is damaged ({e.__class__.__name__}: {e}); "
                           "restore it, or submit the spec again as a new run") from None
    return out


def _from_path(spec: RunSpec, root: Path) -> list[InferInput]:
    if root.is_dir():  # an entry that cannot be read (a dangling link) stays: infer skips it, naming why
        exts = media.suffixes((*spec.data.extensions, *IMAGE_SUFFIXES))
        found, other = media.walk(os.path.abspath(root), exts)
        files = [root / rel for rel in sorted([*found, *(r for r in other if Path(r).suffix.lower() in exts)])]
        return [InferInput(output_stem(p), str(p.absolute()), p.suffix.lower() in IMAGE_SUFFIXES) for p in files]
    if root.is_file() and root.suffix == ".jsonl":
        return [InferInput(output_stem(Path(it.path)), it.path, Path(it.path).suffix.lower() in IMAGE_SUFFIXES,
                           it.prompt if spec.video2world else None) for it in _jsonl(root)]  # base: no prompt
    raise HarnessError(f"infer.inputs = {str(root)!r}: not a directory of videos/images nor a .jsonl file")


def _jsonl(root: Path) -> list[InputItem]:
    """The lines tokenize and doctor read (`harness.lib.inputs.from_jsonl`, one parser), less the malformed ones,
    each named in the log (doctor fails them before submit). A video listed twice stays: two prompts are two
    generations. A missing video stays too: generation then skips it with the reason in the manifest."""
    from harness.lib.inputs import from_jsonl

    kept = []
    for it in from_jsonl(root):
        if it.error is None or it.prompt is not None and ("duplicate visual_input" in it.error
                                                          or "visual_input not found" in it.error):
            kept.append(it)
        else:
            log.warning("infer.inputs %s: left out: %s", root, it.error)
    return kept


def _from_dataset(spec: RunSpec, paths: RunPaths, keep: range) -> list[InferInput]:
    """Test-split items in split order; only those in `keep` carry their context tokens and prompt (Video2World:
    its embedding from the dataset, its text from the run's input list, for the sidecar)."""
    from harness.stages.dataset import open_dataset

    ds = open_dataset(paths)
    g = spec.token_math.grid
    n_ctx = spec.infer.context_latent_frames * g.h * g.w
    texts = _prompt_texts(paths) if ds.video2world else {}
    out = []
    for k, i in enumerate(ds.split("test")[: spec.infer.max_inputs]):
        doc = ds.document(i)
        if k not in keep:
            out.append(InferInput(output_stem(Path(doc["path"])), doc["path"]))
            continue
        tokens = ds.tokens(i)
        video = tokens[1:1 + g.tokens] if ds.video2world else tokens[: g.tokens]
        emb = ds.prompt_embedding(i) if ds.video2world else None
        out.append(InferInput(output_stem(Path(doc["path"])), doc["path"], False, texts.get(doc.get("index")),
                              video[:n_ctx].copy(), emb, ds.prompt_length(i) if ds.video2world else 0))
    return out


def _prompt_texts(paths: RunPaths) -> dict[Any, str]:
    """Input index -> prompt, from the list tokenize read; empty where the run has none (an older run)."""
    from harness.stages.inputs import read_inputs

    try:
        return {it.index: it.prompt for it in read_inputs(paths) if it.prompt is not None}
    except HarnessError:
        return {}


NAME_BYTES = 120
"""Longest output stem in bytes: `<name>.mp4`, its sidecar, temp files and the report's `<name>.generated.mp4`
must stay within a file name's 255 bytes."""


def output_stem(source: Path) -> str:
    """An output name from a source's stem: no leading dot (a hidden file, which evaluate and file browsers pass
    over), at most `NAME_BYTES` bytes (a longer one keeps its start and gains 8 hex digits of a hash of the whole
    stem, so two long names stay apart)."""
    stem = source.stem.lstrip(".") or "video"
    stem = os.fsencode(stem).decode("utf-8", "replace")  # a name in another encoding (Latin-1 bytes): U+FFFD
    raw = stem.encode("utf-8")
    if len(raw) <= NAME_BYTES:
        return stem
    return raw[:NAME_BYTES - 9].decode("utf-8", "ignore") + "-" + hashlib.sha256(raw).hexdigest()[:8]


def _unique_names(items: list[InferInput]) -> list[InferInput]:
    """Output stems unique within a checkpoint's folder: a repeated stem gets `-k`, the first k not taken by any
    input's own stem or an earlier rename (inputs x, x, x-1 become x, x-2, x-1, never two files x-1.mp4)."""
    taken = {it.name for it in items}
    used: set[str] = set()
    out = []
    for it in items:
        name, k = it.name, 0
        while name in used or (name != it.name and name in taken):  # another input's own stem stays its own
            k += 1
            name = f"{it.name}-{k}"
        used.add(name)
        if name != it.name:
            it = InferInput(name, it.source, it.image, it.prompt, it.context_tokens, it.prompt_embedding,
                            it.prompt_length)
        out.append(it)
    return out
