"""Infer stage: continue evaluation clips with one fine-tuned checkpoint; the task index names a checkpoint and
a shard of the input list (`harness.core.plan.infer_task`: task = checkpoint * shards + shard; one shard, the
default, is the whole list).

Per input: the clip as the tokenize stage defines it (first T frames, resize-to-cover + center crop), its first
`context_latent_frames` latent frames (1 for an image) as context, the rest of the latent grid generated with
a KV cache, decoded with the DV decoder (no diffusion decoder), written as `<name>.mp4` at video.fps with the
alignment sidecar `<name>.json` (see harness.lib.media.Sidecar): generated frame g stands for source
frame g, and the first 1 + (c-1)*t frames reproduce the context. Inputs come from infer.inputs (a directory of
videos/images, or a Video2World jsonl) or, when empty, from the test split of the run's merged dataset (its
context tokens are read from the dataset, so no re-encoding); `harness.stages.infer_inputs` lists them once per
run, so every shard and every resume sees the same assignment and the same names. Each task writes its manifest
(`RunPaths.infer_manifest`) last: the names it owns, which is what its evaluate task scores.

Step 0, where infer.baseline is on (`trainplan.eval_steps`), is the baseline: the weights before post-training
(`weights`), generated from the same inputs with the same seeds as every checkpoint. Its tasks are the first of
the same array, after finetune like the rest: it needs only merge's test split, but one array with one
dependency keeps resume, status and the evaluate pairing (aftercorr) as they are, for a task of minutes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch

from harness.core.atomic import atomic_write_json
from harness.core.errors import HarnessError
from harness.core.paths import RunPaths
from harness.core.tokens import BOV_ID
from harness.lib.dvtok import Decoder, Encoder
from harness.lib.heap import quiet_imports
from harness.lib.media import Sidecar, sidecar_path
from harness.stages.infer_inputs import InferInput, list_inputs

if TYPE_CHECKING:
    from harness.core.plan import InferTask
    from harness.core.spec import RunSpec
    from harness.cosmos.model import CosmosModel

log = logging.getLogger("harness.infer")


# ------------------------------------------------------------------------------------- tokenizer
def load_tokenizer(paths: RunPaths, device: torch.device) -> tuple[Encoder, Decoder]:
    """The staged DV encoder and decoder on the generation device, loaded and run as the tokenize stage does."""
    from harness.stages.staged import resolve

    return (Encoder.load(resolve(paths, "encoder") / "encoder.jit", device),
            Decoder.load(resolve(paths, "decoder") / "decoder.jit", device))


# ------------------------------------------------------------------------------------- generation
def context_latents(spec: RunSpec, item: InferInput) -> int:
    return 1 if item.image else spec.infer.context_latent_frames


def reference_frames(spec: RunSpec, item: InferInput) -> tuple[int | None, ...]:
    """Generated frame g continues the clip from its start, so it stands for source frame g; an image has
    ground truth for frame 0 only."""
    t = spec.video.num_frames
    return (0,) + (None,) * (t - 1) if item.image else tuple(range(t))


def batches(spec: RunSpec, items: list[InferInput], size: int) -> Iterator[list[InferInput]]:
    """Inputs with the same context length together, at most `size` per batch."""
    for c in sorted({context_latents(spec, it) for it in items}):
        group = [it for it in items if context_latents(spec, it) == c]
        for s in range(0, len(group), size):
            yield group[s:s + size]


def batch_size(spec: RunSpec, model: Any, n_items: int, device: torch.device) -> int:
    """infer.batch_size, or (0 = auto) the largest batch the free memory holds; the same on every TP rank."""
    from harness.cosmos import parallel
    from harness.cosmos.batching import max_batch

    if spec.infer.batch_size:
        return spec.infer.batch_size
    tm = spec.token_math
    n_ctx = spec.infer.context_latent_frames * tm.grid.h * tm.grid.w
    fits = max_batch(model, tm.grid.tokens + 1, n_ctx, free_memory(device), fp8=spec.infer.kv_cache == "fp8")
    size = parallel.min_across_ranks(fits, device)
    log.info("infer.batch_size = 0 (auto): batches of %d (%d inputs, %s KV cache)", min(size, n_items), n_items,
             spec.infer.kv_cache)
    return max(1, min(size, n_items))


def free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def readable(spec: RunSpec, batch: list[InferInput], skipped: dict[str, str]
             ) -> tuple[list[InferInput], dict[str, np.ndarray]]:
    """The batch's inputs whose context frames decode, with those frames (name -> clip); an input that does not
    decode (empty, cut short, no video stream) goes into `skipped` with why, as tokenize skips it: one bad file
    costs its own video, not the task's shard at every checkpoint. Every TP rank decides alike."""
    from harness.lib.video import ClipShape, VideoError, load_clip

    tm, v = spec.token_math, spec.video
    shape = ClipShape(tm.context_frames(context_latents(spec, batch[0])), v.height, v.width, v.resize)
    kept, clips = [], {}
    for it in batch:
        try:
            if it.context_tokens is None:
                clips[it.name] = load_clip(it.source, shape)
            kept.append(it)
        except VideoError as e:
            skipped[it.name] = str(e)
            log.warning("infer: skipping %s: %s", it.source, e)
    return kept, clips


