"""The "mcore" finetune engine: a lean megatron-core training loop (the schedules in megatron.core.pipeline_parallel
hard-code CUDA; this loop has no pipeline parallelism and so needs none of them).

One rank per GPU (or per TP shard on CPU); TP within a node, DP across. mcore DDP (distributed optimizer when
DP > 1 on GPU), bf16 compute with fp32 master weights and Adam state, warm-up + cosine (or constant) LR, grad
clipping. The last step, checkpoint steps, TP / DP / SP, gradient accumulation, precision and FLOPs per step come
from `harness.core.trainplan` (shared with the NeMo engine, the plan and the report); the LR schedule, the
metrics record, the checkpoint side files, the pretrained source and the tracker from
`harness.stages.finetune.core`, which the NeMo engine uses too. Checkpoints at the planned steps and on
SIGUSR2/SIGTERM; resume from the newest COMPLETE checkpoint; metrics.jsonl holds each step exactly once across
requeues.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import get_megatron_optimizer

from harness.core import footprint, metricslog, tokens
from harness.core.errors import HarnessError
from harness.core.paths import RunPaths
from harness.core.spec import FinetuneSection, RunSpec
from harness.core.trainplan import TrainingPlan
from harness.cosmos import checkpoint as ckpt
from harness.cosmos import data as data_mod
from harness.cosmos import parallel
from harness.cosmos.model import build_model
from harness.cosmos.signals import StopSignal
from harness.lib.tracking import TrainTracker
from harness.stages.finetune import checkpoints, clipfuse, core

log = logging.getLogger(__name__)


@dataclass
class Trainer:
    spec: RunSpec
    paths: RunPaths
    model: Any
    """DDP-wrapped CosmosModel."""
    optimizer: Any
    samples: data_mod.VideoSamples
    step: int
    """Optimizer steps completed."""
    plan: TrainingPlan
    math: core.StepMath
    dtype: torch.dtype
    device: torch.device
    val_samples: data_mod.VideoSamples | None
    """The validation split (None: validation off or no validation videos)."""

    @property
    def last_step(self) -> int:
        return self.plan.last_step


def build_optimizer(model: Any, f: FinetuneSection, *, bf16: bool, distributed: bool) -> Any:
    optimizer = get_megatron_optimizer(core.optimizer_config(f, bf16=bf16, distributed=distributed), [model])
    _fuse_adam(optimizer)
    clipfuse.attach(optimizer)
    return optimizer


def _fuse_adam(optimizer: Any) -> None:
    """Without Apex/TE, megatron-core falls back to torch's AdamW in its multi-tensor ("foreach") form; torch's
    fused kernel (CUDA and CPU) does the same update in one pass over the fp32 master weights and Adam state
    (~112 GB of traffic per step for a 4B model instead of several passes)."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if not isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)):
            continue
        for group in inner.param_groups:
            group["fused"], group["foreach"] = True, False
        inner.defaults["fused"], inner.defaults["foreach"] = True, False


def wrap_ddp(model: Any, *, distributed: bool) -> DistributedDataParallel:
    ddp_conf = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                             use_distributed_optimizer=distributed)
    return DistributedDataParallel(model.config, ddp_conf, model)


def setup(spec: RunSpec, paths: RunPaths, dataset: data_mod.TokenSource, *, where: str = "dataset") -> Trainer:
    """Build model + optimizer on this rank; resume from the newest complete checkpoint with optimizer state
    (`checkpoints.resume_point`), else start from the pretrained checkpoint (if any), else random init."""
    f = spec.finetune
    plan = core.training_plan(spec, "mcore")
    parallel.init(plan.tensor_parallel, seed=spec.run.seed, gpus_requested=f.gpus_per_node)
    if parallel.dp_size() != plan.data_parallel:
        raise HarnessError(f"{spec.source}: {parallel.dp_size()} data-parallel ranks were started, but the plan "
                           f"has {plan.data_parallel} (finetune.gpus_per_node x nodes / tensor_parallel)")
    cuda, bf16 = plan.cuda, plan.precision == "bf16-mixed"
    tm = spec.token_math
    t0 = time.perf_counter()
    model = build_model(spec.preset, tm.grid, tp=plan.tensor_parallel, precision=plan.precision, recompute=f.recompute,
                        seq_len=tm.sample_length - 1, sequence_parallel=plan.sequence_parallel)
    log.info("model built in %.1fs", time.perf_counter() - t0)
    latest = checkpoints.resume_point(paths)
    if latest is None and spec.model.checkpoint:
        source = core.pretrained_dir(paths)
        t0 = time.perf_counter()
        ckpt.load_model(model, source)
        log.info("started from pretrained checkpoint %s (loaded in %.1fs)", source, time.perf_counter() - t0)
    distributed = cuda and parallel.dp_size() > 1
    ddp = wrap_ddp(model, distributed=distributed)
    optimizer = build_optimizer(ddp, f, bf16=bf16, distributed=distributed)
    step = 0
    if latest is not None:
        ckpt.check_context(latest[1], spec.model.preset)
        t0 = time.perf_counter()
        state = ckpt.load_training(ddp, optimizer, latest[1])
        step = int(state["step"])
        log.info("resumed from %s (step %d) in %.1fs", latest[1], step, time.perf_counter() - t0)
    samples = data_mod.VideoSamples(dataset, tm, "train", where=where,
                                    context_dim=spec.preset.crossattn_dim if spec.video2world else None)
    # Upstream reaches max_steps the same way (megatron samples max_steps x GBS); see TrainingPlan.last_step.
    note = plan.epochs_note(len(samples))
    if note:
        log.warning(note)
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    math = core.StepMath.of(spec, plan, len(samples), "mcore")
    return Trainer(spec, paths, ddp, optimizer, samples, step, plan, math, torch.bfloat16 if bf16 else torch.float32,
                   device, core.validation_samples(spec, plan, dataset, where))


