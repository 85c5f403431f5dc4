"""The "nemo" finetune engine: NeMo 2 `llm.api.train` with `MegatronStrategy(TP)`, as the public Cosmos recipe
trains, over the SAME model definition as the mcore engine (`harness.cosmos.model.build_model`).

NeMo's LLM collection has no Cosmos classes, so the harness supplies `CosmosNeMoConfig` (a `GPTConfig` whose
`configure_model` builds the harness model with the spec's 3D-RoPE latent grid) and `VideoDataModule` (one sample
= one whole video, in exactly the mcore engine's order: sample j of the run is position j of
`harness.cosmos.data.global_batch`). Both engines therefore see the same batches and the same LR per step, and
both take the last step (max_steps: the training split is repeated across epochs until then), the checkpoint
steps, TP / DP / SP, the precision and the FLOPs per step from `harness.core.trainplan`, and the LR schedule, the
metrics record, the checkpoint side files and the pretrained source from `harness.stages.finetune.core`.

Checkpoints: NeMo's own `ModelCheckpoint` writes each one directly in the harness layout,
`finetune/checkpoints/step-<8 digits>/` with `weights/` (mcore torch_dist, keys `module.<mcore key>`), the
optimizer state apart in `optimizer/` (`nemo_io.OptimizerApart`) and NeMo's `context/`; after NeMo finalises a
save, the harness adds `context/harness.json`, `trainer.json` and `done.json` (the completion marker, last;
`core.mark_complete`), then removes older checkpoints' optimizer state (`finetune.keep_optimizer`) and rewrites
`checkpoints.json` (`core.after_save`). So `harness.stages.infer.load_model` reads NeMo-engine checkpoints
unchanged, and a requeued job resumes from the newest one with `done.json` and optimizer state.

Validation runs through Lightning's validation loop, as NeMo's recipes validate: `VideoDataModule.val_dataloader`
holds the first `val_videos` of the validation split in `nemo_common.validation_order` (each DP rank reads the
mcore engine's videos, padded with zero-mask samples to whole global batches), `CosmosGPTModel`'s validation steps
compute the training step's per-token loss and sum its masked terms (`ValidationSums`, as
`core.validation_loss` does), in eval mode without gradients (Lightning's loop), on the training ranks and TP
layout. The trainer validates every `val_every` steps (`val_check_interval`, `check_val_every_n_epoch=None`), at
the last step (`MetricsCallback` sets `should_stop` there), and at step 0 in the sanity pass of a fresh start. A
step's checkpoint is saved after its validation (`HarnessCheckpoint`), as in the mcore engine, so a resumed
attempt has its checkpoint's point logged and each point appears once across requeues.

The parts: `nemo_common` (what needs no NeMo: sample and validation order, step functions, checkpoint
housekeeping), `nemo_model` (the NeMo config and model, LR schedule and data module), `nemo_callbacks`
(checkpoint and metrics callbacks), `nemo_io` (the optimizer state's own folder); this module builds
`llm.api.train`'s arguments from them and runs it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from harness.core import metricslog
from harness.core.errors import HarnessError
from harness.core.paths import RunPaths
from harness.core.spec import RunSpec, ranks_per_node
from harness.core.trainplan import TrainingPlan
from harness.cosmos import checkpoint as ckpt
from harness.cosmos import data as data_mod
from harness.stages.finetune import checkpoints, core
from harness.stages.finetune.nemo_common import check_engine, ordered_sample

log = logging.getLogger(__name__)

try:
    from megatron.core.distributed import DistributedDataParallelConfig
    from nemo import lightning as nl
    from nemo.collections import llm
    from nemo.lightning.pytorch.strategies.utils import RestoreConfig
except Exception as e:  # NeMo 2 absent, broken, or NeMo 3 (speech only): the mcore engine is used instead
    _IMPORT_ERROR: Exception | None = e
else:
    _IMPORT_ERROR = None
    from harness.stages.finetune.nemo_callbacks import HarnessCheckpoint, MetricsCallback, Validation
    from harness.stages.finetune.nemo_io import OptimizerApart
    from harness.stages.finetune.nemo_model import (
        CosmosGPTModel,
        CosmosNeMoConfig,
        HarnessLR,
        ValidationData,
        VideoDataModule,
    )

__all__ = ["available", "build", "check_engine", "ordered_sample", "run", "time_steps"]


def available() -> bool:
    """NeMo 2's LLM collection imports here."""
    return _IMPORT_ERROR is None


