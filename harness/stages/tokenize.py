"""tokenize[shard]: decode, crop and encode one shard of the run's inputs into a megatron-core indexed
dataset shard, plus (Video2World) the prompt embeddings, and a manifest written last.

Decoding runs in worker processes ahead of the encoder through a bounded, ordered prefetch window, so the
encoder (a GPU) is rarely idle and document order never depends on timing: a re-run of a shard writes the
same bytes. Unreadable inputs are recorded in the manifest with their reason and never stop the shard.
Token ids stay int64 until the one checked narrowing to uint16 (`harness.stages.dataset.to_uint16`).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import sys
import threading
import time
from collections import deque
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from harness.core import tokens
from harness.core.atomic import atomic_write_json
from harness.core.errors import HarnessError
from harness.core.paths import RunPaths
from harness.core.spec import RunSpec
from harness.lib import mmidx, prompts
from harness.lib.dvtok import Encoder, Pending
from harness.lib.inputs import InputItem, items_of_shard
from harness.lib.video import ClipShape, try_load
from harness.stages import dataset
from harness.stages.inputs import read_inputs
from harness.stages.staged import resolve

log = logging.getLogger("harness.tokenize")


def run(spec: RunSpec, task: int, paths: RunPaths) -> None:
    shards = spec.tokenize.shards
    if shards < 1 or not 0 <= task < shards:
        raise HarnessError(f"{paths.spec_json}: tokenize.shards = {shards}: task {task} is out of range "
                           f"(the launcher resolves the shard count at submit time)")
    problem = dataset.verify_shard(paths, task)
    if problem is None:
        log.info("tokenize[%d]: shard verified from its manifest; skipping", task)
        return
    log.info("tokenize[%d]: %s; tokenizing", task, problem)
    items = items_of_shard(read_inputs(paths), task, shards)
    device = pick_device(spec.tokenize.device)
    encoder = Encoder.load(resolve(paths, "encoder") / "encoder.jit", device)
    writer = ShardWriter(paths, task, spec)
    stats = encode_items(spec, items, encoder, writer)
    del encoder
    if spec.video2world:
        writer.prompt_rows = embed_prompts(resolve(paths, "text_encoder"), device, writer.prompts,
                                           spec.model.text_encoder_dtype)
    writer.finish(stats)
    log.info("tokenize[%d]: %d videos, %d skipped, %.2f clips/s, encoder busy %.0f%%", task,
             len(writer.videos), len(writer.skipped), stats["clips_per_s"], 100 * stats["encoder_busy"])


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise HarnessError("tokenize.device = 'cuda': no CUDA device visible on this node")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


# ------------------------------------------------------------------------------------ pipeline
def encode_items(spec: RunSpec, items: list[InputItem], encoder: Encoder, writer: "ShardWriter") -> dict[str, Any]:
    """Decode ahead, encode in batches, write in input order; returns throughput figures."""
    v, tk = spec.video, spec.tokenize
    batches = ClipBatches(items, ClipShape(v.num_frames, v.height, v.width, v.resize), tk.batch_size)
    t0, started = time.perf_counter(), time.time()
    inflight: deque[tuple[list[InputItem], Pending]] = deque()
    with _progress(len(items), f"tokenize[{writer.shard}]") as advance:

        def drain() -> None:
            advance(_drain(encoder, writer, *inflight.popleft()))

        for good, clips, skipped in _loader(batches, tk.decode_workers, encoder.device.type == "cuda"):
            for item, reason in skipped:
                writer.skip(item, reason)
            advance(len(skipped))
            if good:
                inflight.append((good, encoder.submit(clips)))
            while len(inflight) > (1 if encoder.device.type == "cuda" else 0):
                drain()
        while inflight:
            drain()
    end = time.perf_counter()
    wall, n = end - t0, len(writer.videos)
    return {"clips": n, "seconds": round(wall, 4), "encode_seconds": round(encoder.busy_s, 4),
            "encoder_busy": encoder.busy_s / wall if wall > 0 else 0.0, "encoder_busy_steady": encoder.steady_busy(),
            "batches": len(encoder.spans),
            "clips_per_s": n / wall if wall > 0 else 0.0, "device": str(encoder.device),
            "batch_size": tk.batch_size, "decode_workers": tk.decode_workers,
            "started_at": started, "finished_at": started + wall}


def _drain(encoder: Encoder, writer: "ShardWriter", items: list[InputItem], pending: Pending) -> int:
    indices = encoder.wait(pending)
    for item, grid in zip(items, indices):
        writer.add(item, grid)
    return len(items)


class ClipBatches(torch.utils.data.Dataset):
    """Batch k = the decodable clips among items[k*B:(k+1)*B], stacked in the worker that decoded them.

    Fixed groups of consecutive items keep the batch composition (and so the bytes) independent of timing;
    collating in the worker hands the main process one shared-memory tensor per batch instead of pickled
    pixels, so the process feeding the GPU stays nearly idle."""

    def __init__(self, items: list[InputItem], shape: ClipShape, batch_size: int) -> None:
        self.groups = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
        self.shape = shape

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, k: int) -> tuple[list[InputItem], torch.Tensor, list[tuple[InputItem, str]]]:
        good, clips, skipped = [], [], []
        for item in self.groups[k]:
            clip, reason = (None, item.error) if item.error else try_load(item.path, self.shape)
            if clip is None:
                skipped.append((item, reason or "unknown decode error"))
            else:
                good.append(item)
                clips.append(clip)
        s = self.shape
        stacked = np.stack(clips) if clips else np.zeros((0, s.frames, s.height, s.width, 3), np.uint8)
        return good, torch.from_numpy(stacked), skipped


def _loader(batches: ClipBatches, workers: int, pin: bool) -> Any:
    """In-order batches, at most 2 per worker decoded ahead of the encoder (bounded prefetch)."""
    return torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=workers,
                                       collate_fn=_as_is, pin_memory=pin, prefetch_factor=2 if workers else None,
                                       multiprocessing_context=_mp_context() if workers else None,
                                       worker_init_fn=functools.partial(_end_with, os.getpid()) if workers else None)


def _end_with(task_pid: int, _worker: int) -> None:
    """A decode worker ends when its task process does. torch's own watchdog watches the worker's parent, which
    under forkserver is the fork server, not the task: a task killed with SIGKILL (OOM, `scancel --signal=KILL`)
    left its workers decoding, hundreds of MB each, for as long as the node ran."""
    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(task_pid, 0)
            except (ProcessLookupError, PermissionError):  # gone (a PermissionError: the pid is another's now)
                os._exit(0)

    threading.Thread(target=watch, name="end-with-task", daemon=True).start()


def _as_is(batch: Any) -> Any:
    return batch


def _mp_context() -> Any:
    """forkserver where the OS has it. A worker forked straight from this process inherits its CUDA context and
    threads: on the H200 (PyAV 19) such workers hung in their first swscale call while the encoder had run here
    (py-spy: idle in `frame.reformat`), the 256-clip bench produced nothing. The fork server is a fresh
    interpreter that imports this module (torch, PyAV) once and never touches CUDA; workers fork from it in
    milliseconds, where spawn would re-import the launching program per worker."""
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    if "forkserver" not in methods:
        return get_context("spawn")
    ctx = get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


def _progress(total: int, label: str) -> Any:
    """A rich progress bar on stderr (the task log); `advance(n)` moves it. Where stderr is a file (a Slurm
    log) rich draws only the final bar, so a log line also marks every tenth of the shard."""
    from contextlib import contextmanager

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    @contextmanager
    def bar() -> Iterator[Any]:
        console = Console(file=sys.stderr)
        done, step = [0], max(1, total // 10)
        with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=False) as progress:
            task = progress.add_task(label, total=total)

            def advance(n: int = 1) -> None:
                progress.advance(task, n)
                before, done[0] = done[0], done[0] + n
                if not console.is_terminal and n and done[0] // step != before // step:
                    log.info("%s: %d/%d inputs", label, done[0], total)

            yield advance

    return bar()


def embed_prompts(directory: Path, device: torch.device, texts: list[str], dtype: str = "fp32",
                  batch: int = 8) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(embeddings, kept token counts, a note per prompt: '' or why the model sees less than was written)."""
    enc = prompts.load(directory, device, dtype)
    notes = [prompts.note(t, n) for t, n in zip(texts, prompts.token_counts(enc, texts))]
    rows, lengths = [], []
    for i in range(0, len(texts), batch):
        e, n = prompts.encode(enc, texts[i:i + batch])
        rows.append(e)
        lengths.append(n)
    if not rows:
        return (*prompts.encode(enc, []), notes)
    return np.concatenate(rows), np.concatenate(lengths), notes


