"""The run's tracking targets: the run's view of `harness.lib.tracking` (which knows no run), shared by the
finetune engines (training scalars) and the report package above the stages (evaluation means), not a stage.

Everything is written under the run directory (`RunPaths.tensorboard_dir`, `RunPaths.wandb_dir`): compute nodes
have no internet, so W&B runs in offline mode there and `harness sync RUN` uploads from the login node.
"""

from __future__ import annotations

from typing import Any, Mapping

from harness.core.paths import RunPaths
from harness.core.spec import TrackingSection
from harness.lib.tracking import TrainTracker, WandbTarget


def wandb_target(cfg: TrackingSection, paths: RunPaths) -> WandbTarget:
    """The run's one W&B run (id = the run id): training, requeues and the report append to it."""
    return WandbTarget(cfg.wandb_project, cfg.wandb_entity, paths.run_id, paths.wandb_dir)


def open_train_tracker(cfg: TrackingSection, paths: RunPaths, resumed_step: int,
                       config: Mapping[str, Any] | None = None) -> TrainTracker:
    """Rank 0's writers for one training attempt: `<run>/tensorboard/train`, and W&B where [tracking] asks."""
    return TrainTracker.open(paths.tensorboard_train, resumed_step, wandb_target(cfg, paths) if cfg.wandb else None,
                             config)