def train_step(t: Trainer) -> dict[str, Any]:
    """One optimizer step (all micro-batches); returns the metrics of this step."""
    f = t.spec.finetune
    dp, dp_rank, accum = t.plan.data_parallel, parallel.dp_rank(), t.plan.grad_accumulation
    t.model.zero_grad_buffer()
    t.optimizer.zero_grad()
    start = time.perf_counter()
    loss_sum = torch.zeros((), dtype=torch.float64, device=t.device)
    for micro in range(accum):
        ids = data_mod.micro_batch(t.step, micro, gbs=f.global_batch_size, mbs=f.micro_batch_size, dp=dp,
                                   dp_rank=dp_rank, n=len(t.samples), seed=t.spec.run.seed)
        batch = data_mod.collate([t.samples.sample(i) for i in ids], t.device, t.dtype)
        per_token = t.model(batch["tokens"], labels=batch["labels"], context=batch.get("context"))
        loss = core.masked_loss(per_token, batch["loss_mask"])
        (loss / accum).backward()
        loss_sum += loss.detach().double()
    # DP all-reduce + sum over TP of the qk-layernorm grads (per-head norms) and, with sequence parallelism, of
    # the grads of the norms on the residual stream (params marked `sequence_parallel`)
    finalize_model_grads([t.model])
    lr = core.lr_at(f, t.step)
    for group in t.optimizer.param_groups:
        group["lr"] = lr
    ok, grad_norm, _ = t.optimizer.step()
    if not ok:
        log.warning("step %d: optimizer skipped the update (non-finite gradients)", t.step + 1)
    if dist.is_initialized():
        dist.all_reduce(loss_sum, group=_dp_group())
    if t.device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - start
    t.step += 1
    world = dist.get_world_size() if dist.is_initialized() else 1
    return t.math.record(t.step, float(loss_sum) / (accum * dp), lr, None if grad_norm is None else float(grad_norm),
                         dt, world)


def _dp_group() -> Any:
    from megatron.core import parallel_state

    return parallel_state.get_data_parallel_group()


def validate(t: Trainer, tracker: TrainTracker | None) -> None:
    """The validation loss of the current weights, logged on rank 0 (all ranks compute it). Called before the
    step's checkpoint is saved, so a resume from that checkpoint finds it logged (`metricslog.truncate`)."""
    if t.val_samples is None or t.step not in t.plan.validation_steps:
        return
    t.model.eval()
    try:
        loss, videos = core.validation_loss(
            lambda b: t.model(b["tokens"], labels=b["labels"], context=b.get("context")), t.val_samples, t.plan,
            micro_batch_size=t.spec.finetune.micro_batch_size, dp_rank=parallel.dp_rank(),
            dp_group=_dp_group() if dist.is_initialized() else None, device=t.device, dtype=t.dtype)
    finally:
        t.model.train()
    if parallel.is_main():
        rec = core.validation_record(t.step, loss, videos, "mcore")
        metricslog.append(t.paths.metrics_jsonl, rec)
        if tracker is not None:
            tracker.log(rec)


def save(t: Trainer, reason: str) -> None:
    context = {**core.checkpoint_context(t.spec, "mcore"), "step": t.step}
    start = time.perf_counter()
    need = footprint.checkpoint_bytes(t.spec.preset.params, t.plan.precision)
    ckpt.save(t.paths.checkpoint_dir(t.step), t.model, t.optimizer, trainer=core.trainer_state(t.plan, t.step, reason),
              context=context, need_bytes=need, device=t.device)
    if parallel.is_main():  # ckpt.save ends with a barrier: every rank is past this checkpoint
        core.after_save(t.paths, t.plan, t.step, t.spec.finetune.keep_optimizer)
        log.info("checkpoint step %d (%s) in %.1fs", t.step, reason, time.perf_counter() - start)


def train(spec: RunSpec, paths: RunPaths, dataset: data_mod.TokenSource, *, where: str = "dataset") -> int:
    """Run (or resume) finetuning to the last step; returns it. Every rank calls this. On SIGUSR2/SIGTERM:
    checkpoint, then `StopSignal.exit` (requeue through submitit, or raise `Preempted`)."""
    stop = StopSignal()
    stop.install()
    tracker: TrainTracker | None = None
    try:
        t = setup(spec, paths, dataset, where=where)
        f = spec.finetune
        planned = set(t.plan.checkpoint_steps)
        if parallel.is_main():
            metricslog.truncate(paths.metrics_jsonl, t.step)
            tracker = core.open_tracker(spec, paths, t.plan, t.step)
        parallel.barrier()
        for w in tokens.warnings(spec.token_math):
            log.warning(w)
        if t.step == 0:
            validate(t, tracker)
        while t.step < t.last_step:
            rec = train_step(t)
            if parallel.is_main():
                metricslog.append(paths.metrics_jsonl, rec)
                if tracker is not None:
                    tracker.log(rec)
                if t.step % f.log_every == 0 or t.step == t.last_step:
                    t.math.log_line(rec)
            validate(t, tracker)
            signum = stop.agreed(t.device)
            if t.step in planned or t.step == t.last_step or signum:
                save(t, "signal" if signum and t.step not in planned else "schedule")
            if signum:
                stop.exit(signum, t.step)
        if not ckpt.is_complete(paths.checkpoint_dir(t.step)):
            save(t, "final")
        elif parallel.is_main():
            core.after_save(paths, t.plan, t.step, f.keep_optimizer)
        parallel.barrier()
        return t.step
    finally:
        if tracker is not None:
            tracker.close()
        stop.restore()
