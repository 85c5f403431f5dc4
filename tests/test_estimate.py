"""Estimates in `harness plan`: the rates are the committed bench figures, and the stage
times follow from the token math by the stated rules."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.core import estimate, footprint, models, plan
from harness.core import spec as spec_mod

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "results" / "bench" / "h200"


def seed(**finetune: object) -> spec_mod.RunSpec:
    s = spec_mod.load(REPO / "configs" / "cosmos-4b-dv4x8x8.toml")
    return dataclasses.replace(s, finetune=dataclasses.replace(s.finetune, **finetune)) if finetune else s


def build(s: spec_mod.RunSpec, n: int = 10_000) -> plan.Plan:
    return plan.build(s, plan.Facts(num_inputs=n, max_array_size=1001, nodes_available=4))


def test_rates_are_the_committed_bench_figures() -> None:
    train = json.loads((BENCH / "train-cosmos-4b-12800.json").read_text())
    assert train["preset"] == "cosmos-4b" and train["seq"] == 12_800 and train["precision"] == "bf16-mixed"
    assert estimate.TRAIN.value == pytest.approx(train["tokens_per_s"], rel=1e-3)
    gen = json.loads((BENCH / "generate.json").read_text())["results"]
    assert (gen[1]["batch"], gen[1]["mode"], gen[3]["batch"], gen[3]["mode"]) == (1, "graph", 8, "graph")
    assert estimate.GENERATE_B1.value == pytest.approx(gen[1]["tokens_per_s"], rel=1e-3)
    assert estimate.GENERATE_B8.value == pytest.approx(gen[3]["tokens_per_s"], rel=1e-3)
    tok = json.loads((BENCH / "tokenize-dv-cuda.json").read_text())
    assert estimate.TOKENIZE.value == pytest.approx(tok["harness"]["clips_per_s"], rel=1e-2)
    ev = json.loads((BENCH / "eval.json").read_text())
    assert estimate.EVALUATE.value == pytest.approx(ev["pairs"] / ev["median_s"]["harness"], rel=1e-2)
    whole = json.loads((BENCH / "generate-whole-video.json").read_text())["results"]
    assert [(r["batch"], r["new_tokens"]) for r in whole] == [(32, 7680), (64, 7680)]
    assert estimate.GENERATE_B32.value == pytest.approx(whole[0]["tokens_per_s"], rel=1e-3)
    assert estimate.GENERATE_B64.value == pytest.approx(whole[1]["tokens_per_s"], rel=1e-3)
    shapes = [(r["batch"], r["context_tokens"], r["new_tokens"]) for r in (gen[1], gen[3], *whole)]
    assert [(pt.batch, pt.prompt, pt.new) for pt in estimate.GENERATE] == shapes
    tp2 = json.loads((BENCH.parent / "h200x2" / "train-cosmos-4b-12800-tp2-dp1.json").read_text())
    assert estimate.TP1_STEP.value == pytest.approx(train["median_step_s"], rel=1e-3)
    assert estimate.TP2_STEP.value == pytest.approx(tp2["median_step_s"], rel=1e-3)


def test_finetune_time_from_the_token_math() -> None:
    p = build(seed(tensor_parallel=1, gpus_per_node=1, val_every=0))
    e = estimate.finetune(p)
    assert e.wall_s == pytest.approx(100 * 12_800 / estimate.TRAIN.value)
    assert e.gpu_hours == pytest.approx(e.wall_s / 3600)
    assert "100 steps x 12,800 tokens at ~18,577 tokens/s/GPU on 1 GPU(s)" in e.how
    # validation at steps 0, 50, 100 over at most 8 videos: a forward pass each, 1/3 of training a video
    v = estimate.finetune(build(seed(tensor_parallel=1, gpus_per_node=1, val_every=50, val_videos=8)))
    assert v.wall_s == pytest.approx((100 + 3 * 8 / 3) * 12_800 / estimate.TRAIN.value)
    assert "+ validation: 3 point(s) x at most 8 video(s) forward" in v.how
    p8 = build(seed(val_every=0))  # the seed: TP 8 on 8 GPUs
    e8 = estimate.finetune(p8)
    assert e8.wall_s == pytest.approx(100 * 12_800 / (estimate.TRAIN.value * estimate.TP_EFFICIENCY * 8))
    big = dataclasses.replace(seed(tensor_parallel=1, gpus_per_node=1, val_every=0),
                              model=dataclasses.replace(seed().model, preset="cosmos-12b"))
    ratio = big.preset.params / estimate.REF_PARAMS
    assert estimate.finetune(build(big)).wall_s == pytest.approx(e.wall_s * ratio)


def test_tokenize_infer_evaluate() -> None:
    p = build(seed())
    t = estimate.tokenize(p)
    assert t.wall_s == pytest.approx(100 / estimate.TOKENIZE.value)  # 10,000 clips over 100 shards
    assert t.gpu_hours == pytest.approx(10_000 / estimate.TOKENIZE.value / 3600)
    # the seed: 10,000 inputs -> test split 833 -> 7 shards of <= 125 videos per checkpoint, auto batch (64 on an
    # H200): two batches a task of 3x40x64 generated tokens (2 context latent frames of 5x40x64)
    assert p.spec.infer.max_inputs == 833 and plan.infer_shards(p.spec.infer) == 7 and p.spec.infer.batch_size == 0
    i = estimate.infer(p)
    assert i.wall_s == pytest.approx(2 * 64 * 3 * 40 * 64 / estimate.GENERATE_B64.value)
    assert i.gpu_hours == pytest.approx(i.wall_s * 5 * 7 / 3600)  # (baseline + 4 checkpoints) x 7 shards, 1 GPU each
    e = estimate.evaluate(p)
    assert e.wall_s == pytest.approx(125 / estimate.EVALUATE.value)
    fp8 = estimate.infer(build(dataclasses.replace(seed(), infer=dataclasses.replace(seed().infer, kv_cache="fp8"))))
    assert fp8.wall_s == i.wall_s and fp8.how == i.how + estimate.FP8_NOTE


def test_the_fp8_notes_ratio_is_the_committed_h100_measurement() -> None:
    d = Path(__file__).parents[1] / "results" / "bench" / "h100" / "fp8-kv"
    (fp8,), (bf16,) = (json.loads((d / f"generate-whole-video-auto-{k}.json").read_text())["results"]
                       for k in ("fp8", "model"))
    assert (fp8["batch"], bf16["batch"]) == (107, 58)
    ratio = fp8["videos_per_gpu_hour"] / bf16["videos_per_gpu_hour"]
    assert f"{ratio:.2f}x" in estimate.FP8_NOTE
    assert round(100 * fp8["decode_bandwidth_fraction"]) == 70 and round(100 * bf16["decode_bandwidth_fraction"]) == 79


def test_generation_rate_is_the_measured_bandwidth_over_a_shapes_step_bytes() -> None:
    """Each measured point is reproduced at its own shape; other shapes move the same bytes/s per batch."""
    ref = estimate.REF_PRESET
    for pt in estimate.GENERATE:
        assert estimate.generate_rate(ref, pt.batch, pt.prompt, pt.new)[0] == pytest.approx(pt.rate.value)
    b8, b32 = estimate.GENERATE[1].bandwidth, estimate.GENERATE[2].bandwidth
    assert estimate.bandwidth(20)[0] == pytest.approx((b8 + b32) / 2)
    assert estimate.bandwidth(500)[0] == estimate.GENERATE[3].bandwidth
    # a whole video attends to more cached positions than the 256-token bench: slower at the same batch
    assert estimate.generate_rate(ref, 8, 5_120, 7_680)[0] < 0.9 * estimate.GENERATE_B8.value
    # Video2World reads the cross-attention's q/out weights and its prompt's 512 keys/values on top: at whole
    # videos the KV cache dominates both, so it stays near the base model (measured on one H100: 95.2% at its
    # auto batch, results/bench/h100/v2w-vs-base/), far from the 1 / 1.14 that the parameter count would say
    v2w = models.PRESETS["cosmos-5b-v2w"]
    ratio = estimate.generate_rate(v2w, 64, 5_120, 7_680)[0] / estimate.generate_rate(ref, 64, 5_120, 7_680)[0]
    assert 0.9 < ratio < 0.96


def test_decode_bytes_against_the_checkpoint_shapes() -> None:
    """Weights a decode step reads: the checkpoint's tensors but the input embedding (and V2W's prompt K/V
    projection); 64 KiB of keys and values a cached position for Cosmos-4B (16 layers x 8 groups x 128, bf16)."""
    p = models.PRESETS["cosmos-4b"]
    # upstream's CosmosConfig4B (NVIDIA/Cosmos archived-ces2025, nemo/cosmos.py): 16 layers, hidden 4096, FFN 14,336
    # (gated: fc1 twice as wide), 32 heads of 128 over 8 query groups, q/k layernorm, 64,000-row output layer
    layer = (4096 + 2 * 8 * 128) * 4096 + 4096 * 4096 + 2 * 14_336 * 4096 + 4096 * 14_336 + 2 * 4096 + 2 * 128
    assert models.decode_weight_bytes(p) == 2 * (16 * layer + 64_000 * 4096 + 4096) == 7_503_888_384
    assert models.decode_weight_bytes(p) == 2 * (p.params - p.vocab_size * p.hidden_size)
    assert models.kv_bytes(p.num_layers, p.num_query_groups, p.kv_channels, 2) == 64 * 1024
    assert models.decode_step_bytes(p, 2, 100) == models.decode_weight_bytes(p) + 2 * 100 * 64 * 1024
    v = models.PRESETS["cosmos-5b-v2w"]
    kv_proj = v.num_layers * 2 * v.num_query_groups * v.kv_channels * v.crossattn_dim
    assert models.decode_weight_bytes(v) == 2 * (v.params - v.vocab_size * v.hidden_size - kv_proj)
    assert models.decode_step_bytes(v, 1, 0) == models.decode_weight_bytes(v) + models.PROMPT_ROWS * 64 * 1024
def test_cpu_only_stages_are_not_estimated() -> None:
    p = build(spec_mod.load(REPO / "configs" / "quickstart.toml"), 12)
    text = "\n".join(estimate.lines(p))
    assert "finetune: not estimated (no GPUs requested" in text
    assert "tokenize: not estimated" in text and "infer: not estimated" in text


def test_checkpoint_footprint() -> None:
    p = build(seed())
    ck = next(i for i in footprint.items(p) if i.what == "checkpoints")
    n = p.spec.preset.params
    # keep_optimizer = "last" (default): 4 x bf16 weights + the newest's fp32 master and two Adam moments, and
    # while a save is written the previous one's too
    assert ck.bytes == 4 * n * 2 + 2 * n * 12
    assert "keep_optimizer = last: 80.3 GB at the end; all: 224.8 GB" in ck.basis, ck.basis
    every = build(seed(keep_optimizer="all"))
    ck = next(i for i in footprint.items(every) if i.what == "checkpoints")
    assert ck.bytes == 4 * n * 14  # bf16 weights + fp32 master + two Adam moments, each of the 4


def test_plan_prints_estimates_with_their_sources(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "250", "PATH": os.environ["PATH"]}
    p = subprocess.run([sys.executable, "-m", "harness.cli", "plan", str(REPO / "configs" / "cosmos-4b-dv4x8x8.toml"),
                        "--num-inputs", "10000"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    est = [ln for ln in p.stdout.splitlines() if ln.startswith("estimate:")]
    assert [ln.split(":")[1].split()[0] for ln in est] == ["tokenize", "finetune", "infer", "evaluate", "writes"]
    assert est[4] == ("estimate: writes ~131.9 GB to run.workdir (token shards 256.2 MB; merged dataset 256.2 MB; "
                      "checkpoints 128.5 GB; generated videos 2.9 GB)")  # (baseline + 4 checkpoints) x 833 videos
    assert "train-cosmos-4b-12800.json" in est[1] and "GPU-hours" in est[1]


@pytest.mark.parametrize(("path", "batch", "fraction"), [
    ("h100/v2w-vs-base/generate-cosmos-4b.json", 1, 0.74),  # README, "Measured": the bandwidth model
    ("h100/v2w-vs-base/generate-whole-video-auto.json", 58, 0.77),
    ("h200/generate-whole-video.json", 64, 0.77),
    ("h200/generate.json", 1, 0.60)])
def test_the_bandwidth_fractions_the_readme_states(path: str, batch: int, fraction: float) -> None:
    """Bytes a decode step reads (`models.decode_step_bytes` at the average attended length) x steps/s over the
    card's HBM bandwidth, from the committed result files."""
    result = json.loads((REPO / "results" / "bench" / path).read_text())
    row = max((r for r in result["results"] if r["batch"] == batch), key=lambda r: r["tokens_per_s"])
    peak = models.peak_bandwidth_tbps(result["gpu"])
    assert peak is not None
    moved = models.decode_step_bytes(models.PRESETS[result["preset"]], batch,
                                     row["context_tokens"] + row["new_tokens"] / 2) * row["tokens_per_s"] / batch
    assert moved / (peak * 1e12) == pytest.approx(fraction, abs=0.006)


