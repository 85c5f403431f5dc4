"""The "mcore" finetune engine: a lean megatron-core training loop (the schedules in megatron.core.pipeline_parallel
hard-code CUDA; this loop has no pipeline parallelism and so needs none of them).

One rank per GPU (or per TP shard on CPU); TP within a node, DP across. mcore DDP (distributed optimizer when
DP > 1 on GPU), bf16 compute with fp32 master weights and Adam state, warm-up + cosine (or constant) LR, grad
clipping. The last step, checkpoint steps, DP size, gradient accumulation, precision and FLOPs per step come from
`harness.core.trainplan` (shared with the NeMo engine, the plan and the report). Checkpoints at the planned steps and
on SIGUSR2/SIGTERM; resume from the newest COMPLETE checkpoint; metrics.jsonl
holds each step exactly once across requeues.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

from harness.core import footprint, metricslog, tokens, trainplan
from harness.core.atomic import atomic_write_json
from harness.core.errors import HarnessError
from harness.core.paths import RunPaths
from harness.core.spec import FinetuneSection, RunSpec
from harness.core.trainplan import TrainingPlan
from harness.cosmos import checkpoint as ckpt
from harness.cosmos import data as data_mod
from harness.cosmos import parallel
from harness.cosmos.layout import resolve_pretrained
from harness.cosmos.model import build_model
from harness.cosmos.signals import StopSignal
from harness.report import tracking
from harness.stages.finetune import checkpoints

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
    dtype: torch.dtype
    device: torch.device

    @property
    def last_step(self) -> int:
        return self.plan.last_step


def lr_at(f: FinetuneSection, step: int) -> float:
    """LR of 0-based optimizer step `step`: linear warm-up, then cosine from lr to min_lr (constant if equal)."""
    if f.warmup_steps and step < f.warmup_steps:
        return f.lr * (step + 1) / f.warmup_steps
    if f.min_lr == f.lr:
        return f.lr
    progress = min(1.0, (step - f.warmup_steps) / max(1, f.max_steps - f.warmup_steps))
    return f.min_lr + 0.5 * (f.lr - f.min_lr) * (1.0 + math.cos(math.pi * progress))


def training_plan(spec: RunSpec) -> TrainingPlan:
    """This rank's training plan (CUDA as the rank sees it), with the warnings a user should read in the log."""
    plan = trainplan.of(spec, cuda=torch.cuda.is_available())
    if plan.precision != spec.finetune.precision:
        log.warning("finetune.precision = %r needs CUDA; training in %s on CPU", spec.finetune.precision,
                    plan.precision)
    return plan


def build_optimizer(model: Any, f: FinetuneSection, *, bf16: bool, distributed: bool) -> Any:
    conf = OptimizerConfig(optimizer="adam", lr=f.lr, min_lr=f.min_lr, weight_decay=f.weight_decay,
                           clip_grad=f.grad_clip, bf16=bf16, params_dtype=torch.bfloat16 if bf16 else torch.float32,
                           use_distributed_optimizer=distributed)
    optimizer = get_megatron_optimizer(conf, [model])
    _fuse_adam(optimizer)
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
    """Build model + optimizer on this rank; resume from the newest complete checkpoint, else start from the
    pretrained checkpoint (if any), else random init."""
    f = spec.finetune
    parallel.init(f.tensor_parallel, seed=spec.run.seed, gpus_requested=f.gpus_per_node)
    plan = training_plan(spec)
    if parallel.dp_size() != plan.data_parallel:
        raise HarnessError(f"{spec.source}: {parallel.dp_size()} data-parallel ranks were started, but the plan "
                           f"has {plan.data_parallel} (finetune.gpus_per_node x nodes / tensor_parallel)")
    cuda, bf16 = plan.cuda, plan.precision == "bf16-mixed"
    tm = spec.token_math
    t0 = time.perf_counter()
    model = build_model(spec.preset, tm.grid, tp=f.tensor_parallel, precision=plan.precision, recompute=f.recompute,
                        seq_len=tm.sample_length - 1, sequence_parallel=plan.sequence_parallel)
    log.info("model built in %.1fs", time.perf_counter() - t0)
    latest = checkpoints.latest_complete(paths)
    if latest is None and spec.model.checkpoint:
        source = pretrained_dir(spec)
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
    return Trainer(spec, paths, ddp, optimizer, samples, step, plan, torch.bfloat16 if bf16 else torch.float32,
                   device)


def pretrained_dir(spec: RunSpec) -> Path:
    """model.checkpoint as a local dir or a staged HF repo, resolved to its NeMo 2 checkpoint folder (itself or
    its `nemo/` folder; weights under `weights/` or in the folder: `layout.resolve_pretrained`)."""
    src = spec.model.checkpoint
    local = Path(src).expanduser()
    if local.is_dir():
        return resolve_pretrained(local)
    from huggingface_hub import snapshot_download

    try:
        snap = Path(snapshot_download(src, revision=spec.assets.revisions.get(src), local_files_only=True))
    except Exception as e:
        raise HarnessError(f"{spec.source}: model.checkpoint = {src!r}: not a local dir and not in the HF cache "
                           f"(run stage-assets first): {e.__class__.__name__}") from None
    return resolve_pretrained(snap)


