"""The "nemo" finetune engine: NeMo 2 `llm.api.train` with `MegatronStrategy(TP)`, as the public Cosmos recipe
trains, over the SAME model definition as the mcore engine (`harness.cosmos.model.build_model`).

NeMo's LLM collection has no Cosmos classes, so the harness supplies `CosmosNeMoConfig` (a `GPTConfig` whose
`configure_model` builds the harness model with the spec's 3D-RoPE latent grid) and `VideoDataModule` (one sample
= one whole video, in exactly the mcore engine's order: sample j of the run is position j of
`harness.cosmos.data.global_batch`). Both engines therefore see the same batches and the same LR per step, and
both take the last step (max_steps: the training split is repeated across epochs until then), the checkpoint
steps, the precision and the FLOPs per step from `harness.trainplan`.

Checkpoints: NeMo's own `ModelCheckpoint` writes each one directly in the harness layout,
`finetune/checkpoints/step-<8 digits>/` with `weights/` (mcore torch_dist, keys `module.<mcore key>`) and NeMo's
`context/`; after NeMo finalises a save, the harness adds `context/harness.json`, `trainer.json` and `done.json`
(the completion marker, last) and rewrites `checkpoints.json`. So `harness.cosmos.checkpoint.load_for_inference`
reads NeMo-engine checkpoints unchanged, and a requeued job resumes from the newest one with `done.json`.

NeMo is optional: without it this module still imports (`available()` is False) and `run` raises a clear error.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from harness import tracking
from harness.cosmos import checkpoint as ckpt
from harness.cosmos import config as cfg
from harness.cosmos import data as data_mod
from harness.cosmos.layout import resolve_pretrained
from harness.cosmos import train as mcore_train
from harness.cosmos.signals import StopSignal
from harness.errors import HarnessError
from harness.models import PRESETS
from harness.rundir import RunPaths, atomic_write_json, read_json
from harness.spec import FinetuneSection, RunSpec, TrackingSection, ranks_per_node
from harness.tokens import Grid
from harness.trainplan import TrainingPlan

log = logging.getLogger(__name__)

try:
    import lightning.pytorch as pl
    from megatron.core.distributed import DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig
    from nemo import lightning as nl
    from nemo.collections import llm
    from nemo.collections.llm.gpt.model.base import GPTConfig
    from nemo.lightning.data import WrappedDataLoader
    from nemo.lightning.io.pl import ckpt_to_dir
    from nemo.lightning.pytorch.callbacks import ModelCheckpoint
    from nemo.lightning.pytorch.optim import LRSchedulerModule
    from nemo.lightning.pytorch.plugins import MegatronDataSampler
    from nemo.lightning.pytorch.strategies.utils import RestoreConfig
except Exception as e:  # NeMo 2 absent, broken, or NeMo 3 (speech only): the mcore engine is used instead
    _IMPORT_ERROR: Exception | None = e
else:
    _IMPORT_ERROR = None

CHECKPOINT_FILENAME = "step-{completed_steps:08d}"
"""Lightning formats this from `HarnessCheckpoint._monitor_candidates`; equals `RunPaths.checkpoint_dir(step).name`."""


def available() -> bool:
    """NeMo 2's LLM collection imports here."""
    return _IMPORT_ERROR is None


def select(spec: RunSpec) -> str:
    """The engine the finetune stage runs: `auto` = nemo where NeMo 2 imports and CUDA is present, else mcore."""
    engine = spec.finetune.engine
    if engine == "auto":
        return "nemo" if available() and torch.cuda.is_available() else "mcore"
    return engine


# ------------------------------------------------------------------------------------------ pure helpers
def pretrained_dir(paths: RunPaths) -> Path:
    """The staged pretrained checkpoint's NeMo 2 folder (`layout.resolve_pretrained`: the asset directory or its
    `nemo/` folder, weights under `weights/` or directly inside; NeMo's restore reads both)."""
    from harness.stages.assets import resolve

    return resolve_pretrained(resolve(paths, "checkpoint"))


