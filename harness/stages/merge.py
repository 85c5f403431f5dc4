"""merge: verify every tokenize shard, join them into one dataset, write the split and the summary.

On-disk dataset of a run (what finetune reads, through `harness.stages.dataset.open_dataset`):

    <run>/dataset/tokens.bin, tokens.idx
        megatron-core indexed dataset (IndexedDataset(prefix)), dtype uint16, one document = one sequence =
        one video. Base recipe: the video's tokens, flattened in T,H,W order (spec.token_math.video_tokens,
        no BOS/EOS). Video2World: [BOV=64000] + video tokens + [PAD=64002] x 64 (token_math.sample_length).
        Documents are ordered shard by shard (shard 0 first), inputs in input-list order within a shard.
    <run>/dataset/tokens.prompts.npy, tokens.prompt_lengths.npy   (Video2World only)
        float32 [N, 512, d] T5 embeddings (pad rows zero) and int32 [N] prompt lengths; row i = document i.
    <run>/dataset/split.json
        {"seed", "weights", "train": [doc...], "val": [...], "test": [...]}: disjoint, sorted document
        indices; a seeded permutation of whole videos cut by the split weights (a positive weight gets at
        least one video while more than one remains unassigned).
    <run>/dataset/summary.json
        videos in, tokenized, skipped (every input by name with its reason, and grouped by kind), tokens,
        per-split counts, shard count, and `documents`: per document its input index, path, token count and
        the sha256 of its uint16 bytes.

Every output is written under a temp name and renamed; nothing here depends on timing, so a re-run over the
same shards writes identical bytes.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.atomic import atomic_write_json, read_json
from harness.core.errors import HarnessError
from harness.core.paths import RunPaths
from harness.core.plan import split_counts
from harness.core.spec import RunSpec
from harness.lib import mmidx
from harness.lib.inputs import reason_kind
from harness.stages import dataset
from harness.stages.inputs import read_inputs

log = logging.getLogger("harness.merge")


def run(spec: RunSpec, task: int, paths: RunPaths) -> None:
    shards = spec.tokenize.shards
    problems = [p for s in range(shards) if (p := dataset.verify_shard(paths, s)) is not None]
    if problems:
        raise HarnessError(f"merge: {len(problems)} of {shards} shards are not usable; re-run them "
                           f"(harness resume): " + "; ".join(problems))
    manifests = [read_json(paths.shard_manifest(s)) for s in range(shards)]
    documents = [dict(v, shard=m["shard"]) for m in manifests for v in m["videos"]]
    if not documents:  # an empty dataset would pass here and fail finetune deep in megatron's reader
        _nothing_tokenized(manifests)
    _check_lengths(spec, documents)
    _join_tokens(paths, shards)
    if spec.video2world:
        _join_prompts(paths, shards, len(documents))
    split = make_split(len(documents), spec.data.split, spec.run.seed)
    atomic_write_json(paths.dataset_split, {"seed": spec.run.seed, "weights": list(spec.data.split), **split})
    summary = _summary(spec, paths, manifests, documents, split)
    atomic_write_json(paths.dataset_summary, summary)
    log.info("merge: %d videos in, %d tokenized, %d skipped; split %s", summary["videos_in"],
             summary["tokenized"], len(summary["skipped"]), summary["splits"])


def _nothing_tokenized(manifests: list[dict[str, Any]]) -> None:
    kinds = Counter(str(s.get("kind", "other")) for m in manifests for s in m["skipped"])
    why = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "no input listed"
    raise HarnessError(f"merge: none of the inputs tokenized ({why}); each is named with its reason in the "
                       "tokenize logs and in tokens/shard-*.manifest.json: fix or replace them, then submit again")


def _check_lengths(spec: RunSpec, documents: list[dict[str, Any]]) -> None:
    want = spec.token_math.sample_length
    bad = [d for d in documents if d["tokens"] != want]
    if bad:
        raise HarnessError(f"merge: {len(bad)} documents have a token count other than {want} "
                           f"({spec.token_math.describe()}), e.g. {bad[0]['path']} with {bad[0]['tokens']}")


def _join_tokens(paths: RunPaths, shards: int) -> None:
    prefix = paths.dataset_prefix
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tmp_bin, tmp_idx = _tmp(Path(f"{prefix}.bin")), _tmp(Path(f"{prefix}.idx"))
    try:
        builder = mmidx.Builder(tmp_bin, dtype=np.uint16)
        for s in range(shards):
            builder.add_index(paths.shard_prefix(s))
        builder.finalize(str(tmp_idx))
        os.replace(tmp_bin, f"{prefix}.bin")
        os.replace(tmp_idx, f"{prefix}.idx")
    finally:
        tmp_bin.unlink(missing_ok=True)
        tmp_idx.unlink(missing_ok=True)


def _join_prompts(paths: RunPaths, shards: int, total: int) -> None:
    """Stream the shards' embeddings into one memory-mapped array (never all in memory)."""
    parts = [np.load(dataset.prompts_path(paths.shard_prefix(s)), mmap_mode="r") for s in range(shards)]
    lengths = np.concatenate([np.load(dataset.prompt_lengths_path(paths.shard_prefix(s))) for s in range(shards)])
    dims = {p.shape[1:] for p in parts if len(p)}
    if len(dims) > 1 or sum(len(p) for p in parts) != total or len(lengths) != total:
        raise HarnessError(f"merge: prompt embeddings do not line up with the {total} documents "
                           f"(shapes {sorted(dims)}, {sum(len(p) for p in parts)} rows)")
    shape = (total, *(dims.pop() if dims else parts[0].shape[1:]))
    final = dataset.prompts_path(paths.dataset_prefix)
    tmp = _tmp(final)
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        row = 0
        for p in parts:
            out[row:row + len(p)] = p
            row += len(p)
        out.flush()
        del out
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    lengths_final = dataset.prompt_lengths_path(paths.dataset_prefix)
    tmp = _tmp(lengths_final)
    with open(tmp, "wb") as f:
        np.save(f, lengths.astype(np.int32), allow_pickle=False)
    os.replace(tmp, lengths_final)


