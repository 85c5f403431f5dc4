"""Experiment tracking, the report's part: evaluation means as TensorBoard scalars (and W&B where the spec's
[tracking] asks), and `harness sync` of a run's offline W&B runs from the login node (WANDB_API_KEY read from that
shell's environment only). Training scalars are written while training, by the library's `TrainTracker`
(`harness.lib.tracking`, opened through `harness.stages.tracked`).

Evaluation means are rewritten as a whole on each report (a fresh directory swapped in), so a rerun of the report
never adds a second value per checkpoint. W&B keeps the first value it saw for a step; see README "Experiment
tracking".
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from harness.core import metrics_table as mt
from harness.core.errors import HarnessError
from harness.core.spec_check import wandb_installed
from harness.lib.tracking import EventWriter, open_wandb
from harness.stages.tracked import wandb_target

if TYPE_CHECKING:
    from harness.core.paths import RunPaths
    from harness.core.spec import TrackingSection
    from harness.report.build import Checkpoint

VIDEOS_TAG = "eval/videos"


def eval_tags() -> dict[str, str]:
    """Metric name -> scalar tag (`metrics_table`'s tracking_tag), then the videos count's."""
    return {**{m.name: m.tracking_tag for m in mt.METRICS}, "videos": VIDEOS_TAG}


def eval_scalars(c: Checkpoint) -> dict[str, float]:
    tags = eval_tags()
    vals = {**{m.name: c.value(m.name) for m in mt.METRICS}, "videos": float(c.videos)}
    return {tags[k]: v for k, v in vals.items() if v is not None and math.isfinite(v)}


def log_evaluation(cfg: TrackingSection, paths: RunPaths, checkpoints: Iterable[Checkpoint]) -> Path:
    """Per-checkpoint means (all shards, as the report computes them) at step = checkpoint step. The eval
    directory is rebuilt in a temp directory and swapped in, so readers never see half of it."""
    rows = [(c.step, eval_scalars(c)) for c in checkpoints]
    final = paths.tensorboard_eval
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".eval."))
    writer = EventWriter(tmp)
    for step, scalars in rows:
        for tag, v in scalars.items():
            writer.add_scalar(tag, v, global_step=step)
    writer.close()
    old = final.with_name(f".eval.old.{os.getpid()}")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    if cfg.wandb and rows:
        _log_eval_wandb(cfg, paths, rows)
    return final


def _log_eval_wandb(cfg: TrackingSection, paths: RunPaths, rows: list[tuple[int, dict[str, float]]]) -> None:
    """Against `checkpoint_step`, not W&B's own step (already at the last training step: W&B steps only grow)."""
    run = open_wandb(wandb_target(cfg, paths))
    try:
        run.define_metric("checkpoint_step")
        run.define_metric("eval/*", step_metric="checkpoint_step")
        for step, scalars in rows:
            run.log({"checkpoint_step": step, **scalars})
    finally:
        run.finish()


# ------------------------------------------------------------------------------------------ W&B on the login node
def offline_runs(paths: RunPaths) -> list[Path]:
    """The offline run directories `wandb sync` uploads (one per training attempt and report)."""
    root = paths.wandb_runs
    return sorted(p for p in root.glob("offline-run-*") if p.is_dir()) if root.is_dir() else []


def sync_command(runs: list[Path]) -> list[str]:
    """`wandb sync` of the given directories; the key comes from the caller's environment (WANDB_API_KEY or
    `wandb login`), never from an argument."""
    return [sys.executable, "-m", "wandb", "sync", *map(str, runs)]


def sync(paths: RunPaths) -> list[Path]:
    """Upload a run's offline W&B directories from the login node; raises HarnessError in one line. Run from
    <run>/wandb: `wandb sync` writes its own debug log under the current directory."""
    runs = offline_runs(paths)
    if not runs:
        raise HarnessError(f"{paths.wandb_dir}: no offline W&B runs to sync (set [tracking] wandb = true)")
    if not wandb_installed():
        raise HarnessError("wandb is not installed here: pip install -e '.[wandb]'")
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    res = subprocess.run(sync_command(runs), env=env, capture_output=True, text=True, cwd=paths.wandb_dir)
    lines = (res.stderr + res.stdout).splitlines()
    errors = sync_errors(lines)
    if res.returncode or errors:  # wandb sync exits 0 after "ERROR Failed to sync all data"
        last = "; ".join(errors[:2]) if errors else next((ln for ln in reversed(lines) if ln.strip()), "").strip()
        raise HarnessError(f"wandb sync {paths.wandb_dir} failed (exit {res.returncode}): {last}")
    return runs


def sync_errors(lines: list[str]) -> list[str]:
    """wandb's error lines, the cause first: "wandb: ERROR Find detailed error logs at ..." comes before the
    line that says why ("Error: No API key configured. Use `wandb login` to log in.")."""
    errors = [ln.strip() for ln in lines if re.match(r"^(wandb: )?(ERROR\b|Error:)", ln.strip())]
    return [e for e in errors if "detailed error logs" not in e] or errors