def ordered_sample(j: int, gbs: int, n: int, seed: int) -> int:
    """Split position of the run's j-th sample: NeMo's sampler reads sample indices 0, 1, 2, ... in order (micro
    batch m of DP rank r in step s takes s*gbs + (m*dp + r)*mbs ...), which is how the mcore engine slices
    `global_batch(step)`; so both engines train on identical batches."""
    return data_mod.global_batch(j // gbs, gbs, n, seed)[j % gbs]


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def data_step(dataloader_iter: Any) -> dict[str, torch.Tensor]:
    """NeMo's `gpt_data_step` moves a fixed key set with `.cuda()`; the harness batch goes to this rank's device."""
    batch = next(dataloader_iter)
    if isinstance(batch, tuple) and len(batch) == 3:  # (batch, batch_idx, dataloader_idx) from Lightning's fetcher
        batch = batch[0]
    dev = _device()
    return {k: v.to(dev, non_blocking=True) for k, v in batch.items()}


def forward_step(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-token loss [b, s] from the harness model's own forward (NeMo's GPTModel.forward passes mcore GPTModel
    arguments, position ids and masks, which the 3D-RoPE model does not take); MaskedTokenLossReduction then
    averages it over `loss_mask`."""
    labels = torch.where(batch["loss_mask"] > 0, batch["labels"], 0)  # masked labels (V2W PAD 64002) are no outputs
    return model.module(batch["tokens"], labels=labels, context=batch.get("context"))


class _EpochSamples(torch.utils.data.Dataset):  # type: ignore[type-arg]
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


@dataclass(frozen=True)
class StepMath:
    """What a metrics line needs from the spec, as plain numbers (NeMo deep-copies callbacks' arguments)."""

    global_batch_size: int
    video_tokens: int
    flops_per_step: float
    train_videos: int
    log_every: int

    @classmethod
    def of(cls, spec: RunSpec, plan: TrainingPlan, train_videos: int) -> "StepMath":
        return cls(plan.global_batch_size, plan.video_tokens, plan.flops_per_step, train_videos,
                   spec.finetune.log_every)

    def record(self, step: int, loss: float, lr: float, grad_norm: float | None, dt: float, world: int
               ) -> dict[str, Any]:
        """One metrics.jsonl line, with the mcore engine's keys and FLOP accounting."""
        return {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                "tokens_per_s": self.global_batch_size * self.video_tokens / dt,
                "tflops": self.flops_per_step / dt / world / 1e12, "step_time_s": dt,
                "epoch": (step * self.global_batch_size) // self.train_videos, "time": time.time(), "engine": "nemo"}


def checkpoint_context(spec: RunSpec) -> dict[str, Any]:
    """context/harness.json of a checkpoint (the mcore engine's keys; `step` is added per save)."""
    tm = spec.token_math
    return {"preset": spec.model.preset, "grid": [tm.grid.t, tm.grid.h, tm.grid.w],
            "compression": list(tm.compression), "tensor_parallel": spec.finetune.tensor_parallel, "engine": "nemo",
            "recipe": spec.run.recipe}


_MIRRORED = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups", "kv_channels",
             "normalization", "layernorm_epsilon", "qk_layernorm", "gated_linear_unit", "activation_func",
             "add_bias_linear", "add_qkv_bias", "hidden_dropout", "attention_dropout", "bias_activation_fusion",
             "bias_dropout_fusion", "masked_softmax_fusion", "apply_rope_fusion", "persist_layer_norm",
             "gradient_accumulation_fusion", "init_method_std", "use_cpu_initialization", "recompute_granularity",
             "recompute_method", "recompute_num_layers")
"""TransformerConfig fields NeMo's config copies from the harness one (NeMo's strategy and plugins read them)."""


def _scalar(v: Any) -> float | None:
    return None if v is None else float(v.detach().float().cpu()) if torch.is_tensor(v) else float(v)


# -------------------------------------------------------------------------------------- NeMo classes
if _IMPORT_ERROR is None:

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
            for name in _MIRRORED:
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
        """The mcore engine's schedule (`harness.cosmos.train.lr_at`: linear warm-up, cosine to min_lr or constant),
        so both engines use the same LR at every step."""

        def __init__(self, lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> None:
            super().__init__()
            self.f = FinetuneSection(lr=lr, min_lr=min_lr, warmup_steps=warmup_steps, max_steps=max_steps,
                                     save_every=1)

        def scheduler(self, model: Any, optimizer: Any) -> Any:
            f = self.f
            sched = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda s: mcore_train.lr_at(f, s) / f.lr if f.lr else 0.0)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

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
            self.init_global_step = self.trainer.global_step
            self.data_sampler.init_global_step = self.init_global_step
            ds = _EpochSamples(self.samples, f.global_batch_size, self.spec.run.seed,
                               self.total_steps * f.global_batch_size)
            return WrappedDataLoader(mode="train", dataset=ds, num_workers=0, pin_memory=False)

        def state_dict(self) -> dict[str, Any]:
            steps = self.trainer.global_step - self.init_global_step
            return {"consumed_samples": self.data_sampler.compute_consumed_samples(steps)}

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            from megatron.core.num_microbatches_calculator import update_num_microbatches

            consumed = int(state_dict["consumed_samples"])
            self.data_sampler.init_consumed_samples = consumed
            self.data_sampler.prev_consumed_samples = consumed
            update_num_microbatches(consumed_samples=consumed, consistency_check=False)
            self.data_sampler.if_first_step = 1

    class HarnessCheckpoint(ModelCheckpoint):
        """NeMo's checkpoint callback writing `RunPaths.checkpoint_dir(step)` (step = optimizer steps completed),
        every `save_every` steps and at the last step, keeping all of them (infer/evaluate index them); after each
        save completes, the harness completion marker and checkpoints.json. On SIGUSR2/SIGTERM (Slurm's warning
        before the time limit, preemption) all ranks checkpoint after the current step, then hand over to submitit's
        requeue (or raise `Preempted`), as the mcore engine does."""

        def __init__(self, paths: RunPaths, plan: TrainingPlan, save_every: int, context: dict[str, Any]) -> None:
            super().__init__(dirpath=str(paths.checkpoint_dir(0).parent), filename=CHECKPOINT_FILENAME,
                             auto_insert_metric_name=False, monitor=None, save_top_k=-1, save_last=False,
                             every_n_train_steps=save_every, save_on_train_epoch_end=False)
            self.paths, self.plan, self.context = paths, plan, context
            self.steps = set(plan.checkpoint_steps)
            self.stop: StopSignal | None = None
            self.reason = "schedule"

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            super().on_train_start(trainer, pl_module)
            self.stop = StopSignal()
            self.stop.install()

        def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
            if self.stop is not None:
                self.stop.restore()
            super().teardown(trainer, pl_module, stage)

        def setup(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
            if trainer.is_global_zero:
                remove_incomplete(self.paths)
            super().setup(trainer, *args, **kwargs)

        def _monitor_candidates(self, trainer: Any) -> dict[str, Any]:
            out = super()._monitor_candidates(trainer)
            out["completed_steps"] = torch.tensor(trainer.global_step)
            return out

        def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any, **kwargs: Any) -> None:
            super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
            step = trainer.global_step
            signum = self.stop.agreed(_device()) if self.stop is not None else 0
            if (step in self.steps or signum) and self._last_global_step_saved != step:
                self.reason = "schedule" if step in self.steps else "signal"
                self._save_checkpoint(trainer, self.format_checkpoint_name(self._monitor_candidates(trainer)))
                self.reason = "schedule"
            if signum and self.stop is not None:
                self.stop.exit(signum, step)

        def _save_checkpoint(self, trainer: Any, filepath: str) -> None:
            start = time.perf_counter()
            super()._save_checkpoint(trainer, filepath)
            step = trainer.global_step
            directory = Path(ckpt_to_dir(filepath))
            if directory != self.paths.checkpoint_dir(step):
                raise HarnessError(f"{directory}: NeMo wrote a checkpoint outside the harness layout "
                                   f"(expected {self.paths.checkpoint_dir(step)})")
            if trainer.is_global_zero:
                mark_complete(self.paths, self.plan, self.context, step, reason=self.reason)
                log.info("checkpoint step %d in %.1fs", step, time.perf_counter() - start)
            trainer.strategy.barrier("harness-checkpoint")

    class MetricsCallback(pl.Callback):
        """Appends one metrics.jsonl line per optimizer step (rank 0), the mcore engine's format."""

        def __init__(self, paths: RunPaths, math: StepMath, tracking_cfg: TrackingSection | None,
                     run_config: dict[str, Any]) -> None:
            """`tracking_cfg` None: metrics.jsonl only (the bench: no TensorBoard/W&B event files)."""
            self.paths, self.math, self.tracking_cfg, self.run_config = paths, math, tracking_cfg, run_config
            self.start, self.lr = 0.0, 0.0
            self.tracker: tracking.TrainTracker | None = None

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            if trainer.is_global_zero:  # after a resume, later steps are recomputed: each is logged once
                mcore_train.truncate_metrics(self.paths.metrics_jsonl, trainer.global_step)
            if trainer.is_global_zero and self.tracking_cfg is not None:
                self.tracker = tracking.TrainTracker.open(self.tracking_cfg, self.paths, trainer.global_step,
                                                          self.run_config)

        def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
            if self.tracker is not None:
                self.tracker.close()
                self.tracker = None

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            self.lr = float(trainer.optimizers[0].param_groups[0]["lr"])
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            dt = time.perf_counter() - self.start
            if not trainer.is_global_zero:
                return
            m = trainer.callback_metrics
            loss = _scalar(m.get("reduced_train_loss"))
            if loss is None and isinstance(outputs, dict):
                loss = _scalar(outputs.get("loss"))
            rec = self.math.record(trainer.global_step, float("nan") if loss is None else loss, self.lr,
                                   _scalar(m.get("grad_norm")), dt, trainer.world_size)
            mcore_train.append_metrics(self.paths.metrics_jsonl, rec)
            if self.tracker is not None:
                self.tracker.log(rec)
            if trainer.global_step % self.math.log_every == 0:
                log.info("step %d loss %.4f lr %.3g grad_norm %s %.0f tok/s %.2f TFLOP/s", rec["step"], rec["loss"],
                         rec["lr"], rec["grad_norm"], rec["tokens_per_s"], rec["tflops"])


def remove_incomplete(paths: RunPaths) -> None:
    """Step directories without done.json (a save or marker write killed midway) are deleted, so NeMo rewrites
    them under the same name instead of adding a '-v1' suffix."""
    root = paths.checkpoint_dir(0).parent
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


def mark_complete(paths: RunPaths, plan: TrainingPlan, context: dict[str, Any], step: int, *, reason: str) -> None:
    """The harness files of one NeMo checkpoint, the completion marker last, then checkpoints.json."""
    d = paths.checkpoint_dir(step)
    atomic_write_json(d / "context" / "harness.json", {**context, "step": step})
    atomic_write_json(d / "trainer.json", {"step": step, "samples_consumed": step * plan.global_batch_size,
                                           "reason": reason})
    atomic_write_json(d / ckpt.MARKER, {"step": step})
    mcore_train.write_checkpoints_json(paths, plan)


# ------------------------------------------------------------------------------------------------ run
def _callbacks(spec: RunSpec, plan: TrainingPlan, paths: RunPaths, train_videos: int, timing_only: bool
               ) -> list[Any]:
    math = StepMath.of(spec, plan, train_videos)
    metrics = MetricsCallback(paths, math, None if timing_only else spec.tracking, mcore_train.run_config(spec, plan))
    if timing_only:
        return [metrics]
    return [metrics, HarnessCheckpoint(paths, plan, spec.finetune.save_every, checkpoint_context(spec))]


def build(spec: RunSpec, plan: TrainingPlan, paths: RunPaths, samples: data_mod.VideoSamples, *,
          timing_only: bool = False) -> dict[str, Any]:
    """The keyword arguments of `llm.api.train` for this spec and its training plan (model, data, trainer, log,
    optim, resume). `timing_only` (the bench): no checkpoints, resume or event files, only metrics.jsonl."""
    f = spec.finetune
    cuda, bf16 = plan.cuda, plan.precision == "bf16-mixed"
    tm = spec.token_math
    config = CosmosNeMoConfig(preset_name=spec.model.preset, latent_grid=(tm.grid.t, tm.grid.h, tm.grid.w),
                              rope_length=tm.sample_length - 1, recompute=f.recompute,
                              tensor_model_parallel_size=f.tensor_parallel, bf16=bf16,
                              params_dtype=torch.bfloat16 if bf16 else torch.float32)
    model = llm.GPTModel(config, tokenizer=None)
    strategy = nl.MegatronStrategy(
        tensor_model_parallel_size=f.tensor_parallel, pipeline_model_parallel_size=1, context_parallel_size=1,
        sequence_parallel=False, pipeline_dtype=torch.bfloat16 if bf16 else torch.float32,
        ddp=DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                          use_distributed_optimizer=False),
        ckpt_async_save=False, ckpt_parallel_load=cuda)
    callbacks = _callbacks(spec, plan, paths, len(samples), timing_only)
    # max_steps alone ends training: the data module holds last_step x GBS samples (the split repeated across
    # epochs, in the mcore engine's order), and max_epochs = -1 keeps Lightning from stopping at an epoch count.
    trainer = nl.Trainer(devices=ranks_per_node(f), num_nodes=f.nodes, accelerator="gpu" if cuda else "cpu",
                         max_steps=plan.last_step, max_epochs=-1, strategy=strategy,
                         plugins=nl.MegatronMixedPrecision(precision="bf16-mixed" if bf16 else "32"),
                         num_sanity_val_steps=0, limit_val_batches=0, log_every_n_steps=f.log_every,
                         enable_progress_bar=False, logger=False, callbacks=callbacks,
                         enable_checkpointing=not timing_only,
                         gradient_clip_val=None, use_distributed_sampler=False)
    optim = nl.MegatronOptimizerModule(
        config=OptimizerConfig(optimizer="adam", lr=f.lr, min_lr=f.min_lr, weight_decay=f.weight_decay,
                               clip_grad=f.grad_clip, bf16=bf16, params_dtype=torch.bfloat16 if bf16 else torch.float32,
                               use_distributed_optimizer=False),
        lr_scheduler=HarnessLR(f.lr, f.min_lr, f.warmup_steps, f.max_steps))
    latest = None if timing_only else ckpt.latest_complete(paths)
    if latest is not None:
        ckpt.check_context(latest[1], spec)
        check_engine(latest[1])
        resume = nl.AutoResume(resume_from_path=str(latest[1]), resume_if_exists=False)
    elif spec.model.checkpoint and not timing_only:
        source = pretrained_dir(paths)
        log.info("starting from pretrained checkpoint %s", source)
        resume = nl.AutoResume(restore_config=RestoreConfig(path=str(source), load_model_state=True,
                                                            load_optim_state=False, load_artifacts=False))
    else:
        resume = None
    logger = nl.NeMoLogger(explicit_log_dir=str(paths.finetune_dir / "nemo"), use_datetime_version=False)
    return {"model": model, "data": VideoDataModule(spec, samples, plan.last_step), "trainer": trainer, "log": logger,
            "optim": optim, "resume": resume, "tokenizer": None}


def _require(spec: RunSpec) -> None:
    if _IMPORT_ERROR is not None:
        raise HarnessError(f"{spec.source}: finetune.engine = 'nemo' needs NeMo 2 (nemo_toolkit[nlp] 2.x with "
                           f"nemo.collections.llm): {_IMPORT_ERROR}; use engine 'mcore' or 'auto'")


def time_steps(spec: RunSpec, paths: RunPaths, samples: data_mod.VideoSamples) -> list[dict[str, Any]]:
    """`harness bench train --engine nemo`: the finetune stage's NeMo training (same model, strategy, optimizer,
    precision plugin and step timing) for `max_steps` steps on `samples`, without checkpoints; returns rank 0's
    metrics.jsonl records (other ranks: [])."""
    _require(spec)
    llm.api.train(**build(spec, mcore_train.training_plan(spec), paths, samples, timing_only=True))
    from harness.report import read_metrics

    return read_metrics(paths.metrics_jsonl) if paths.metrics_jsonl.is_file() else []


def run(spec: RunSpec, paths: RunPaths) -> int:
    """Train (or resume) to the last step with NeMo; returns it. Every rank calls this (Slurm/torchrun start
    `ranks_per_node` tasks per node; Lightning spawns them itself when started as one process)."""
    _require(spec)
    from harness.dataset import open_dataset

    samples = data_mod.VideoSamples(open_dataset(paths), spec.token_math, "train", where=str(paths.dataset_prefix))
    plan = mcore_train.training_plan(spec)
    note = plan.epochs_note(len(samples))
    if note:
        log.warning(note)
    latest = ckpt.latest_complete(paths)
    if latest is not None and latest[0] >= plan.last_step:
        log.info("checkpoint step %d already complete: nothing to train", latest[0])
        mcore_train.write_checkpoints_json(paths, plan)
        return latest[0]
    llm.api.train(**build(spec, plan, paths, samples))
    return plan.last_step
