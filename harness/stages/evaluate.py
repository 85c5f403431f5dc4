"""Evaluate stage: PSNR / SSIM of one checkpoint's generated videos against their references.

Frame alignment (the convention the infer stage writes, see `Sidecar`): generated frame g stands for
reference frame `reference_frames[g]` of the source video, after the same resize-to-cover + center crop to
the generated size. The infer stage conditions on the first `context_frames` frames of the clip and predicts
the rest, so generated frame g is reference frame g; frames whose reference index lies past the end of the
source have no ground truth and are left out (and listed). Upstream TokenBench instead compared generated
frames with the FIRST N reference frames while generation continued the LAST ones.
Without a sidecar (standalone `harness evaluate --reference DIR --generated DIR`) frame i is compared with
frame i, and the result says `"alignment": "identity"`. The reference is fitted to the generated size as
`video.resize` says (the tokenize and infer stages' resize, so the frames infer conditioned on).

`evaluate.protocol`: "aligned" is the above; "tokenbench" prepares both files as upstream's TokenBench does
(`harness.lib.tokenbench`: first N frames, Lanczos to a short side, H.264 round trip) and compares frame i with
frame i, so its numbers compare with upstream's; "both" writes each, the aligned result first and the
TokenBench one under `other_protocols`. Every result names its `protocol`.

Metrics (the rows of `harness.core.metrics_table`, their kernels in `harness.lib.metrics`) are reported over all
compared frames and over the predicted frames alone (context frames measure the tokenizer's reconstruction,
predicted ones the model). Only the metrics of `evaluate.metrics` are computed and written (PSNR alone skips the
SSIM kernel, the expensive part). Identical clips have infinite PSNR: JSON has no infinity, so `psnr` is null with
`identical: true`, and means exclude such videos (their names are listed). The records are
`harness.core.evalrecords`'s.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import av
import numpy as np

from harness.core import metrics_table as mt
from harness.core.atomic import atomic_write_json, read_json
from harness.core.errors import HarnessError
from harness.core.evalrecords import EvalResult, Failure, Scores, ShardRecord, VideoRecord
from harness.core.evalstats import frames_note, video_means
from harness.core.paths import RunPaths
from harness.lib import metrics, tokenbench
from harness.lib.video import load_frames
from harness.stages.pairing import Pair, dir_pairs, stage_pairs, videos_of

if TYPE_CHECKING:
    from harness.core.spec import RunSpec

# ------------------------------------------------------------------------------------- protocols
@dataclass(frozen=True)
class Protocol:
    """How one evaluation turns a (generated, reference) pair into compared frames."""

    name: str = "aligned"
    """aligned (sidecar frame mapping at the generated size) or tokenbench (TokenBench's preprocessing)."""
    resize: str = "upstream"
    """aligned: how the reference is fitted to the generated size (`video.resize`)."""
    tokenbench_width: int = tokenbench.SHORT_SIDE
    tokenbench_frames: int = tokenbench.FRAMES

    def note(self) -> str:
        """The frames note of a TokenBench result: what was compared with what."""
        return (f"tokenbench protocol: the first {self.tokenbench_frames} frames of each file, short side resized "
                f"to {self.tokenbench_width} (Lanczos, no crop), both re-encoded as H.264 (qp 28 above 640x480, "
                "else 20) and decoded, frame i compared with frame i")


def protocols(name: str, resize: str = "upstream", width: int = tokenbench.SHORT_SIDE,
              frames: int = tokenbench.FRAMES) -> tuple[Protocol, ...]:
    """evaluate.protocol -> the evaluations to run, the one written first (the shard's main result) first."""
    names = {"aligned": ("aligned",), "tokenbench": ("tokenbench",), "both": ("aligned", "tokenbench")}
    if name not in names:
        raise ValueError(f"evaluate protocol {name!r}: must be one of aligned, tokenbench, both")
    return tuple(Protocol(n, resize, width, frames) for n in names[name])


def spec_protocols(spec: RunSpec) -> tuple[Protocol, ...]:
    e = spec.evaluate
    return protocols(e.protocol, spec.video.resize, e.tokenbench_width, e.tokenbench_frames)


# ------------------------------------------------------------------------------------- pairs
def load_pair(pair: Pair, resize: str = "upstream") -> tuple[np.ndarray, np.ndarray, list[int], list[int], list[int]]:
    """(reference frames, generated frames, compared generated indices, their reference indices,
    generated indices without ground truth) for one pair, already aligned frame for frame.

    Each file is opened and decoded once: the generated clip at its own size (all its real frames), the
    reference at that size up to the last frame the mapping asks for. A reference that ends earlier has fewer
    real frames, and the generated frames mapped past its end have no ground truth (padded frames never are)."""
    gen_path, ref_path = Path(pair.generated), Path(pair.reference)
    gen = load_frames(gen_path)
    n_gen, h, w = gen.shape[:3]
    mapping = pair.reference_frames if pair.reference_frames is not None else tuple(range(n_gen))
    if len(mapping) != n_gen:
        raise HarnessError(f"{gen_path}: {n_gen} frames but its sidecar maps {len(mapping)}")
    wanted = [r for r in mapping if r is not None and r >= 0]
    if not wanted:
        raise HarnessError(f"{gen_path}: no generated frame has a reference frame in {ref_path}")
    ref = load_frames(ref_path, (h, w), max(wanted) + 1, resize=resize)  # type: ignore[arg-type]  # a spec value
    g_idx = [g for g, r in enumerate(mapping) if r is not None and 0 <= r < len(ref)]
    r_idx = [int(r) for r in mapping if r is not None and 0 <= r < len(ref)]
    compared = set(g_idx)
    missing = [g for g in range(n_gen) if g not in compared]
    if not g_idx:
        raise HarnessError(f"{gen_path}: no generated frame has a reference frame in {ref_path} ({len(ref)} frames)")
    return _take(ref, r_idx), _take(gen, g_idx), g_idx, r_idx, missing


def load_tokenbench_pair(pair: Pair, protocol: Protocol
                         ) -> tuple[np.ndarray, np.ndarray, list[int], list[int], list[int]]:
    """`load_pair`'s result under the tokenbench protocol: frame i against frame i, nothing left out."""
    ref, gen = tokenbench.prepare_pair(pair.reference, pair.generated, protocol.tokenbench_frames,
                                       protocol.tokenbench_width)
    idx = list(range(len(gen)))
    return ref, gen, idx, idx, []


def _take(frames: np.ndarray, idx: list[int]) -> np.ndarray:
    """frames[idx], without a copy when idx is 0..n-1 of all frames (the common case)."""
    if idx == list(range(len(frames))):
        return frames
    return frames[idx]


# ------------------------------------------------------------------------------------- scoring
def _scores(chosen: Sequence[mt.Metric], values: dict[str, np.ndarray], idx: list[int], frame_pixels: int) -> Scores:
    """The chosen metrics over frames `idx`; a metric infinite for identical frames becomes None + identical."""
    got = {m.name: metrics.REDUCE[m.name](values[m.name][idx], frame_pixels) for m in chosen}
    bounded = [m for m in chosen if m.infinite_when_identical]
    identical = any(math.isinf(got[m.name]) for m in bounded) if bounded else None
    return Scores(len(idx), {k: None if math.isinf(v) else v for k, v in got.items()}, identical)


def score_arrays(pair: Pair, ref: np.ndarray, gen: np.ndarray, g_idx: list[int], r_idx: list[int],
                 missing: list[int], backend: str, device: str,
                 selected: Sequence[str] | None = None, tokenbench_frames: bool = False) -> VideoRecord:
    """`tokenbench_frames`: the frames are TokenBench's (alignment 'tokenbench', no context/predicted split)."""
    chosen = mt.selected(selected)
    values = metrics.frame_values(ref, gen, [m.name for m in chosen], backend, device)
    frame_pixels = ref[0].size
    pred = [k for k, g in enumerate(g_idx) if g >= pair.context_frames]
    predicted = not tokenbench_frames and pair.reference_frames is not None and 0 < len(pred) < len(g_idx)
    alignment = "tokenbench" if tokenbench_frames else "identity" if pair.reference_frames is None else "sidecar"
    return VideoRecord(pair.name, pair.generated, pair.reference, alignment, tuple(g_idx), tuple(r_idx),
                       tuple(missing), 0 if tokenbench_frames else pair.context_frames,
                       {m.name: tuple(float(x) for x in values[m.name]) for m in chosen if m.per_frame},
                       _scores(chosen, values, list(range(len(g_idx))), frame_pixels),
                       _scores(chosen, values, pred, frame_pixels) if predicted else None, pair.prompt)


def score_pair(pair: Pair, backend: str, device: str, selected: Sequence[str] | None = None,
               protocol: Protocol = Protocol()) -> VideoRecord | Failure:
    """Decode and score one pair; failures become a `Failure`, never an exception."""
    try:
        if protocol.name == "tokenbench":
            return score_arrays(pair, *load_tokenbench_pair(pair, protocol), backend, device, selected, True)
        return score_arrays(pair, *load_pair(pair, protocol.resize), backend, device, selected)
    except (HarnessError, ValueError, OSError, av.FFmpegError) as e:
        return Failure(pair.name, f"{e.__class__.__name__}: {e}", pair.generated, pair.reference)


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def _bounded_map(pool: ThreadPoolExecutor, fn: Callable[[Pair], Any], pairs: Sequence[Pair], depth: int
                 ) -> Iterator[Any]:
    """pool.map in order, with at most `depth` pairs in flight (decoded clips are ~17 MB a pair)."""
    pending: deque[Future[Any]] = deque()
    for p in pairs:
        pending.append(pool.submit(fn, p))
        if len(pending) >= depth:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def score_pairs(pairs: Sequence[Pair], backend: str = "auto", device: str | None = None,
                workers: int = 0, selected: Sequence[str] | None = None,
                protocol: Protocol = Protocol()) -> list[VideoRecord | Failure]:
    """Score every pair on a pool of threads, each doing whole pairs: PyAV decoding, the numba kernel and
    CUDA work all run without the GIL, so threads scale like processes without their start-up or the cost
    of shipping frames between them, and on a GPU one pair's metrics overlap the next pairs' decoding."""
    kind = metrics.resolve_backend(backend)
    device = device or (metrics.default_device() if kind == "fast" else "cpu")
    workers = min(workers or default_workers(), max(1, len(pairs)))
    if workers == 1:
        return [score_pair(p, kind, device, selected, protocol) for p in pairs]
    with ThreadPoolExecutor(workers) as pool:
        return list(_bounded_map(pool, lambda p: score_pair(p, kind, device, selected, protocol), pairs,
                                 2 * workers))


def summarize(results: Sequence[VideoRecord | Failure], *, backend: str, device: str,
              missing_reference: Iterable[str], missing_generated: Iterable[str],
              selected: Sequence[str] | None = None, protocol: Protocol = Protocol()) -> EvalResult:
    ok = [r for r in results if isinstance(r, VideoRecord)]
    kind = metrics.resolve_backend(backend)
    engine = "skimage" if kind == "skimage" else metrics.fast_engine(device)
    chosen = tuple(selected) if selected is not None else mt.names()
    tb = protocol.name == "tokenbench"
    return EvalResult(protocol.note() if tb else frames_note(ok), kind, engine, device, chosen, tuple(ok),
                      video_means(ok, chosen), tuple(r for r in results if isinstance(r, Failure)),
                      tuple(sorted(missing_reference)), tuple(sorted(missing_generated)),
                      tuple(n for m in mt.selected(chosen) for n in m.notes), protocol.name,
                      "" if tb else protocol.resize)


def evaluate_all(pairs: Sequence[Pair], protos: Sequence[Protocol], backend: str, device: str, workers: int,
                 missing_reference: Sequence[str], missing_generated: Sequence[str],
                 selected: Sequence[str] | None = None, unpaired: Sequence[Failure] = ()) -> tuple[EvalResult, ...]:
    """One result per protocol, in `protos` order (the pairs are decoded afresh for each); `unpaired`: videos
    that could not be paired, listed among each result's failures."""
    return tuple(summarize([*score_pairs(pairs, backend, device, workers, selected, p), *unpaired], backend=backend,
                           device=device, missing_reference=missing_reference, missing_generated=missing_generated,
                           selected=selected, protocol=p) for p in protos)


# ------------------------------------------------------------------------------------- directories
def evaluate_dirs(reference: str | Path, generated: str | Path, backend: str = "auto", *,
                  device: str | None = None, workers: int = 0, use_sidecars: bool = True,
                  protocol: str = "aligned") -> dict[str, Any]:
    """Standalone evaluation (`harness evaluate --reference DIR --generated DIR`): files matched by name as
    TokenBench does (by stem, so x.mov matches x.mp4; where a stem has several references, the one of the same
    file name); unmatched files are reported by name, not fatal. A generated file's sidecar, if present, gives
    its frame alignment; otherwise frame i vs frame i.
    `protocol`: as evaluate.protocol, at TokenBench's defaults (17 frames, short side 320)."""
    refs, gens = videos_of(Path(reference), "--reference"), videos_of(Path(generated), "--generated")
    pairs, unpaired, unmatched = dir_pairs(refs, gens, use_sidecars)
    kind = metrics.resolve_backend(backend)
    device = device or (metrics.default_device() if kind == "fast" else "cpu")
    paired = {Path(p.reference).stem for p in pairs}
    main, *others = evaluate_all(pairs, protocols(protocol), kind, device, workers, sorted(set(unmatched)),
                                 [s for s in refs if s not in gens and s not in paired], unpaired=unpaired)
    return {"reference_dir": str(reference), "generated_dir": str(generated), **main.with_others(others)}


def infer_record(paths: RunPaths, step: int, key: int | None, task: int) -> tuple[list[str] | None, dict[str, str]]:
    """What infer[task] was to generate for its shard and what it skipped ({name: why}, an unreadable input), from
    its manifest. With one shard (key None) a run from before manifests named them has none: (None, {}), the
    whole directory is the shard."""
    manifest = paths.infer_manifest(step, key)
    try:
        raw = read_json(manifest)
        return [str(n) for n in raw["names"]], {str(k): str(v) for k, v in (raw.get("skipped") or {}).items()}
    except FileNotFoundError:
        if key is None:
            return None, {}
        why = "FileNotFoundError"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        why = e.__class__.__name__
    raise HarnessError(f"{manifest}: no readable infer manifest for step {step} shard {key} ({why}); "
                       f"did infer[{task}] complete?")


def run(spec: RunSpec, task: int, paths: RunPaths) -> None:
    """Task = (checkpoint, input shard) as `harness.core.plan.infer_task` maps it, the index of the infer task it
    scores (aftercorr); writes paths.eval_json(step, shard key) atomically, with the metrics of evaluate.metrics
    only (validated with the spec)."""
    from harness.core.plan import infer_task

    t = infer_task(spec, task)
    step = t.step
    gen_dir = paths.infer_dir(step)
    names, skipped = infer_record(paths, step, t.key, task)
    wanted = None if names is None else [n for n in names if n not in skipped]
    if wanted != [] and not gen_dir.is_dir():
        raise HarnessError(f"{gen_dir}: no generated videos for checkpoint step {step}; did infer[{task}] run?")
    pairs, missing_ref, missing_gen, damaged = stage_pairs(spec, gen_dir, wanted) if wanted != [] else ([], [], [], [])
    kind = metrics.resolve_backend(spec.evaluate.backend)
    device = metrics.default_device() if kind == "fast" else "cpu"
    workers = min(default_workers(), spec.evaluate.cpus_per_task)
    unread = (*(Failure(n, f"infer skipped this input: {why}") for n, why in sorted(skipped.items())), *damaged)
    main, *others = (dataclasses.replace(r, failed=unread + r.failed) for r in evaluate_all(
        pairs, spec_protocols(spec), kind, device, workers, missing_ref, missing_gen, spec.evaluate.metrics))
    atomic_write_json(paths.eval_json(step, t.key),
                      ShardRecord(step, t.checkpoint, t.shard, t.shards, str(gen_dir), main, tuple(others)).to_json())
    if not main.videos and main.left_out:  # another protocol comparing nothing (images under tokenbench) is reported
        raise HarnessError(f"evaluate[{task}]: no video compared under protocol {main.protocol!r} "
                           f"({_uncompared(main)}); the result is kept for the report")


def _uncompared(result: EvalResult) -> str:
    """Why a result compared nothing, for the task's error line."""
    parts = [f"{len(result.failed)} failed, first {result.failed[0].name}: {result.failed[0].error}"
             if result.failed else "",
             f"no reference for {len(result.missing_reference)}, first {result.missing_reference[0]}"
             if result.missing_reference else "",
             f"{len(result.missing_generated)} not generated" if result.missing_generated else ""]
    return "; ".join(p for p in parts if p)
