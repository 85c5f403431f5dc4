"""NeMo's view of the harness: `CosmosNeMoConfig` (a `GPTConfig` whose `configure_model` builds the harness model),
`CosmosGPTModel` (NeMo's GPTModel whose validation steps sum the training loss's terms), the finetune core's LR
schedule as a NeMo scheduler, and `VideoDataModule`, the training split in the mcore engine's sample order and the
validation videos in its validation order. Imported only where NeMo 2 imports
(`harness.stages.finetune.nemo.available`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import lightning.pytorch as pl
import torch
from nemo.collections.llm.gpt.model.base import GPTConfig, GPTModel
from nemo.lightning.data import WrappedDataLoader
from nemo.lightning.megatron_parallel import MegatronLossReduction
from nemo.lightning.pytorch.optim import LRSchedulerModule
from nemo.lightning.pytorch.plugins import MegatronDataSampler

from harness.core.models import PRESETS
from harness.core.spec import FinetuneSection, RunSpec
from harness.core.tokens import Grid
from harness.cosmos import config as cfg
from harness.cosmos import data as data_mod
from harness.stages.finetune import core
from harness.stages.finetune.nemo_common import MIRRORED, data_step, forward_step, ordered_sample, validation_order


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


class ValidationSums(MegatronLossReduction):
    """The validation loss as `core.validation_loss` computes it: the training loss's masked sums
    (`core.masked_sums`, in float64) added over every micro-batch of a validation pass, so the loss is their
    ratio over all validation videos (NeMo's own reduction averages per global batch). `reduce` returns the
    step's ratio on this rank, which NeMo's strategy logs as `val_loss`; `loss` is the pass's, summed over DP."""

    def __init__(self) -> None:
        super().__init__()
        self.total, self.count = 0.0, 0.0

    def reset(self) -> None:
        self.total, self.count = 0.0, 0.0

    def forward(self, batch: dict[str, torch.Tensor], forward_out: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total, count = core.masked_sums(forward_out.double(), batch["loss_mask"].double())
        return total.clone(), {"sums": torch.stack([total, count])}

    def reduce(self, losses_reduced_per_micro_batch: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
        sums = torch.stack([x["sums"] for x in losses_reduced_per_micro_batch]).sum(dim=0)
        total, count = sums.tolist()
        self.total, self.count = self.total + total, self.count + count
        return torch.tensor(total / count if count else 0.0, dtype=torch.float32, device=sums.device)

    def loss(self, device: torch.device, dp_group: Any) -> float:
        """The pass's loss over the whole DP group (every rank calls this: an all-reduce)."""
        import torch.distributed as dist

        sums = torch.tensor([self.total, self.count], dtype=torch.float64, device=device)
        if dist.is_initialized():
            dist.all_reduce(sums, group=dp_group)
        return float(sums[0] / sums[1])


class CosmosGPTModel(GPTModel):
    """NeMo's GPTModel (its `validation_step` runs the config's `forward_step`, the training step's per-token
    loss) whose validation reduction is `ValidationSums`, kept on the model so the metrics callback reads the
    pass's loss where NeMo's reduction left it."""

    @property
    def validation_loss_reduction(self) -> ValidationSums:
        found = getattr(self, "_validation_loss_reduction", None)  # GPTModel.__init__ sets it None
        if not isinstance(found, ValidationSums):
            found = ValidationSums()
            self._validation_loss_reduction = found
        return found


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
        return _as_batch_item(self.samples.sample(ordered_sample(j, self.gbs, len(self.samples), self.seed)))


def _as_batch_item(s: data_mod.Sample, *, counted: bool = True) -> dict[str, torch.Tensor]:
    """One sample as the data loader's dict (`counted` False: its loss mask zeroed, a padding sample)."""
    mask = torch.from_numpy(s.loss_mask)
    out = {"tokens": torch.from_numpy(s.tokens), "labels": torch.from_numpy(s.labels),
           "loss_mask": mask if counted else torch.zeros_like(mask)}
    if s.context is not None:
        out["context"] = torch.from_numpy(s.context)
    return out


class _ValidationSamples(torch.utils.data.Dataset):
    """The validation videos in `nemo_common.validation_order`: video k of the split, or a padding sample."""

    def __init__(self, samples: data_mod.VideoSamples, order: list[int | None]) -> None:
        self.samples, self.order = samples, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, j: int) -> dict[str, torch.Tensor]:
        k = self.order[j]
        return _as_batch_item(self.samples.sample(0 if k is None else k), counted=k is not None)


@dataclass(frozen=True)
class ValidationData:
    """The validation split and the first `videos` of it that each validation pass reads."""

    samples: data_mod.VideoSamples
    videos: int

    def order(self, f: FinetuneSection, data_parallel: int) -> list[int | None]:
        return validation_order(self.videos, data_parallel, f.micro_batch_size, f.global_batch_size)

    def batches(self, f: FinetuneSection, data_parallel: int) -> int:
        """Lightning's `limit_val_batches` for one whole pass: it counts the loader's items, which NeMo's sampler
        makes micro-batches (each validation step then draws a global batch's worth of them)."""
        return len(self.order(f, data_parallel)) // (f.micro_batch_size * data_parallel)


class VideoDataModule(pl.LightningDataModule):
    """Training split of the merged dataset; NeMo's MegatronDataSampler slices it into micro-batches per DP
    rank and skips consumed samples on resume (state_dict below)."""

    def __init__(self, spec: RunSpec, samples: data_mod.VideoSamples, total_steps: int,
                 validation: ValidationData | None = None, data_parallel: int = 1) -> None:
        super().__init__()
        f = spec.finetune
        self.spec, self.samples, self.total_steps = spec, samples, total_steps
        self.validation, self.data_parallel = validation, data_parallel
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

    def val_dataloader(self) -> Any:
        """Lightning asks for it only where validation is on (limit_val_batches > 0)."""
        assert self.validation is not None
        ds = _ValidationSamples(self.validation.samples, self.validation.order(self.spec.finetune, self.data_parallel))
        return WrappedDataLoader(mode="validation", dataset=ds, num_workers=0, pin_memory=False)

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
