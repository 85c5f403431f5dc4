"""NeMo's view of the harness: `CosmosNeMoConfig` (a `GPTConfig` whose `configure_model` builds the harness model),
the finetune core's LR schedule as a NeMo scheduler, and `VideoDataModule`, the training split in the mcore engine's
sample order. Imported only where NeMo 2 imports (`harness.stages.finetune.nemo.available`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import lightning.pytorch as pl
import torch
from nemo.collections.llm.gpt.model.base import GPTConfig
from nemo.lightning.data import WrappedDataLoader
from nemo.lightning.pytorch.optim import LRSchedulerModule
from nemo.lightning.pytorch.plugins import MegatronDataSampler

from harness.core.models import PRESETS
from harness.core.spec import FinetuneSection, RunSpec
from harness.core.tokens import Grid
from harness.cosmos import config as cfg
from harness.cosmos import data as data_mod
from harness.stages.finetune import core
from harness.stages.finetune.nemo_common import MIRRORED, data_step, forward_step, ordered_sample


@dataclass
class CosmosNeMoConfig(GPTConfig):
    """NeMo's view of the harness model. The TransformerConfig fields mirror
    `harness.cosmos.config.transformer_config(preset)` (NeMo's strategy and precision plugin read and adjust
    them); `configure_model` builds the model with `harness.cosmos.model.build_model`."""

    preset_name: str = "tiny"
    latent_grid: tuple[int, int, int] = (1, 1, 1)
    rope_length: int = 0
    """Positions the 3D RoPE tables cover: one training sample (tokens[:-1])."""
    recompute: str = "none"
    forward_step_fn: Callable[..., Any] = forward_step
    data_step_fn: Callable[..., Any] = data_step

    def __post_init__(self) -> None:
        preset = PRESETS[self.preset_name]
        tc = cfg.transformer_config(preset, tp=self.tensor_model_parallel_size, recompute=self.recompute,
                                    precision="bf16-mixed" if self.bf16 else "fp32")
        for name in MIRRORED:
            setattr(self, name, getattr(tc, name))
        self.seq_length, self.vocab_size, self.rotary_base = preset.seq_length, preset.vocab_size, preset.rotary_base
        self.share_embeddings_and_output_weights = self.cross_entropy_loss_fusion = False
        super().__post_init__()

    def configure_model(self, tokenizer: Any, pre_process: Any = None, post_process: Any = None,
                        vp_stage: Any = None) -> Any:
        from harness.cosmos.model import build_model

        precision: cfg.Precision = "bf16-mixed" if self.bf16 else "fp32"
        return build_model(PRESETS[self.preset_name], Grid(*self.latent_grid), tp=self.tensor_model_parallel_size,
                           precision=precision, recompute=self.recompute, seq_len=self.rope_length)


class HarnessLR(LRSchedulerModule):
    """The finetune core's schedule (`harness.stages.finetune.core.lr_at`: linear warm-up, cosine to min_lr or
    constant) as a NeMo scheduler, so both engines use the same LR at every step."""

    def __init__(self, lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> None:
        super().__init__()
        self.f = FinetuneSection(lr=lr, min_lr=min_lr, warmup_steps=warmup_steps, max_steps=max_steps,
                                 save_every=1)

    def scheduler(self, model: Any, optimizer: Any) -> Any:
        f = self.f
        sched = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: core.lr_at(f, s) / f.lr if f.lr else 0.0)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}


class _EpochSamples(torch.utils.data.Dataset):
    """`total` samples in run order (crossing epochs), each one whole video."""

    def __init__(self, samples: data_mod.VideoSamples, gbs: int, seed: int, total: int) -> None:
        self.samples, self.gbs, self.seed, self.total = samples, gbs, seed, total

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, j: int) -> dict[str, torch.Tensor]:
        s = self.samples.sample(ordered_sample(j, self.gbs, len(self.samples), self.seed))
        out = {"tokens": torch.from_numpy(s.tokens), "labels": torch.from_numpy(s.labels),
               "loss_mask": torch.from_numpy(s.loss_mask)}
        if s.context is not None:
            out["context"] = torch.from_numpy(s.context)
        return out


class VideoDataModule(pl.LightningDataModule):
    """Training split of the merged dataset; NeMo's MegatronDataSampler slices it into micro-batches per DP
    rank and skips consumed samples on resume (state_dict below)."""

    def __init__(self, spec: RunSpec, samples: data_mod.VideoSamples, total_steps: int) -> None:
        super().__init__()
        f = spec.finetune
        self.spec, self.samples, self.total_steps = spec, samples, total_steps
        self.seq_length = spec.token_math.sample_length - 1
        self.micro_batch_size, self.global_batch_size = f.micro_batch_size, f.global_batch_size
        self.data_sampler = MegatronDataSampler(seq_len=self.seq_length, micro_batch_size=f.micro_batch_size,
                                                global_batch_size=f.global_batch_size, dataloader_type="single")
        self.init_global_step = 0

    def train_dataloader(self) -> Any:
        f = self.spec.finetune
        assert self.trainer is not None  # Lightning attaches the trainer before it asks for data
        self.init_global_step = self.trainer.global_step
        self.data_sampler.init_global_step = self.init_global_step
        ds = _EpochSamples(self.samples, f.global_batch_size, self.spec.run.seed,
                           self.total_steps * f.global_batch_size)
        return WrappedDataLoader(mode="train", dataset=ds, num_workers=0, pin_memory=False)

    def state_dict(self) -> dict[str, Any]:
        assert self.trainer is not None  # as in train_dataloader
        steps = self.trainer.global_step - self.init_global_step
        return {"consumed_samples": self.data_sampler.compute_consumed_samples(steps)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        from megatron.core.num_microbatches_calculator import update_num_microbatches

        consumed = int(state_dict["consumed_samples"])
        self.data_sampler.init_consumed_samples = consumed
        self.data_sampler.prev_consumed_samples = consumed
        update_num_microbatches(consumed_samples=consumed, consistency_check=False)
        self.data_sampler.if_first_step = 1
