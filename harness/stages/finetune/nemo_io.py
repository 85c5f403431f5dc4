"""The NeMo engine's checkpoint IO: the optimizer state in its own folder, as the mcore engine writes it.

NeMo's `MegatronCheckpointIO` saves the model and the optimizer state as one torch_dist checkpoint under
`weights/`, whose files hold both (each rank's file carries its shards of every tensor), so the optimizer part of
an older checkpoint could not be deleted without rewriting its weights. `OptimizerApart` wraps it: the
optimizer state (`checkpoint["optimizer"]`) goes to `optimizer/` as a second torch_dist checkpoint, the rest to
`weights/` through NeMo as before, and a resume reads each back from where it is (a checkpoint from before the
split, both in `weights/`, loads through NeMo unchanged). So `finetune.keep_optimizer` and
`harness.cosmos.checkpoint.strip_optimizer` act on both engines' checkpoints alike. Imported only where NeMo 2
imports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io.wrapper import _WrappingCheckpointIO
from nemo.lightning.ckpt_utils import ckpt_to_dir

from harness.cosmos.checkpoint import optimizer_dir


def _checkpoint_dir(path: Any) -> Path:
    base = Path(ckpt_to_dir(path))
    return base.parent if base.name == "weights" else base


class OptimizerApart(_WrappingCheckpointIO):
    """`strategy.checkpoint_io = OptimizerApart(strategy.checkpoint_io)`: NeMo's IO for the model and the loop
    state, megatron-core's dist_checkpointing for the optimizer state beside it."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> Any:
        from megatron.core import dist_checkpointing

        assert self.checkpoint_io is not None
        rest = {k: v for k, v in checkpoint.items() if k != "optimizer"}
        out = self.checkpoint_io.save_checkpoint(rest, path, storage_options=storage_options)
        if "optimizer" in checkpoint:
            odir = optimizer_dir(_checkpoint_dir(path))
            odir.mkdir(parents=True, exist_ok=True)  # every rank, before any writes into it
            dist_checkpointing.save({"optimizer": checkpoint["optimizer"]}, str(odir),
                                    content_metadata=(storage_options or {}).get("content_metadata"))
        return out

    def load_checkpoint(self, path: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The arguments of NeMo's `MegatronCheckpointIO.load_checkpoint` (path, sharded_state_dict,
        map_location, strict), positional or named."""
        from megatron.core import dist_checkpointing

        base: Any = self.checkpoint_io  # NeMo's MegatronCheckpointIO: Lightning's CheckpointIO has no `strict`
        named = dict(zip(("sharded_state_dict", "map_location", "strict"), args)) | kwargs
        wanted = named.get("sharded_state_dict")
        odir = optimizer_dir(_checkpoint_dir(path))
        if not wanted or "optimizer" not in wanted or not odir.is_dir():
            return base.load_checkpoint(path, **named)
        rest = {k: v for k, v in wanted.items() if k != "optimizer"}
        checkpoint: dict[str, Any] = base.load_checkpoint(path, **{**named, "sharded_state_dict": rest})
        checkpoint["optimizer"] = dist_checkpointing.load({"optimizer": wanted["optimizer"]}, str(odir))["optimizer"]
        return checkpoint
