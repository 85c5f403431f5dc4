"""Where a run's tracking goes: its TensorBoard directory and its offline W&B target, the run's view of
`harness.lib.tracking`. A helper shared by the finetune engines (training scalars) and the report package above
the stages (evaluation means, `harness sync`), not a stage.

Everything is written under the run directory (`<run>/tensorboard`, `<run>/wandb`): compute nodes have no
internet, so W&B runs in offline mode there and `harness sync RUN` uploads from the login node.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from harness.core.paths import RunPaths
from harness.core.spec import TrackingSection
from harness.lib.tracking import TrainTracker, WandbTarget


def tensorboard_dir(paths: RunPaths) -> Path:
    """`tensorboard --logdir <run>/tensorboard` shows training (train/) and evaluation (eval/) together."""
    return paths.root / "tensorboard"


def wandb_dir(paths: RunPaths) -> Path:
    return paths.root / "wandb"


def wandb_target(cfg: TrackingSection, paths: RunPaths) -> WandbTarget:
    """The run's one W&B run (id = the run id): training, requeues and the report append to it."""
    return WandbTarget(cfg.wandb_project, cfg.wandb_entity, paths.run_id, wandb_dir(paths))


def open_train_tracker(cfg: TrackingSection, paths: RunPaths, resumed_step: int,
                       config: Mapping[str, Any] | None = None) -> TrainTracker:
    """Rank 0's writers for one training attempt: `<run>/tensorboard/train`, and W&B where [tracking] asks."""
    return TrainTracker.open(tensorboard_dir(paths) / "train", resumed_step,
                             wandb_target(cfg, paths) if cfg.wandb else None, config)
