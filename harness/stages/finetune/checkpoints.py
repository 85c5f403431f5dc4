"""Which of a run's checkpoints are complete: the directories `RunPaths` names, filtered by the completion marker
the checkpoint writer puts last. The resume point of both engines (the newest complete checkpoint that still has
its optimizer state), the progress the bench reports, and `finetune.keep_optimizer`'s retention after each save."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from harness.core.errors import HarnessError
from harness.core.paths import RunPaths
from harness.cosmos.checkpoint import MARKER, has_optimizer, is_complete, strip_optimizer

log = logging.getLogger(__name__)


def complete_steps(paths: RunPaths) -> list[int]:
    return [s for s in paths.checkpoint_steps() if is_complete(paths.checkpoint_dir(s))]


def latest_complete(paths: RunPaths) -> tuple[int, Path] | None:
    """(step, dir) of the newest checkpoint with its completion marker, or None (a save killed mid-write has
    no marker and is ignored)."""
    steps = complete_steps(paths)
    return (steps[-1], paths.checkpoint_dir(steps[-1])) if steps else None


def resume_point(paths: RunPaths) -> tuple[int, Path] | None:
    """(step, dir) training resumes from: the newest complete checkpoint with optimizer state, never a
    weights-only one (restarting Adam from zero would train other steps than an uninterrupted run). With
    keep_optimizer = "last" that is always the newest complete checkpoint: older ones lose their optimizer state
    only after a newer one is complete. None where there is no complete checkpoint (a fresh start); a run whose
    complete checkpoints are all weights-only (optimizer state removed by hand) stops with one line saying what
    to do instead."""
    steps = complete_steps(paths)
    resumable = [s for s in steps if has_optimizer(paths.checkpoint_dir(s))]
    if not resumable:
        if steps:
            last = paths.checkpoint_dir(steps[-1])
            raise HarnessError(f"{paths.checkpoints_dir}: no complete checkpoint has optimizer state (steps "
                               f"{steps} are weights only), so training cannot resume; to train on from step "
                               f"{steps[-1]}'s weights with a fresh optimizer, start a new run with "
                               f"model.checkpoint = {last}")
        return None
    if resumable[-1] != steps[-1]:
        log.warning("resuming from step %d: the newer checkpoints %s have no optimizer state (weights only); "
                    "training rewrites them", resumable[-1], [s for s in steps if s > resumable[-1]])
    return resumable[-1], paths.checkpoint_dir(resumable[-1])


def keep_optimizer(paths: RunPaths, newest: int, keep: str) -> list[int]:
    """After checkpoint `newest` is complete (every rank past the save's last barrier; rank 0 calls this): with
    keep = "last", remove the optimizer state of every older complete checkpoint (each marked weights-only before
    its folder goes); "all" keeps it. Nothing is removed while `newest` itself has none: the resume point stays.
    Returns the steps stripped."""
    if keep == "all":
        return []
    if not has_optimizer(paths.checkpoint_dir(newest)):
        log.warning("checkpoint step %d has no optimizer state: the older checkpoints keep theirs", newest)
        return []
    stripped = [s for s in complete_steps(paths) if s < newest and strip_optimizer(paths.checkpoint_dir(s))]
    if stripped:
        log.info("checkpoint step %d complete: optimizer state removed from steps %s (finetune.keep_optimizer = "
                 "'last'; their weights stay)", newest, stripped)
    return stripped


def drop_unplanned(paths: RunPaths, newest: int, planned: tuple[int, ...], keep: str) -> list[int]:
    """With keep = "last", after checkpoint `newest` is complete with its optimizer state: remove the older
    checkpoints no evaluation reads (each time-limit requeue or preemption saves one where the signal came: a whole
    model's weights, ~8 GB for Cosmos-4B, that nothing planned, counted or reclaimed). Marker first, so a removal
    cut short leaves an incomplete folder that nothing lists. Returns the steps removed."""
    if keep == "all" or not has_optimizer(paths.checkpoint_dir(newest)):
        return []
    gone = [s for s in complete_steps(paths) if s < newest and s not in planned]
    for s in gone:
        d = paths.checkpoint_dir(s)
        (d / MARKER).unlink(missing_ok=True)
        shutil.rmtree(d, ignore_errors=True)
    if gone:
        log.info("checkpoint step %d complete: the signal checkpoints of steps %s removed (no evaluation reads "
                 "them; finetune.keep_optimizer = 'last')", newest, gone)
    return gone
