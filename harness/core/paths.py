"""Run-directory layout: every path of a run is built here (`RunPaths`), nowhere else.

Everything `status`, `resume` and `report` need is rebuilt from this directory alone: the frozen spec, the plan,
the job ids, each task's outputs and its completion marker (always written last). A folder renamed here is renamed
for every reader and writer (`tests/test_layers.py` fails on a run-directory name joined into a path anywhere
else); the stored records are read back through `harness.core.rundir`.
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

SHARED_STAGES: tuple[str, ...] = ("import-image", "stage-assets", "tokenize", "merge")
"""The stages whose outputs (imported container image, staged assets, token shards, merged dataset) a campaign
member may take from another's run: they depend only on keys deciding the tokens and the container
(`harness.core.campaign.share_key`)."""

CACHED_STAGES: tuple[str, ...] = ("tokenize", "merge")
"""The stages a token-cache entry (`data.cache_dir`) holds the outputs of; stage-assets stays per run (the base
model is not part of the tokens)."""


def step_dir(checkpoints: Path, step: int) -> Path:
    """One checkpoint's folder in a checkpoints folder (a run's, or one copied out of it: `harness export`)."""
    return checkpoints / f"step-{step:08d}"


def steps_in(checkpoints: Path) -> list[int]:
    """Steps of the checkpoint folders in `checkpoints` (complete or not), ascending; [] where it is no folder."""
    found = (_STEP_DIR.match(d.name) for d in checkpoints.iterdir()) if checkpoints.is_dir() else ()
    return sorted(int(m.group(1)) for m in found if m)


def is_step_dir(directory: Path) -> bool:
    return _STEP_DIR.match(directory.name) is not None


@dataclass(frozen=True)
class RunPaths:
    root: Path
    shared: Path | None = None
    """The run directory that prepares this run's data (a campaign member sharing another's tokenize and merge;
    recorded in `shared_json`, read back by `harness.core.rundir.open_run`); None: this run prepares its own."""
    cache: Path | None = None
    """The token-cache entry (`CacheEntry.root`) holding this run's tokens and dataset, with tokenize's and merge's
    markers and logs (`data.cache_dir`); None: they are in the data-preparing run's directory."""
    builder: Path | None = None
    """The run whose jobs build `cache` where neither this run nor `shared` does (a run waiting on another's build)."""

    @property
    def run_id(self) -> str:
        return self.root.name

    @property
    def data_root(self) -> Path:
        """Where the tokens and dataset are: the cache entry, the sharing run's directory or this one."""
        return self.cache or self.shared or self.root

    def stage_root(self, stage: str) -> Path:
        """Where a stage's markers and logs are: tokenize's and merge's in the cache entry (when cached),
        stage-assets' in the data-preparing run (a cached run still stages its own model)."""
        shared = (self.shared or self.root) if stage in SHARED_STAGES else self.root
        return self.data_root if stage in CACHED_STAGES else shared

    def runner(self, stage: str) -> Path:
        """The run directory whose jobs run `stage` for this run (its own, the campaign owner's, the builder's)."""
        own = (self.shared or self.root) if stage in SHARED_STAGES else self.root
        return self.builder if stage in CACHED_STAGES and self.builder is not None else own

    def stage_run_id(self, stage: str) -> str:
        """The run whose job runs `stage` (Slurm's job comment): the sharing or building run's for a shared stage."""
        return self.runner(stage).name

    @property
    def shared_json(self) -> Path:
        """Which run prepares this one's data (absent: this run itself)."""
        return self.root / "shared.json"

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
    def status_json(self) -> Path:
        """Task states of the last status query Slurm answered, shown as stored while it does not answer."""
        return self.root / "status.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def is_run(self) -> bool:
        """A submitted run (`harness runs`, a run named by its id): its plan and job ids are written."""
        return self.jobs_json.is_file() and self.plan_json.is_file()

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    def logs(self, stage: str) -> Path:
        return self.stage_root(stage) / "logs" / stage

    def job_folder(self, stage: str) -> Path:
        """submitit's log folder of a stage's jobs (`%j`: the job id, filled in by submitit)."""
        return self.logs(stage) / "%j"

    def recorded_log(self, stored: str) -> Path:
        """A task log as recorded: relative to the run directory (an older absolute one: re-rooted under this one)."""
        p = Path(stored)
        if not p.is_absolute():
            return self.root / p
        here = self.root.joinpath(*p.parts[-4:]) if len(p.parts) >= 4 and p.parts[-4] == "logs" else p
        return here if here.exists() or not p.exists() else p

    def task_log(self, stage: str, job_id: str) -> Path:
        """stdout of one submitit job (array task `job_id`, e.g. `123_7`); stderr: the same name, `.err`."""
        return self.logs(stage) / job_id / f"{job_id}_0_log.out"

    @property
    def done_dir(self) -> Path:
        return self.root / "done"

    def markers_dir(self, stage: str) -> Path:
        return self.stage_root(stage) / "done" / stage

    def marker(self, stage: str, task: int) -> Path:
        """Completion marker of one array task; written last, after all of the task's outputs."""
        return self.markers_dir(stage) / f"{task:06d}.json"

    def attempts(self, stage: str, task: int) -> Path:
        """A task's infrastructure failures and retries (`harness.core.retries`); absent: it never had one."""
        return self.attempts_dir(stage) / f"{task:06d}.json"

    def attempts_dir(self, stage: str) -> Path:
        return self.stage_root(stage) / "attempts" / stage

    # -- the local executor's driver
    @property
    def driver_log(self) -> Path:
        return self.logs("driver") / "driver.log"

    @property
    def local_state_json(self) -> Path:
        return self.root / "local_state.json"

    @property
    def local_done_json(self) -> Path:
        """Written last by the local driver's pass over the DAG (removed when `resume` starts another)."""
        return self.root / "local_done.json"

    @property
    def local_only_json(self) -> Path:
        """The tasks a resumed local driver runs (absent: every task of the plan)."""
        return self.root / "local_only.json"

    # -- stage-assets
    @property
    def assets_json(self) -> Path:
        return self.stage_root("stage-assets") / "assets.json"

    @property
    def inputs_jsonl(self) -> Path:
        """The ordered input list (written once, at submit) every stage indexes into."""
        return self.root / "inputs.jsonl"

    # -- tokenize / merge
    def shard_prefix(self, shard: int) -> Path:
        return self.data_root / "tokens" / f"shard-{shard:05d}"

    def shard_manifest(self, shard: int) -> Path:
        return self.data_root / "tokens" / f"shard-{shard:05d}.manifest.json"

    @property
    def dataset_dir(self) -> Path:
        return self.data_root / "dataset"

    @property
    def dataset_prefix(self) -> Path:
        return self.dataset_dir / "tokens"

    @property
    def dataset_summary(self) -> Path:
        return self.dataset_dir / "summary.json"

    @property
    def dataset_split(self) -> Path:
        return self.dataset_dir / "split.json"

    # -- finetune
    @property
    def finetune_dir(self) -> Path:
        return self.root / "finetune"

    @property
    def checkpoints_dir(self) -> Path:
        return self.finetune_dir / "checkpoints"

    def checkpoint_dir(self, step: int) -> Path:
        return step_dir(self.checkpoints_dir, step)

    def checkpoint_steps(self) -> list[int]:
        """Steps of the checkpoint directories present (complete or not), ascending."""
        return steps_in(self.checkpoints_dir)

    @property
    def checkpoints_json(self) -> Path:
        return self.finetune_dir / "checkpoints.json"

    @property
    def metrics_jsonl(self) -> Path:
        return self.finetune_dir / "metrics.jsonl"

    @property
    def nemo_log_dir(self) -> Path:
        """NeMo's own logger folder (the NeMo engine); checkpoints go to `checkpoints_dir` all the same."""
        return self.finetune_dir / "nemo"

    # -- infer / evaluate
    @property
    def infer_root(self) -> Path:
        return self.root / "infer"

    @property
    def infer_inputs_jsonl(self) -> Path:  # written once, by the first infer task (harness.stages.infer_inputs)
        return self.infer_root / "inputs.jsonl"

    def infer_dir(self, step: int) -> Path:
        return self.infer_root / f"step-{step:08d}"

    def infer_manifest(self, step: int, shard: int | None = None) -> Path:
        """What one infer task generated (names, timings); `shard` None: the checkpoint's only task."""
        return self.infer_root / f"step-{step:08d}{_shard(shard)}.stats.json"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    def eval_json(self, step: int, shard: int | None = None) -> Path:
        """One evaluate task's per-video metrics; `shard` None: the checkpoint's only task."""
        return self.eval_dir / f"step-{step:08d}{_shard(shard)}.json"

    # -- tracking
    @property
    def tensorboard_dir(self) -> Path:
        """`tensorboard --logdir <run>/tensorboard` shows training (train/) and evaluation (eval/) together."""
        return self.root / "tensorboard"

    @property
    def tensorboard_train(self) -> Path:
        return self.tensorboard_dir / "train"

    @property
    def tensorboard_eval(self) -> Path:
        return self.tensorboard_dir / "eval"

    @property
    def wandb_dir(self) -> Path:
        """W&B's `dir`: it writes its offline runs into a `wandb/` folder of its own below it."""
        return self.root / "wandb"

    @property
    def wandb_runs(self) -> Path:
        return self.wandb_dir / "wandb"

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


