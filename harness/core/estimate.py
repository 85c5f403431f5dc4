"""Estimates for `harness plan`: GPU-hours and wall time per stage, from the token math and measured throughput.

Every rate below is a figure this project measured (file and field named in `Rate.source`), scaled to the
spec by a stated rule (parameter count, pixels, tensor-parallel efficiency, the bytes a decode step reads). They
are estimates for planning a request to the scheduler, not promises: other GPUs, containers and filesystems
differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness.core import models
from harness.core import plan as plan_mod
from harness.core.plan import Plan


@dataclass(frozen=True)
class Rate:
    value: float
    unit: str
    source: str


REF_PRESET = models.PRESETS["cosmos-4b"]
"""The preset every training and generation figure below was measured with."""
REF_PARAMS = REF_PRESET.params
REF_PIXELS = 17 * 320 * 512
"""The clip geometry of the tokenize and evaluate figures."""

TRAIN = Rate(18_577, "tokens/s/GPU", "results/bench/h200/train-cosmos-4b-12800.json tokens_per_s: H200, cosmos-4b, "
                                     "TP 1, seq 12,800, bf16-mixed, MFU 0.517")
TP1_STEP = Rate(0.689, "s/step", "results/bench/h200/train-cosmos-4b-12800.json median_step_s: H200, cosmos-4b, "
                                  "seq 12,800, TP=1")
TP2_STEP = Rate(0.3818, "s/step", "results/bench/h200x2/train-cosmos-4b-12800-tp2-dp1.json median_step_s: "
                                  "2 x H200 (NVLink), cosmos-4b, seq 12,800, TP=2")
TP_EFFICIENCY = TP1_STEP.value / (2 * TP2_STEP.value)
"""Per-GPU throughput at TP 2 relative to TP 1 (0.90); assumed for every TP > 1, which is optimistic beyond 2."""
GENERATE_B1 = Rate(368.7, "tokens/s", "results/bench/h200/generate.json results[1]: batch 1, CUDA graph, cosmos-4b")
GENERATE_B8 = Rate(2_158, "tokens/s", "results/bench/h200/generate.json results[3]: batch 8, CUDA graph, cosmos-4b")
GENERATE_B32 = Rate(3_466, "tokens/s", "results/bench/h200/generate-whole-video.json results[0]: batch 32, whole "
                                       "videos (7,680 new tokens), CUDA graph, cosmos-4b")
GENERATE_B64 = Rate(5_215, "tokens/s", "results/bench/h200/generate-whole-video.json results[1]: batch 64, whole "
                                       "videos, CUDA graph, cosmos-4b (133.8 GiB peak: the auto batch on an H200)")


@dataclass(frozen=True)
class DecodePoint:
    """A measured generation: `new` tokens after `prompt` positions at `batch`, Cosmos-4B on one H200."""
    batch: int
    prompt: int
    new: int
    rate: Rate

    @property
    def bandwidth(self) -> float:
        """Bytes/s its decode steps moved (`models.decode_step_bytes` at the average attended length)."""
        step_bytes = models.decode_step_bytes(REF_PRESET, self.batch, self.prompt + self.new / 2)
        return step_bytes * self.rate.value / self.batch


GENERATE = (DecodePoint(1, 5_120, 256, GENERATE_B1), DecodePoint(8, 5_120, 256, GENERATE_B8),
            DecodePoint(32, 5_120, 7_680, GENERATE_B32), DecodePoint(64, 5_120, 7_680, GENERATE_B64))
"""Generation is bound by the bytes a decode step reads (weights once, every sequence's cached keys and values):
these points give the bandwidth reached at each batch, and a spec's rate is that bandwidth over its own step
bytes (its preset's weights and cache, its videos' attended lengths). On one H100 the model puts
Cosmos-5B-Video2World's whole videos at 93% of Cosmos-4B's rate; measured 95% (README, "Measured")."""
AUTO_BATCH = 64
"""The batch the estimate assumes infer.batch_size = 0 runs on an H200: the largest measured there. Since the
prefill goes in chunks (`harness.cosmos.batching`) the auto batch there is larger (~100, not yet measured; on an
H100 80GB it picked 58, results/bench/h100/generate-whole-video-auto.json), so the estimate errs long."""
FP8_NOTE = ("; with infer.kv_cache = fp8 at the model-dtype cache's rate and batch, so long: the fp8 cache measured "
            "1.64x the whole videos per GPU-hour on one H100 (results/bench/h100/fp8-kv/), not yet on an H200")
"""The fp8 cache's estimate stays the model-dtype cache's: its bandwidth share (70% against 79% on one H100) and
auto batch (107 against 58 there) are measured on an H100 only, and the estimate's points are H200 figures."""
TOKENIZE = Rate(35.2, "clips/s/GPU", "results/bench/h200/tokenize-dv-cuda.json harness.clips_per_s: 17x320x512, "
                                     "DV4x8x8-sized encoder, 14 decode workers")
EVALUATE = Rate(122, "pairs/s", "results/bench/h200/eval.json pairs / median_s.harness (64 / 0.523 s): 17x320x512, "
                                "H200 + 16 CPUs")


@dataclass(frozen=True)
class StageEstimate:
    stage: str
    wall_s: float | None
    """Longest task, assuming every task of the stage runs at once; None = not estimated."""
    gpu_hours: float | None
    how: str


def _model_scale(plan: Plan) -> float:
    """Training time scales with the parameter count (FLOPs per token); generation has its own model
    (`generate_rate`)."""
    return plan.spec.preset.params / REF_PARAMS


VAL_FORWARD = 1 / 3
"""A validation video's cost relative to training on it: a forward pass without the backward (~2 of a training
step's ~6 FLOPs per parameter and token) and no optimizer update."""


def validation_tokens(plan: Plan) -> float:
    """Training-token equivalents of the validation points: val_videos forward passes at each planned step (at
    most: the validation split may hold fewer videos, which planning cannot count)."""
    t = plan.training
    return len(t.validation_steps) * t.val_videos * plan.token_math.sample_length * VAL_FORWARD


def finetune(plan: Plan) -> StageEstimate:
    f, tm = plan.spec.finetune, plan.token_math
    gpus = f.gpus_per_node * f.nodes
    val = validation_tokens(plan)
    tokens = f.max_steps * f.global_batch_size * tm.sample_length + val
    if not gpus:
        return StageEstimate("finetune", None, None, "no GPUs requested: the figures are GPU figures")
    eff = TP_EFFICIENCY if f.tensor_parallel > 1 else 1.0
    rate = TRAIN.value * eff / _model_scale(plan)
    wall = tokens / (rate * gpus)
    points = len(plan.training.validation_steps)
    val_how = (f" + validation: {points} point(s) x at most {plan.training.val_videos} video(s) forward, "
               f"~1/3 of training each" if points else "")
    return StageEstimate("finetune", wall, wall * gpus / 3600,
                         f"{f.max_steps:,} steps x {f.global_batch_size * tm.sample_length:,} tokens{val_how} "
                         f"at ~{rate:,.0f} "
                         f"tokens/s/GPU on {gpus} GPU(s) ({TRAIN.source}; x {1 / _model_scale(plan):.2f} for "
                         f"{plan.spec.model.preset}'s parameters" +
                         (f"; x {eff:.2f} for TP {f.tensor_parallel}, the TP 2 / TP 1 per-GPU ratio measured "
                          f"({TP1_STEP.value} s/step on 1 H200 vs {TP2_STEP.value} on 2: results/bench/h200*), "
                          f"optimistic beyond TP 2" if eff != 1.0 else "") + ")")


def bandwidth(batch: int) -> tuple[float, str]:
    """Decode bytes/s at `batch`, linear between the measured batch sizes (clamped to the largest), with sources."""
    pts = [p for p in GENERATE if p.batch <= batch] or [GENERATE[0]]
    lo = pts[-1]
    hi = next((p for p in GENERATE if p.batch > batch), None)
    if hi is None or lo.batch == batch:
        return lo.bandwidth, lo.rate.source
    frac = (batch - lo.batch) / (hi.batch - lo.batch)
    return lo.bandwidth + (hi.bandwidth - lo.bandwidth) * frac, f"between {lo.rate.source} and {hi.rate.source}"


def generate_rate(preset: models.ModelPreset, batch: int, prompt: int, new: int) -> tuple[float, str]:
    """tokens/s generating `new` tokens after `prompt` positions at `batch`: the measured bandwidth at that batch
    over this shape's decode step bytes."""
    bw, source = bandwidth(batch)
    return batch * bw / models.decode_step_bytes(preset, batch, prompt + new / 2), source


def infer(plan: Plan) -> StageEstimate:
    spec, tm = plan.spec, plan.token_math
    i = spec.infer
    if not i.gpus_per_node:
        return StageEstimate("infer", None, None, "no GPUs requested: the figures are GPU figures")
    gen = tm.video_tokens - i.context_latent_frames * tm.grid.h * tm.grid.w
    first = plan_mod.infer_task(spec, 0)
    per_task_inputs = first.stop - first.start
    batch = max(1, min(i.batch_size or AUTO_BATCH, per_task_inputs))
    prompt = i.context_latent_frames * tm.grid.h * tm.grid.w
    rate, source = generate_rate(spec.preset, batch, prompt, gen)
    auto = "" if i.batch_size else " (auto)"
    per_task = math.ceil(per_task_inputs / batch) * gen * batch / rate
    gpus = i.gpus_per_node * i.nodes
    tasks = plan.stage("infer").tasks
    return StageEstimate("infer", per_task, per_task * gpus * tasks / 3600,
                         f"{tasks} task(s) ({len(plan.eval_steps)} checkpoint(s) x "
                         f"{plan_mod.infer_shards(i)} input shard(s)) x {per_task_inputs} video(s) x {gen:,} generated "
                         f"tokens after {prompt:,} at ~{rate:,.0f} tokens/s (batch {batch}{auto}: the decode "
                         f"bandwidth of {source}, over {spec.model.preset}'s weights and cache)" + FP8_NOTE
                         * (i.kv_cache == "fp8"))


def tokenize(plan: Plan) -> StageEstimate:
    spec = plan.spec
    shards = plan.stage("tokenize").tasks
    if not spec.tokenize.gpus_per_node:
        return StageEstimate("tokenize", None, None, "no GPUs requested: the figures are GPU figures")
    v = spec.video
    rate = TOKENIZE.value * REF_PIXELS / (v.num_frames * v.height * v.width)
    per_task = math.ceil(plan.num_inputs / shards) / rate
    return StageEstimate("tokenize", per_task, plan.num_inputs / rate / 3600,
                         f"{plan.num_inputs:,} clips in {shards:,} task(s) at ~{rate:,.1f} clips/s/GPU "
                         f"({TOKENIZE.source}; scaled by pixels a clip)")


def evaluate(plan: Plan) -> StageEstimate:
    v = plan.spec.video
    first = plan_mod.infer_task(plan.spec, 0)
    pairs = first.stop - first.start
    rate = EVALUATE.value * REF_PIXELS / (v.num_frames * v.height * v.width)
    per_task = pairs / rate
    gpus = plan.spec.evaluate.gpus_per_node * plan.spec.evaluate.nodes
    return StageEstimate("evaluate", per_task, per_task * gpus * plan.stage("evaluate").tasks / 3600 if gpus else 0.0,
                         f"{pairs} pair(s) a task at ~{rate:,.0f} pairs/s ({EVALUATE.source})")


def all_stages(plan: Plan) -> list[StageEstimate]:
    return [tokenize(plan), finetune(plan), infer(plan), evaluate(plan)]


def human_time(s: float) -> str:
    if s < 10:
        return f"{s:.1f} s"
    if s < 120:
        return f"{s:,.0f} s"
    if s < 7200:
        return f"{s / 60:,.0f} min"
    return f"{s / 3600:,.1f} h"


def lines(plan: Plan) -> list[str]:
    out = []
    for e in all_stages(plan):
        if e.wall_s is None:
            out.append(f"{e.stage}: not estimated ({e.how})")
            continue
        gpu_h = f", {e.gpu_hours:,.2f} GPU-hours" if e.gpu_hours else ""
        limit = getattr(plan.spec, e.stage).time_min * 60
        warn = f" [over its time_min of {limit // 60} min]" if e.wall_s > limit else ""
        out.append(f"{e.stage}: ~{human_time(e.wall_s)} a task{gpu_h}{warn}: {e.how}")
    return out
