"""Helpers for the Cosmos model / finetune tests: a tiny run directory with a real megatron indexed dataset in the
merged-dataset layout `harness.stages.dataset.open_dataset` reads, and multi-rank (gloo) execution via spawn."""

from __future__ import annotations

import json
import os
import pickle
import socket
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

import specs
from harness.core import spec as spec_mod
from harness.core.atomic import atomic_write_json
from harness.core.paths import RunPaths
from harness.core.tokens import BOV_ID, PAD_ID, VIDEO2WORLD_PAD
from harness.stages.dataset import to_uint16


def make_spec(*, tp: int = 1, max_steps: int = 6, save_every: int = 2, gbs: int = 2, mbs: int = 1,
              lr: float = 3e-3, checkpoint: str = "", v2w: bool = False, video: dict[str, int] | None = None,
              **finetune: Any) -> spec_mod.RunSpec:
    return specs.build(
        specs.TINY, specs.V2W if v2w else None,
        {"run": {"name": "ft", "seed": 11}, "model": {"checkpoint": checkpoint, "text_encoder": None},
         "video": video or {}, "data": {"jsonl": "/x.jsonl"} if v2w else {"videos": "/x"},
         "finetune": {"engine": "mcore", "tensor_parallel": tp, "global_batch_size": gbs, "micro_batch_size": mbs,
                      "lr": lr, "min_lr": lr, "max_steps": max_steps, "save_every": save_every,
                      "precision": "fp32", "max_epochs": 1000, **finetune}})


def video_tokens(spec: spec_mod.RunSpec, n: int, seed: int = 0) -> list[np.ndarray]:
    """Learnable synthetic videos: a random first latent frame, later frames shifted copies of it."""
    g = spec.token_math.grid
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        first = rng.integers(0, 200, size=g.h * g.w)
        out.append(np.concatenate([first + 1000 * t for t in range(g.t)]).astype(np.int64))
    return out


def make_run(root: Path, spec: spec_mod.RunSpec, n_videos: int = 8,
             split: tuple[int, int, int] = (6, 1, 1)) -> RunPaths:
    """spec.json + the merged dataset (uint16 .bin/.idx, summary.json, split.json; V2W prompt arrays), and a
    local model.checkpoint staged in assets.json as stage-assets stages one (in place), where both engines find it."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    paths = RunPaths(root)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(paths.spec_json, spec_mod.to_dict(spec))
    if spec.model.checkpoint:
        atomic_write_json(paths.assets_json, {"checkpoint": spec.model.checkpoint})
    prefix = paths.dataset_prefix
    prefix.parent.mkdir(parents=True, exist_ok=True)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    docs = video_tokens(spec, n_videos)
    if spec.video2world:
        docs = [np.concatenate([[BOV_ID], d, [PAD_ID] * VIDEO2WORLD_PAD]) for d in docs]
    for d in docs:
        builder.add_document(torch.from_numpy(to_uint16(d)), [len(d)])
    builder.finalize(f"{prefix}.idx")
    recipe = "video2world" if spec.video2world else "base"
    atomic_write_json(paths.dataset_summary, {"recipe": recipe, "documents": [{"tokens": len(d)} for d in docs]})
    a, b, _ = split
    ids = list(range(n_videos))
    paths.dataset_split.write_text(json.dumps({"train": ids[:a], "val": ids[a:a + b], "test": ids[a + b:]}))
    if spec.video2world:
        rng = np.random.default_rng(5)
        np.save(f"{prefix}.prompts.npy",
                rng.standard_normal((n_videos, 6, spec.preset.crossattn_dim)).astype(np.float32))
        np.save(f"{prefix}.prompt_lengths.npy", np.full(n_videos, 6, dtype=np.int32))
    return paths


def metrics(paths: RunPaths) -> list[dict[str, Any]]:
    """The optimizer steps' records, in file order (validation records: `val_metrics`)."""
    recs = [json.loads(line) for line in paths.metrics_jsonl.read_text().splitlines()]
    return [r for r in recs if "val_loss" not in r]


def val_metrics(paths: RunPaths) -> list[dict[str, Any]]:
    """The validation records, in file order."""
    recs = [json.loads(line) for line in paths.metrics_jsonl.read_text().splitlines()]
    return [r for r in recs if "val_loss" in r]


def independent_val_loss(paths: RunPaths, weights: Path, spec: spec_mod.RunSpec) -> float:
    """The validation loss recomputed apart from the engines: `weights` loaded at TP=1, plain torch
    cross-entropy of every validation video's next tokens, averaged over all of them."""
    import torch.nn.functional as F

    from harness.cosmos import parallel
    from harness.stages import infer
    from harness.stages.dataset import open_dataset

    ds = open_dataset(paths)
    docs = [np.asarray(ds.tokens(i), dtype=np.int64) for i in json.loads(paths.dataset_split.read_text())["val"]]
    model = infer.load_model(weights, spec, tp=1)
    with torch.no_grad():
        toks = torch.from_numpy(np.stack(docs))
        logits = model(toks[:, :-1]).float()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), toks[:, 1:].reshape(-1))
    parallel.shutdown()
    return float(loss)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_main(rank: int, fn: Callable[..., Any], args: tuple[Any, ...], world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    result = fn(*args)
    Path(f"{out}.{rank}").write_bytes(pickle.dumps(result))


def run_ranks(fn: Callable[..., Any], args: tuple[Any, ...], world: int, tmp: Path) -> list[Any]:
    """Run fn(*args) on `world` spawned gloo ranks; returns each rank's return value."""
    import torch.multiprocessing as mp

    out = str(tmp / f"ranks-{free_port()}")
    mp.start_processes(_rank_main, args=(fn, args, world, free_port(), out), nprocs=world, start_method="spawn")
    return [pickle.loads(Path(f"{out}.{r}").read_bytes()) for r in range(world)]


def tb_scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    """Tag -> step -> value, read with TensorBoard's own reader (which applies purge marks after a resume)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    out: dict[str, dict[int, float]] = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        steps = [e.step for e in events]
        assert len(steps) == len(set(steps)), f"{tag}: a step logged twice: {steps}"
        out[tag] = {e.step: e.value for e in events}
    return out


def tracked_scalars(recs: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """What the tracker should have logged for these metrics.jsonl records."""
    from harness.lib import tracking

    out: dict[str, dict[int, float]] = {}
    for r in recs:
        for tag, v in tracking.train_scalars(r).items():
            out.setdefault(tag, {})[r["step"]] = v
    return out


def assert_same_scalars(got: dict[str, dict[int, float]], want: dict[str, dict[int, float]]) -> None:
    assert set(got) == set(want)
    for tag in want:
        assert list(got[tag]) == list(want[tag]), tag
        assert got[tag] == pytest.approx(want[tag], rel=1e-6), tag  # event files store float32


def assert_events_match_metrics(paths: RunPaths) -> None:
    """The training event files (harness.lib.tracking) hold exactly metrics.jsonl's steps and values, the
    validation points' (val/loss) among them."""
    assert_same_scalars(tb_scalars(paths.tensorboard_train), tracked_scalars(metrics(paths) + val_metrics(paths)))


def tiny_pretrained(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny NeMo-layout pretrained checkpoint (seed 1) that finetune tests start from; the process's gloo group
    the writer started is shut down again, so the test's own run starts its own."""
    from harness.core.models import PRESETS
    from harness.cosmos import parallel
    from harness.cosmos import pretrained as pt

    out = tmp_path_factory.mktemp("pretrained") / "nemo"
    pt.write_tiny_pretrained(out, PRESETS["tiny"], seed=1)
    parallel.shutdown()
    return str(out)