@dataclass(frozen=True)
class CampaignPaths:
    """A campaign's directory: `campaign.json` lists its member runs (ordinary run directories beside it)."""

    root: Path

    @property
    def campaign_id(self) -> str:
        return self.root.name

    @property
    def campaign_json(self) -> Path:
        return self.root / "campaign.json"

    @property
    def is_campaign(self) -> bool:
        return self.campaign_json.is_file()

    def member(self, run_id: str) -> Path:
        """A member's run directory: a sibling of the campaign's, so `harness runs` and a run id find it."""
        return self.root.parent / run_id


def new_campaign_dir(workdir: Path, name: str) -> CampaignPaths:
    return CampaignPaths(new_run_dir(workdir, name).root)


def mark_done(paths: RunPaths, stage: str, task: int, info: dict[str, Any] | None = None) -> None:
    atomic_write_json(paths.marker(stage, task), {"stage": stage, "task": task, "time": time.time(), **(info or {})})


def is_done(paths: RunPaths, stage: str, task: int) -> bool:
    return paths.marker(stage, task).is_file()


@dataclass(frozen=True)
class CacheEntry:
    """One token-cache entry, `<data.cache_dir>/<key[:16]>/`: laid out as a run's data root (tokens/, dataset/, done/,
    logs/ of tokenize and merge), plus what the cache keeps. Complete once merge's marker exists (written last)."""

    root: Path

    @property
    def key16(self) -> str:
        return self.root.name

    @property
    def entry_json(self) -> Path:
        """The key's inputs in clear, the full key, the builder and when it was created."""
        return self.root / "entry.json"

    @property
    def claim_json(self) -> Path:
        """Created O_EXCL by the submit that builds the entry (its run and merge job ids)."""
        return self.root / "claim.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def users_dir(self) -> Path:
        """One file per run using the entry (written once each, atomically): `harness cache ls`'s users."""
        return self.root / "users"

    def user(self, run_id: str) -> Path:
        return self.users_dir / f"{run_id}.json"

    @property
    def freed_json(self) -> Path:  # `harness cache rm` of a complete entry: its tokens and dataset are gone
        return self.root / "freed.json"

    @property
    def complete_marker(self) -> Path:
        return RunPaths(self.root).marker("merge", 0)

    @property
    def is_complete(self) -> bool:
        return self.complete_marker.is_file()

    @property
    def build_outputs(self) -> tuple[Path, ...]:
        """What a build writes: removed before a stale (killed) build is redone, so no part of it is ever used."""
        return (self.root / "tokens", self.root / "dataset", self.root / "done")


def cache_entry(cache_dir: Path, key: str) -> CacheEntry:
    return CacheEntry(cache_dir / key[:16])
