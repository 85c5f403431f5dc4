"""Which of a run's checkpoints are complete: the directories `RunPaths` names, filtered by the completion marker
the checkpoint writer puts last. The resume point of both engines and the progress the bench reports."""

from __future__ import annotations

from pathlib import Path

from harness.core.paths import RunPaths
from harness.cosmos.checkpoint import is_complete


def complete_steps(paths: RunPaths) -> list[int]:
    return [s for s in paths.checkpoint_steps() if is_complete(paths.checkpoint_dir(s))]


def latest_complete(paths: RunPaths) -> tuple[int, Path] | None:
    """(step, dir) of the newest checkpoint with its completion marker, or None (a save killed mid-write has
    no marker and is ignored)."""
    steps = complete_steps(paths)
    return (steps[-1], paths.checkpoint_dir(steps[-1])) if steps else None