def train_step(t: Trainer) -> dict[str, float | None]:
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
        mask = batch["loss_mask"]
        loss = (per_token * mask).sum() / mask.sum()
        (loss / accum).backward()
        loss_sum += loss.detach().double()
    # DP all-reduce + sum over TP of the qk-layernorm grads (per-head norms) and, with sequence parallelism, of
    # the grads of the norms on the residual stream (params marked `sequence_parallel`)
    finalize_model_grads([t.model])
    lr = lr_at(f, t.step)
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
    return {"step": t.step, "loss": float(loss_sum) / (accum * dp), "lr": lr,
            "grad_norm": None if grad_norm is None else float(grad_norm),
            "tokens_per_s": t.plan.tokens_per_step / dt, "tflops": t.plan.flops_per_step / dt / world / 1e12,
            "step_time_s": dt, "epoch": (t.step * f.global_batch_size) // len(t.samples), "time": time.time()}


def _dp_group() -> Any:
    from megatron.core import parallel_state

    return parallel_state.get_data_parallel_group()


def save(t: Trainer, reason: str) -> None:
    tm = t.spec.token_math
    context = {"preset": t.spec.model.preset, "grid": [tm.grid.t, tm.grid.h, tm.grid.w],
               "compression": list(tm.compression), "tensor_parallel": t.spec.finetune.tensor_parallel,
               "step": t.step, "engine": "mcore", "recipe": t.spec.run.recipe}
    trainer = {"step": t.step, "samples_consumed": t.step * t.spec.finetune.global_batch_size, "reason": reason}
    start = time.perf_counter()
    need = footprint.checkpoint_bytes(t.spec.preset.params, t.plan.precision)
    ckpt.save(t.paths.checkpoint_dir(t.step), t.model, t.optimizer, trainer=trainer, context=context,
              need_bytes=need, device=t.device)
    if parallel.is_main():
        write_checkpoints_json(t.paths, t.plan)
        log.info("checkpoint step %d (%s) in %.1fs", t.step, reason, time.perf_counter() - start)


def write_checkpoints_json(paths: RunPaths, plan: TrainingPlan) -> None:
    """`steps`: completed checkpoints among the planned ones (what infer/evaluate arrays index); `all`: every
    complete checkpoint, including ones written on a preemption signal; `planned` and `last_step`: the training
    plan's (both engines write this file)."""
    done = checkpoints.complete_steps(paths)
    planned = set(plan.checkpoint_steps)
    atomic_write_json(paths.checkpoints_json, {"steps": [s for s in done if s in planned], "all": done,
                                               "planned": sorted(planned), "last_step": plan.last_step})


def train(spec: RunSpec, paths: RunPaths, dataset: data_mod.TokenSource, *, where: str = "dataset") -> int:
    """Run (or resume) finetuning to the last step; returns it. Every rank calls this. On SIGUSR2/SIGTERM:
    checkpoint, then `StopSignal.exit` (requeue through submitit, or raise `Preempted`)."""
    stop = StopSignal()
    stop.install()
    tracker: tracking.TrainTracker | None = None
    try:
        t = setup(spec, paths, dataset, where=where)
        f = spec.finetune
        planned = set(t.plan.checkpoint_steps)
        if parallel.is_main():
            metricslog.truncate(paths.metrics_jsonl, t.step)
            tracker = tracking.TrainTracker.open(spec.tracking, paths, t.step, run_config(spec, t.plan))
        parallel.barrier()
        for w in tokens.warnings(spec.token_math):
            log.warning(w)
        while t.step < t.last_step:
            rec = train_step(t)
            if parallel.is_main():
                metricslog.append(paths.metrics_jsonl, rec)
                if tracker is not None:
                    tracker.log(rec)
                if t.step % f.log_every == 0 or t.step == t.last_step:
                    log.info("step %d loss %.4f lr %.3g grad_norm %s %.0f tok/s %.1f TFLOP/s", t.step, rec["loss"],
                             rec["lr"], rec["grad_norm"], rec["tokens_per_s"], rec["tflops"])
            signum = stop.agreed(t.device)
            if t.step in planned or t.step == t.last_step or signum:
                save(t, "signal" if signum and t.step not in planned else "schedule")
            if signum:
                stop.exit(signum, t.step)
        if not ckpt.is_complete(paths.checkpoint_dir(t.step)):
            save(t, "final")
        elif parallel.is_main():
            write_checkpoints_json(paths, t.plan)
        parallel.barrier()
        return t.step
    finally:
        if tracker is not None:
            tracker.close()
        stop.restore()


def run_config(spec: RunSpec, plan: TrainingPlan) -> dict[str, Any]:
    """What a W&B run records as its config: the run's plan numbers (both engines)."""
    return {"preset": spec.model.preset, "recipe": spec.run.recipe, "global_batch_size": plan.global_batch_size,
            "tokens_per_step": plan.tokens_per_step, "last_step": plan.last_step, "lr": spec.finetune.lr,
            "tensor_parallel": spec.finetune.tensor_parallel, "data_parallel": plan.data_parallel}