def _callbacks(spec: RunSpec, plan: TrainingPlan, paths: RunPaths, train_videos: int, timing_only: bool,
               val: ValidationData | None) -> list[Any]:
    validation = None if val is None else Validation(plan.validation_steps, plan.last_step, val.videos)
    metrics = MetricsCallback(paths, core.StepMath.of(spec, plan, train_videos, "nemo"),
                              None if timing_only else spec.tracking, core.run_config(spec, plan), validation)
    if timing_only:
        return [metrics]
    validated = frozenset(plan.validation_steps if val is not None else ())
    return [metrics, HarnessCheckpoint(paths, plan, spec.finetune.save_every, core.checkpoint_context(spec, "nemo"),
                                       validated, spec.finetune.keep_optimizer)]

def _validation_loop(spec: RunSpec, plan: TrainingPlan, val: ValidationData | None, start_step: int
                     ) -> dict[str, Any]:
    """Lightning's validation settings: a whole pass (`limit_val_batches`) every `val_every` optimizer
    steps (one training batch is one optimizer step; `check_val_every_n_epoch=None` counts batches across
    epochs, the max_steps semantics), and step 0's as the sanity pass before the first update of a fresh start
    (Lightning validates at no start by itself, and skips the sanity pass on a resume, whose checkpoint's point
    is logged already: `HarnessCheckpoint` saves after the step's validation)."""
    if val is None:
        return {"limit_val_batches": 0, "num_sanity_val_steps": 0}
    batches = val.batches(spec.finetune, plan.data_parallel)
    return {"limit_val_batches": batches, "val_check_interval": spec.finetune.val_every,
            "check_val_every_n_epoch": None, "num_sanity_val_steps": batches if start_step == 0 else 0}


def _resume(spec: RunSpec, paths: RunPaths, timing_only: bool) -> Any:
    """Where training starts: the newest complete checkpoint with optimizer state, else the pretrained weights,
    else from scratch."""
    latest = None if timing_only else checkpoints.resume_point(paths)
    if latest is not None:
        ckpt.check_context(latest[1], spec.model.preset)
        check_engine(latest[1])
        return nl.AutoResume(resume_from_path=str(latest[1]), resume_if_exists=False)
    if spec.model.checkpoint and not timing_only:
        source = core.pretrained_dir(paths)
        log.info("starting from pretrained checkpoint %s", source)
        return nl.AutoResume(restore_config=RestoreConfig(path=str(source), load_model_state=True,
                                                          load_optim_state=False, load_artifacts=False))
    return None