def _context_tokens(spec: RunSpec, batch: list[InferInput], clips: dict[str, np.ndarray],
                    encoder: Encoder) -> torch.Tensor:
    tm, v = spec.token_math, spec.video
    c = context_latents(spec, batch[0])
    rows = []
    to_encode = [it for it in batch if it.context_tokens is None]
    if to_encode:
        idx = encoder.encode(np.stack([clips[it.name] for it in to_encode]))
        want = (len(to_encode), c, tm.grid.h, tm.grid.w)
        if tuple(idx.shape) != want:
            raise HarnessError(f"tokenizer.encoder: {tm.context_frames(c)}x{v.height}x{v.width} frames encode to "
                               f"{list(idx.shape)[1:]} latents, expected {list(want)[1:]} for compression "
                               f"{list(spec.tokenizer.compression)}")
        encoded = iter(idx.reshape(len(to_encode), -1))
    for it in batch:
        rows.append(torch.as_tensor(it.context_tokens, dtype=torch.int64, device=encoder.device)
                    if it.context_tokens is not None else next(encoded))
    return torch.stack(rows)


def _prompt_context(spec: RunSpec, batch: list[InferInput], text_encoder: Any, device: torch.device,
                    dtype: torch.dtype) -> dict[str, Any]:
    """Video2World: the T5 embeddings (from the dataset, or encoded from the jsonl prompts) as the training data
    path builds them (`harness.cosmos.data.context_batch`): all 512 rows, padding rows zero, no mask."""
    if not spec.video2world:
        return {}
    from harness.cosmos.data import context_batch

    if any(it.prompt_embedding is None for it in batch):
        from harness.lib import prompts

        emb, _ = prompts.encode(text_encoder, [it.prompt or "" for it in batch])
        return {"context": context_batch(list(emb), device, dtype)}
    return {"context": context_batch([it.prompt_embedding for it in batch if it.prompt_embedding is not None],
                                      device, dtype)}


def _text_encoder(spec: RunSpec, items: list[InferInput], paths: RunPaths, device: torch.device) -> Any:
    if not spec.video2world or all(it.prompt_embedding is not None for it in items):
        return None
    from harness.lib import prompts
    from harness.stages.staged import resolve

    return prompts.load(resolve(paths, "text_encoder"), device, spec.model.text_encoder_dtype)


def run(spec: RunSpec, task: int, paths: RunPaths) -> None:
    """infer.tensor_parallel ranks generate together (one per GPU; gloo ranks on CPU); rank 0 writes."""
    from harness.stages import ranks

    ranks.run(spec, task, paths, want=spec.infer.tensor_parallel, nodes=1, target=run_rank,
              what="infer (infer.tensor_parallel)")


def load_model(ckpt: Path | None, spec: RunSpec, tp: int, *, seq_len: int | None = None) -> "CosmosModel":
    """The run's model with a checkpoint's weights (None: initialised at random from run.seed), on this rank of
    a `tp`-way group (eval mode)."""
    from harness.cosmos.checkpoint import load_for_inference

    return load_for_inference(ckpt, spec.preset, spec.token_math.grid, tp, seed=spec.run.seed,
                              gpus_requested=spec.infer.gpus_per_node, seq_len=seq_len)


def weights(spec: RunSpec, paths: RunPaths, step: int) -> Path | None:
    """Where step `step`'s weights are: a finetune save, or for step 0 (the baseline) the weights before
    post-training: the staged pretrained checkpoint finetune starts from, or None (a random initialisation
    from run.seed) where model.checkpoint is ''."""
    if step == 0:
        if not spec.model.checkpoint:
            return None
        from harness.cosmos.layout import resolve_pretrained
        from harness.stages.staged import resolve

        return resolve_pretrained(resolve(paths, "checkpoint"))  # what finetune starts from (its pretrained_dir)
    ckpt = paths.checkpoint_dir(step)
    if not ckpt.is_dir():
        raise HarnessError(f"{ckpt}: no checkpoint for step {step}; did the finetune stage save it?")
    return ckpt


