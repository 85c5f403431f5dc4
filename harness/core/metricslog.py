"""metrics.jsonl, the finetune log: one JSON object per logged optimizer step and per validation point
(`val_loss`), appended by both engines, cut back
to the resumed checkpoint on resume, read by the report, the NeMo engine and the benches. One reader, so a torn
last line (a writer killed mid-line) means the same everywhere: skipped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.core.atomic import atomic_write_text


def _line(rec: dict[str, Any]) -> str:
    return json.dumps(rec, sort_keys=True) + "\n"


def _records(path: Path) -> list[dict[str, Any]]:
    """Every record in file order, training and validation ([] when there is no log yet); lines that are not
    one are skipped."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():  # a torn binary write: skipped
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            out.append(rec)
    return out


def is_validation(rec: dict[str, Any]) -> bool:
    """A validation point's record (`val_loss`), logged beside the optimizer steps' records."""
    return "val_loss" in rec


def rows(path: Path) -> list[dict[str, Any]]:
    """The optimizer steps' records in file order (validation records are `val_rows`')."""
    return [r for r in _records(path) if not is_validation(r)]


def by_step(path: Path) -> list[dict[str, Any]]:
    """`rows` ordered by step (what a reader of the whole log wants; the file is in write order)."""
    return sorted(rows(path), key=lambda r: r["step"])


def val_rows(path: Path) -> list[dict[str, Any]]:
    """The validation records ordered by step (the weights after that many optimizer steps)."""
    return sorted((r for r in _records(path) if is_validation(r)), key=lambda r: r["step"])


def append(path: Path, rec: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(_line(rec))
        fh.flush()


def _kept(rec: dict[str, Any], step: int) -> bool:
    """A validation point is computed before its step's checkpoint is saved (both engines), so a resume from
    checkpoint `step` keeps it; one of step 0 has no checkpoint behind it and is recomputed by a fresh start."""
    if is_validation(rec):
        return bool(rec["step"] < step or 0 < rec["step"] == step)
    return bool(rec["step"] <= step)


def truncate(path: Path, step: int) -> None:
    """Keep the records of steps <= `step` (the resumed checkpoint): later ones are recomputed, so each step and
    each validation point is logged exactly once; a torn last line from a kill goes too."""
    if path.is_file():
        atomic_write_text(path, "".join(_line(r) for r in _records(path) if _kept(r, step)))