# ------------------------------------------------------------------------------------ writer
class ShardWriter:
    """Writes one shard under temp names; `finish` renames them into place and writes the manifest last."""

    def __init__(self, paths: RunPaths, shard: int, spec: RunSpec) -> None:
        self.paths, self.shard, self.spec = paths, shard, spec
        self.math = spec.token_math
        self.files = dataset.shard_files(paths, shard, spec.video2world)
        directory = self.files["bin"].parent
        directory.mkdir(parents=True, exist_ok=True)
        # A killed attempt's leftovers: ours (.<name>.<pid>.tmp) and, from a run begun when the shard was written
        # through megatron-core 0.15's builder, that builder's own temp file beside it (..<name>.<pid>.tmp.tmp).
        for stale in directory.glob(f".*{paths.shard_prefix(shard).name}.*.tmp*"):
            stale.unlink(missing_ok=True)
        self.tmp = {k: p.parent / f".{p.name}.{os.getpid()}.tmp" for k, p in self.files.items()}
        self.builder = mmidx.Builder(self.tmp["bin"], dtype=np.uint16)
        self.videos: list[dict[str, Any]] = []
        self.skipped: list[dict[str, Any]] = []
        self.prompts: list[str] = []
        self.prompt_notes: list[dict[str, Any]] = []
        self.prompt_rows: tuple[np.ndarray, np.ndarray, list[str]] | None = None

    def add(self, item: InputItem, grid: np.ndarray) -> None:
        g = self.math.grid
        if grid.shape != (g.t, g.h, g.w):
            raise HarnessError(f"{self.spec.tokenizer.encoder}: encoder returned a {'x'.join(map(str, grid.shape))} "
                               f"grid for {item.path}; the token math expects {g} ({self.math.describe()})")
        video = grid.reshape(-1).astype(np.int64)  # T,H,W order
        assert video.size == self.math.video_tokens, (video.size, self.math.video_tokens)
        if video.min() < 0 or video.max() >= tokens.VOCAB_CODES:
            raise HarnessError(f"{self.spec.tokenizer.encoder}: token id {video.max()} outside the "
                               f"{tokens.VOCAB_CODES:,}-code FSQ vocabulary for {item.path}")
        if self.spec.video2world:
            video = np.concatenate([np.array([tokens.BOV_ID], np.int64), video,
                                    np.full(tokens.VIDEO2WORLD_PAD, tokens.PAD_ID, np.int64)])
            self.prompts.append(item.prompt or "")
        assert video.size == self.math.sample_length
        data = dataset.to_uint16(video)
        self.builder.add_document(data, [data.size])
        self.videos.append({"index": item.index, "path": item.path, "tokens": int(data.size),
                            "sha256": hashlib.sha256(data.tobytes()).hexdigest()})

    def skip(self, item: InputItem, reason: str) -> None:
        log.warning("tokenize[%d]: skipping %s: %s", self.shard, item.path, reason)
        self.skipped.append({"index": item.index, "path": item.path, "reason": reason})

    def finish(self, stats: dict[str, Any]) -> None:
        self.builder.finalize(str(self.tmp["idx"]))
        if self.spec.video2world:
            emb, lengths, notes = self.prompt_rows if self.prompt_rows is not None else (None, None, [])
            if emb is None or lengths is None or len(emb) != len(self.videos):
                raise HarnessError(f"tokenize[{self.shard}]: {len(self.videos)} videos but no matching prompt rows")
            self.prompt_notes = [{"index": v["index"], "path": v["path"], "note": n}
                                 for v, n in zip(self.videos, notes) if n]
            for n in self.prompt_notes:
                log.warning("tokenize[%d]: %s: %s", self.shard, n["path"], n["note"])
            _save_npy(self.tmp["prompts"], emb.astype(np.float32))
            _save_npy(self.tmp["prompt_lengths"], lengths.astype(np.int32))
        for key, final in self.files.items():
            os.replace(self.tmp[key], final)
        manifest = {"shard": self.shard, "num_shards": self.spec.tokenize.shards, "recipe": self.spec.run.recipe,
                    "dtype": "uint16", "grid": str(self.math.grid), "video_tokens": self.math.video_tokens,
                    "sample_length": self.math.sample_length, "videos": self.videos, "skipped": self.skipped,
                    "prompt_notes": self.prompt_notes,
                    "files": {k: dataset.file_record(p) for k, p in self.files.items()}, "stats": stats}
        atomic_write_json(self.paths.shard_manifest(self.shard), manifest)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())
