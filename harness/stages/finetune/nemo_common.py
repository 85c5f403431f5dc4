"""The NeMo engine's parts that need no NeMo: the sample order shared with the mcore engine, the step functions
NeMo calls with the harness batch and model, and the checkpoint housekeeping around NeMo's own saves (incomplete
attempts removed, the engine a resume needs). What both engines share (metrics record, checkpoint side files, LR
schedule, pretrained source) is `harness.stages.finetune.core`'s.

Kept apart from the NeMo subclasses (`nemo_model`, `nemo_callbacks`) so this imports, and its tests run, where
NeMo is absent.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from harness.core.atomic import read_json
from harness.core.errors import HarnessError
from harness.core.paths import RunPaths
from harness.cosmos import checkpoint as ckpt
from harness.cosmos import data as data_mod

log = logging.getLogger("harness.stages.finetune.nemo")

CHECKPOINT_FILENAME = "step-{completed_steps:08d}"
"""Lightning formats this from `HarnessCheckpoint._monitor_candidates`; equals `RunPaths.checkpoint_dir(step).name`."""


def ordered_sample(j: int, gbs: int, n: int, seed: int) -> int:
    """Split position of the run's j-th sample: NeMo's sampler reads sample indices 0, 1, 2, ... in order (micro
    batch m of DP rank r in step s takes s*gbs + (m*dp + r)*mbs ...), which is how the mcore engine slices
    `global_batch(step)`; so both engines train on identical batches."""
    return data_mod.global_batch(j // gbs, gbs, n, seed)[j % gbs]


def validation_order(count: int, dp: int, micro_batch_size: int, global_batch_size: int) -> list[int | None]:
    """Validation video at each position of the NeMo engine's validation dataset (None: padding, a sample whose
    loss mask is all zero, so it adds nothing to the loss). NeMo's sampler hands DP rank r, in its c-th
    micro-batch, positions c*mbs*dp + r*mbs + e (e < mbs) and each validation step takes gbs positions; this
    order gives rank r the mcore engine's videos r, r + dp, ... (`core.validation_loss`) in the same
    micro-batches, padded to whole global batches (NeMo's validation sampler drops a partial one)."""
    per_rank = -(-count // dp)
    rounds = -(-per_rank // micro_batch_size)
    per_step = global_batch_size // (micro_batch_size * dp)
    rounds = -(-rounds // per_step) * per_step
    order: list[int | None] = []
    for c in range(rounds):
        for r in range(dp):
            for e in range(micro_batch_size):
                v = r + (c * micro_batch_size + e) * dp
                order.append(v if v < count else None)
    return order


def device() -> torch.device:
    """This rank's device: the batch, and the stop-signal agreement between ranks, live there."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def data_step(dataloader_iter: Any) -> dict[str, torch.Tensor]:
    """NeMo's `gpt_data_step` moves a fixed key set with `.cuda()`; the harness batch goes to this rank's device."""
    batch = next(dataloader_iter)
    if isinstance(batch, tuple) and len(batch) == 3:  # (batch, batch_idx, dataloader_idx) from Lightning's fetcher
        batch = batch[0]
    dev = device()
    return {k: v.to(dev, non_blocking=True) for k, v in batch.items()}


def forward_step(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-token loss [b, s] from the harness model's own forward (NeMo's GPTModel.forward passes mcore GPTModel
    arguments, position ids and masks, which the 3D-RoPE model does not take); MaskedTokenLossReduction then
    averages it over `loss_mask`."""
    labels = torch.where(batch["loss_mask"] > 0, batch["labels"], 0)  # masked labels (V2W PAD 64002) are no outputs
    return model.module(batch["tokens"], labels=labels, context=batch.get("context"))


MIRRORED = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups", "kv_channels",
            "normalization", "layernorm_epsilon", "qk_layernorm", "gated_linear_unit", "activation_func",
            "add_bias_linear", "add_qkv_bias", "hidden_dropout", "attention_dropout", "bias_activation_fusion",
            "bias_dropout_fusion", "masked_softmax_fusion", "apply_rope_fusion", "persist_layer_norm",
            "gradient_accumulation_fusion", "init_method_std", "use_cpu_initialization", "recompute_granularity",
            "recompute_method", "recompute_num_layers")
"""TransformerConfig fields NeMo's config copies from the harness one (NeMo's strategy and plugins read them)."""


def scalar(v: Any) -> float | None:
    """A logged value (tensor, number or absent) as a float for metrics.jsonl."""
    return None if v is None else float(v.detach().float().cpu()) if torch.is_tensor(v) else float(v)


def remove_incomplete(paths: RunPaths) -> None:
    """Step directories without done.json (a save or marker write killed midway) are deleted, so NeMo rewrites
    them under the same name instead of adding a '-v1' suffix."""
    root = paths.checkpoints_dir
    if not root.is_dir():
        return
    for d in root.iterdir():
        if d.is_dir() and d.name.startswith("step-") and not ckpt.is_complete(d):
            log.warning("removing incomplete checkpoint %s", d)
            shutil.rmtree(d)
        elif d.name.startswith("step-") and d.name.endswith("-unfinished"):
            d.unlink()


def check_engine(ckpt_dir: Path) -> None:
    """Training state (optimizer layout, Lightning loop state in common.pt) is engine-specific: resume a run only
    with the engine that wrote its checkpoints (weights load into either, for inference or a pretrained start)."""
    engine = read_json(ckpt_dir / "context" / "harness.json").get("engine", "nemo")
    if engine != "nemo":
        raise HarnessError(f"{ckpt_dir}: written by the {engine!r} engine; resume this run with "
                           f"finetune.engine = {engine!r} (or start a new run)")