def test_video2world_data_counts_its_prompt_embeddings_and_a_listed_infer_input_counts_to_max_inputs() -> None:
    """tokenize and merge each write float32 [N, 512, crossattn_dim] embeddings beside the tokens (~2.1 MB a video
    at T5-11B's 1024: 80x the tokens), and an infer.inputs list is generated up to infer.max_inputs a checkpoint,
    not up to the training input count."""
    v2w = build(spec_mod.load(REPO / "configs" / "cosmos-5b-v2w-dv4x8x8.toml"))
    shards = next(i for i in footprint.items(v2w) if i.what == "token shards")
    tokens = 10_000 * (v2w.token_math.sample_length * footprint.TOKEN_BYTES + footprint.INDEX_BYTES_PER_DOC)
    assert shards.bytes == tokens + 10_000 * models.PROMPT_ROWS * v2w.spec.preset.crossattn_dim * 4
    assert next(i for i in footprint.items(v2w) if i.what == "merged dataset").bytes == shards.bytes
    s = seed()
    listed = build(dataclasses.replace(s, infer=dataclasses.replace(s.infer, inputs="/eval", max_inputs=1000)), 40)
    gen = next(i for i in footprint.items(listed) if i.what == "generated videos")
    assert "x 1000 videos x" in gen.basis