def _tmp(final: Path) -> Path:
    return final.parent / f".{final.name}.{os.getpid()}.tmp"


def make_split(n: int, weights: tuple[int, ...], seed: int) -> dict[str, list[int]]:
    """Deterministic split of n whole videos by weights (train, val, test); train takes the remainder."""
    order = np.random.default_rng(seed).permutation(n)
    counts = split_counts(n, weights)  # the plan sizes infer's shards from the same counts
    out, start = {}, 0
    for name, c in zip(dataset.SPLITS, counts):
        out[name] = sorted(int(i) for i in order[start:start + c])
        start += c
    return out


def _prompt_notes(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """Video2World: prompts cut to T5's 512 tokens or empty, by name (only when there are any)."""
    notes = sorted((n for m in manifests for n in m.get("prompt_notes", [])), key=lambda n: n["index"])
    return {"prompt_notes": [{**n, "name": Path(n["path"]).name} for n in notes]} if notes else {}


def _summary(spec: RunSpec, paths: RunPaths, manifests: list[dict[str, Any]], documents: list[dict[str, Any]],
             split: dict[str, list[int]]) -> dict[str, Any]:
    items = read_inputs(paths)
    skipped = sorted((s for m in manifests for s in m["skipped"]), key=lambda s: s["index"])
    for s in skipped:
        s["name"] = Path(s["path"]).name
        s["kind"] = reason_kind(s["reason"])
    seen = {d["index"] for d in documents} | {s["index"] for s in skipped}
    lost = [it.path for it in items if it.index not in seen]
    if lost:
        raise HarnessError(f"merge: {len(lost)} inputs are in no shard manifest (was inputs.jsonl changed after "
                           f"tokenize?), e.g. {lost[0]}")
    by_kind: dict[str, list[str]] = {}
    for s in skipped:
        by_kind.setdefault(s["kind"], []).append(s["name"])
    return {
        "recipe": spec.run.recipe, "shards": len(manifests), "videos_in": len(items), "tokenized": len(documents),
        "skipped": skipped, "skipped_by_kind": by_kind, "tokens": sum(d["tokens"] for d in documents),
        **_prompt_notes(manifests),
        "tokens_per_video": spec.token_math.video_tokens, "sample_length": spec.token_math.sample_length,
        "grid": str(spec.token_math.grid), "dtype": "uint16",
        "splits": {k: len(v) for k, v in split.items()},
        "documents": [{"doc": i, "index": d["index"], "path": d["path"], "tokens": d["tokens"],
                       "sha256": d["sha256"], "shard": d["shard"]} for i, d in enumerate(documents)],
    }