def build(spec: RunSpec, plan: TrainingPlan, paths: RunPaths, samples: data_mod.VideoSamples, *,
          timing_only: bool = False, val_samples: data_mod.VideoSamples | None = None) -> dict[str, Any]:
    """The keyword arguments of `llm.api.train` for this spec and its training plan (model, data, trainer, log,
    optim, resume). `timing_only` (the bench): no checkpoints, resume or event files, only metrics.jsonl;
    `val_samples`: the validation split (None: no validation loss)."""
    f = spec.finetune
    cuda, bf16 = plan.cuda, plan.precision == "bf16-mixed"
    tm = spec.token_math
    config = CosmosNeMoConfig(preset_name=spec.model.preset, latent_grid=(tm.grid.t, tm.grid.h, tm.grid.w),
                              rope_length=tm.sample_length - 1, recompute=f.recompute,
                              tensor_model_parallel_size=plan.tensor_parallel, bf16=bf16,
                              params_dtype=torch.bfloat16 if bf16 else torch.float32)
    model = CosmosGPTModel(config, tokenizer=None)
    strategy = nl.MegatronStrategy(
        tensor_model_parallel_size=plan.tensor_parallel, pipeline_model_parallel_size=1, context_parallel_size=1,
        sequence_parallel=plan.sequence_parallel, pipeline_dtype=torch.bfloat16 if bf16 else torch.float32,
        ddp=DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                          use_distributed_optimizer=False),
        ckpt_async_save=False, ckpt_parallel_load=cuda)
    val = None if val_samples is None else ValidationData(val_samples, min(plan.val_videos, len(val_samples)))
    strategy.checkpoint_io = OptimizerApart(strategy.checkpoint_io)  # optimizer/ beside weights/, as mcore's
    callbacks = _callbacks(spec, plan, paths, len(samples), timing_only, val)
    latest = None if timing_only else checkpoints.resume_point(paths)  # where AutoResume starts (see _resume)
    # max_steps alone ends training: the data module holds last_step x GBS samples (the split repeated across
    # epochs, in the mcore engine's order), and max_epochs = -1 keeps Lightning from stopping at an epoch count.
    trainer = nl.Trainer(devices=ranks_per_node(f), num_nodes=f.nodes, accelerator="gpu" if cuda else "cpu",
                         max_steps=plan.last_step, max_epochs=-1, strategy=strategy,
                         plugins=nl.MegatronMixedPrecision(precision="bf16-mixed" if bf16 else "32"),
                         **_validation_loop(spec, plan, val, 0 if latest is None else latest[0]),
                         log_every_n_steps=f.log_every,
                         enable_progress_bar=False, logger=False, callbacks=callbacks,
                         enable_checkpointing=not timing_only, gradient_clip_val=None, use_distributed_sampler=False)
    optim = nl.MegatronOptimizerModule(
        config=core.optimizer_config(f, bf16=bf16, distributed=False),
        lr_scheduler=HarnessLR(f.lr, f.min_lr, f.warmup_steps, f.max_steps))
    resume = _resume(spec, paths, timing_only)
    logger = nl.NeMoLogger(explicit_log_dir=str(paths.nemo_log_dir), use_datetime_version=False)
    data = VideoDataModule(spec, samples, plan.last_step, val, plan.data_parallel)
    return {"model": model, "data": data, "trainer": trainer, "log": logger, "optim": optim, "resume": resume,
            "tokenizer": None}


def _require(spec: RunSpec) -> None:
    if _IMPORT_ERROR is not None:
        raise HarnessError(f"{spec.source}: finetune.engine = 'nemo' needs NeMo 2 (nemo_toolkit[nlp] 2.x with "
                           f"nemo.collections.llm): {_IMPORT_ERROR}; use engine 'mcore' or 'auto'")


def time_steps(spec: RunSpec, paths: RunPaths, samples: data_mod.VideoSamples) -> list[dict[str, Any]]:
    """`harness bench train --engine nemo`: the finetune stage's NeMo training (same model, strategy, optimizer,
    precision plugin and step timing) for `max_steps` steps on `samples`, without checkpoints; returns rank 0's
    metrics.jsonl records (other ranks: [])."""
    _require(spec)
    llm.api.train(**build(spec, core.training_plan(spec, "nemo"), paths, samples, timing_only=True))

    return metricslog.by_step(paths.metrics_jsonl)


def run(spec: RunSpec, paths: RunPaths) -> int:
    """Train (or resume) to the last step with NeMo; returns it. Every rank calls this (Slurm/torchrun start
    `ranks_per_node` tasks per node; Lightning spawns them itself when started as one process)."""
    _require(spec)
    from harness.cosmos.parallel import share_cpu_cores
    from harness.stages.dataset import open_dataset

    share_cpu_cores(ranks_per_node(spec.finetune))

    dataset = open_dataset(paths)
    samples = data_mod.VideoSamples(dataset, spec.token_math, "train", where=str(paths.dataset_prefix))
    plan = core.training_plan(spec, "nemo")
    val_samples = core.validation_samples(spec, plan, dataset, str(paths.dataset_prefix))
    note = plan.epochs_note(len(samples))
    if note:
        log.warning(note)
    latest = checkpoints.latest_complete(paths)
    if latest is not None and latest[0] >= plan.last_step:
        log.info("checkpoint step %d already complete: nothing to train", latest[0])
        core.after_save(paths, plan, latest[0], spec.finetune.keep_optimizer)
        return latest[0]
    llm.api.train(**build(spec, plan, paths, samples, val_samples=val_samples))
    return plan.last_step
