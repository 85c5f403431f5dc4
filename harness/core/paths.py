"""Run-directory layout: every path of a run is built here (`RunPaths`), nowhere else.

Everything `status`, `resume` and `report` need is rebuilt from this directory alone: the frozen spec,
the plan, the job ids, each task's outputs and its completion marker (always written last).
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.core.atomic import atomic_write_json
from harness.core.errors import HarnessError

_STEP_DIR = re.compile(r"^step-(\d{8})$")


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def run_id(self) -> str:
        return self.root.name

    # -- launch
    @property
    def spec_toml(self) -> Path:
        return self.root / "spec.toml"

    @property
    def spec_json(self) -> Path:
        return self.root / "spec.json"

    @property
    def plan_json(self) -> Path:
        return self.root / "plan.json"

    @property
    def jobs_json(self) -> Path:
        return self.root / "jobs.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    def logs(self, stage: str) -> Path:
        return self.root / "logs" / stage

    def marker(self, stage: str, task: int) -> Path:
        """Completion marker of one array task; written last, after all of the task's outputs."""
        return self.root / "done" / stage / f"{task:06d}.json"

    # -- stage-assets
    @property
    def assets_json(self) -> Path:
        return self.root / "assets.json"

    # -- tokenize / merge
    def shard_prefix(self, shard: int) -> Path:
        return self.root / "tokens" / f"shard-{shard:05d}"

    def shard_manifest(self, shard: int) -> Path:
        return self.root / "tokens" / f"shard-{shard:05d}.manifest.json"

    @property
    def dataset_prefix(self) -> Path:
        return self.root / "dataset" / "tokens"

    @property
    def dataset_summary(self) -> Path:
        return self.root / "dataset" / "summary.json"

    @property
    def dataset_split(self) -> Path:
        return self.root / "dataset" / "split.json"

    # -- finetune
    @property
    def finetune_dir(self) -> Path:
        return self.root / "finetune"

    def checkpoint_dir(self, step: int) -> Path:
        return self.root / "finetune" / "checkpoints" / f"step-{step:08d}"

    def checkpoint_steps(self) -> list[int]:
        """Steps of the checkpoint directories present (complete or not), ascending."""
        root = self.checkpoint_dir(0).parent
        if not root.is_dir():
            return []
        return sorted(int(m.group(1)) for d in root.iterdir() if (m := _STEP_DIR.match(d.name)))

    @property
    def checkpoints_json(self) -> Path:
        return self.root / "finetune" / "checkpoints.json"

    @property
    def metrics_jsonl(self) -> Path:
        return self.root / "finetune" / "metrics.jsonl"

    # -- infer / evaluate / report
    def infer_dir(self, step: int) -> Path:
        return self.root / "infer" / f"step-{step:08d}"

    def infer_manifest(self, step: int, shard: int | None = None) -> Path:
        """What one infer task generated (names, timings); `shard` None: the checkpoint's only task."""
        return self.root / "infer" / f"step-{step:08d}{_shard(shard)}.stats.json"

    def eval_json(self, step: int, shard: int | None = None) -> Path:
        """One evaluate task's per-video metrics; `shard` None: the checkpoint's only task."""
        return self.root / "eval" / f"step-{step:08d}{_shard(shard)}.json"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def numba_cache(self) -> Path:
        """NUMBA_CACHE_DIR of the run's tasks (see harness.stages)."""
        return self.root / "cache" / "numba"


def _shard(shard: int | None) -> str:
    return "" if shard is None else f".shard-{shard:05d}"


def new_run_dir(workdir: Path, name: str) -> RunPaths:
    """Create a fresh, private run directory; two submits of one spec never share one."""
    workdir.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        run_id = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        root = workdir / run_id
        try:
            root.mkdir(mode=0o700)
        except FileExistsError:
            continue
        return RunPaths(root)
    raise HarnessError(f"{workdir}: could not create a unique run directory")


def mark_done(paths: RunPaths, stage: str, task: int, info: dict[str, Any] | None = None) -> None:
    atomic_write_json(paths.marker(stage, task), {"stage": stage, "task": task, "time": time.time(),
                                                  **(info or {})})


def is_done(paths: RunPaths, stage: str, task: int) -> bool:
    return paths.marker(stage, task).is_file()