def run_rank(spec: RunSpec, task: int, paths: RunPaths) -> None:
    with quiet_imports():
        from harness.core.plan import infer_task
        from harness.cosmos import parallel
        from harness.cosmos.generate import GenStats, Sampling, StaticKVCache, generate

    t = infer_task(spec, task)
    step = t.step
    out_dir = paths.infer_dir(step)
    items = list_inputs(spec, paths, t.start, t.stop)
    todo = [it for it in items if not _written(out_dir, it)]
    log.info("infer[%d] step %d shard %d/%d (inputs %d-%d): %d inputs, %d to generate", task, step, t.shard,
             t.shards, t.start, t.stop - 1, len(items), len(todo))
    manifest = paths.infer_manifest(step, t.key)
    if not todo:
        if not manifest.is_file():
            _write_manifest(manifest, t, items, [], {"generated": 0})
        return
    model = load_model(weights(spec, paths, step), spec, spec.infer.tensor_parallel)
    dtype, device = next(model.parameters()).dtype, next(model.parameters()).device
    parallel.barrier()  # every rank has decided `todo` before rank 0 writes anything
    encoder, decoder = load_tokenizer(paths, device)
    text_encoder = _text_encoder(spec, todo, paths, device)
    tm, i = spec.token_math, spec.infer
    bov = 1 if spec.video2world else 0
    cache = StaticKVCache(len(model.decoder.layers), tm.grid.tokens + bov, fp8=i.kv_cache == "fp8")
    records: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    # batches of the whole assignment, as the first attempt made them: a resumed task gives each input the batch,
    # and so the seed and the random draws, it had; a batch whose outputs are all written is passed over
    for k, batch in enumerate(batches(spec, items, batch_size(spec, model, len(items), device))):
        if all(_written(out_dir, it) for it in batch):
            continue
        batch, clips = readable(spec, batch, skipped)
        if not batch:
            continue
        prompt = _context_tokens(spec, batch, clips, encoder)
        n_ctx = prompt.shape[1]
        if bov:
            prompt = torch.cat([torch.full((len(batch), 1), BOV_ID, device=device, dtype=torch.int64), prompt], 1)
        stats = GenStats()
        sampling = Sampling(i.temperature, i.top_p, spec.run.seed + 1_000_003 * step + 10_007 * t.shard + k)
        new = generate(model, prompt, tm.grid.tokens - n_ctx, sampling, cache=cache, stats=stats,
                       **_prompt_context(spec, batch, text_encoder, device, dtype))
        parallel.check_identical(new, "generated tokens")
        grid = torch.cat([prompt[:, bov:], new], 1).reshape(len(batch), tm.grid.t, tm.grid.h, tm.grid.w)
        records.append({"batch": len(batch), "new_tokens": stats.new_tokens + 1, "prefill_s": stats.prefill_s,
                        "decode_s": stats.decode_s, "tokens_per_s": stats.tokens_per_s})
        if not parallel.is_main():
            continue
        _write_outputs(spec, out_dir, batch, decoder.decode(grid), step, sampling.seed)
    if parallel.is_main():
        _write_manifest(manifest, t, items, records, {"generated": len(items) - len(skipped), "skipped": skipped,
                                                      "grid": str(tm.grid), "device": str(device),
                                                      "kv_cache": i.kv_cache})
    parallel.barrier()


def _write_outputs(spec: RunSpec, out_dir: Path, batch: list[InferInput], videos: Any, step: int, seed: int) -> None:
    """Each video's sidecar, then its mp4 (what `_written` looks for), both atomically."""
    from harness.lib.video import write_mp4

    tm, i = spec.token_math, spec.infer
    for it, video in zip(batch, videos):
        mp4 = out_dir / f"{it.name}.mp4"
        side = Sidecar(it.source, reference_frames(spec, it), tm.context_frames(context_latents(spec, it)), step,
                       seed, i.temperature, i.top_p, it.prompt)
        atomic_write_json(sidecar_path(mp4), side.to_json())
        write_mp4(mp4, video, spec.video.fps, fast_decode=True)


def _written(out_dir: Path, it: InferInput) -> bool:
    mp4 = out_dir / f"{it.name}.mp4"
    return mp4.is_file() and sidecar_path(mp4).is_file()


def _write_manifest(path: Path, t: InferTask, items: list[InferInput], records: list[dict[str, Any]],
                    extra: dict[str, Any]) -> None:
    """Written after every output of the task: `names` is the shard's assignment, what evaluate scores."""
    atomic_write_json(path, {"step": t.step, "shard": t.shard, "shards": t.shards, "input_range": [t.start, t.stop],
                             "inputs": len(items), "names": [it.name for it in items], "batches": records,
                             "time": time.time(), **extra})
