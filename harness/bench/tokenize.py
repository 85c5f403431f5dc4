"""`harness bench tokenize`: throughput (clips/s) and encoder-busy fraction of the tokenize stage.

- `--device cpu`: the real stage (one process per shard, each pinned to its own core, as on separate
  nodes) at the upstream geometry 17 x 320 x 512 with the tiny tokenizer; 2 shards vs 1 shard side by side.
- `--device cuda` (or `--mode dv`): the real stage with decode workers overlapping an encoder of the published DV4x8x8
  size (`harness.bench.dv_encoder`, ~1.4 TFLOP per clip, random weights), vs an upstream-style serial loop
  (decode, encode, write one video at a time). GPU busy = CUDA-event time inside the encoder / wall time.

Run standalone: `python -m harness.bench.tokenize --device cuda --out results/bench` (writes
tokenize-dv-cuda.json); a CPU smoke of the same comparison: `--device cpu --mode dv --clips 6 --height 64
--width 64 --frames 9 --serial-clips 3 --workers 1`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from harness.bench import at_least
from harness.core import spec as spec_mod
from harness.core.atomic import atomic_write_json, read_json
from harness.core.paths import RunPaths
from harness.lib import synth
from harness.lib.dvtok import Encoder, model_dtype, normalise, span_seconds
from harness.lib.video import write_mp4
from harness.ops.inputs import discover
from harness.stages import inputs

SOURCE = (17, 360, 640)
"""Source clips: 16:9, resized to cover 320 x 512 and center-cropped, as real data would be."""


def run(argv: list[str]) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="harness bench tokenize")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--clips", type=at_least(0), default=0, help="clips to tokenize (default: 48 cpu, 512 cuda)")
    ap.add_argument("--repeat", type=at_least(1), default=3, help="repetitions of each CPU configuration")
    ap.add_argument("--workers", type=at_least(0), default=0, help="decode workers on cuda (default: cores - 2)")
    ap.add_argument("--batch-size", type=at_least(1), default=8)
    ap.add_argument("--mode", choices=["auto", "shards", "dv"], default="auto",
                    help="shards: 2 vs 1 shard with the tiny tokenizer; dv: DV4x8x8-sized encoder vs a serial "
                         "loop (auto: shards on cpu, dv on cuda)")
    ap.add_argument("--frames", type=at_least(1), default=17)
    ap.add_argument("--height", type=at_least(1), default=320)
    ap.add_argument("--width", type=at_least(1), default=512)
    ap.add_argument("--serial-clips", type=at_least(1), default=64, help="clips through the serial loop (dv mode)")
    ap.add_argument("--out", default="results/bench")
    a = ap.parse_args(argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-tokenize-") as d:
        tmp = Path(d)
        mode = a.mode if a.mode != "auto" else ("shards" if a.device == "cpu" else "dv")
        clips = a.clips or (48 if mode == "shards" else 512)
        make_source_clips(tmp / "videos", clips)
        result = bench_cpu(tmp, a) if mode == "shards" else bench_dv(tmp, a)
    result.update({"bench": "tokenize", "mode": mode, "device": a.device, "clips": clips, "source": list(SOURCE),
                   "geometry": f"{a.frames}x{a.height}x{a.width}", "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                   "load_average_before_after": [load_before[0], os.getloadavg()[0]],
                   "cpu_count": os.cpu_count()})
    out = Path(a.out) / ("tokenize.json" if mode == "shards" else f"tokenize-dv-{a.device}.json")
    atomic_write_json(out, result)
    return result


def _one_clip(args: tuple[Path, int]) -> None:
    path, seed = args
    write_mp4(path, synth.smooth_clip(*SOURCE, seed=seed), fps=25)


def make_source_clips(out: Path, n: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max(1, (os.cpu_count() or 2))) as pool:
        list(pool.map(_one_clip, [(out / f"clip_{i:05d}.mp4", i) for i in range(n)]))


def _spec(tmp: Path, tok: Path, shards: int, device: str, batch: int, workers: int,
          geometry: tuple[int, int, int] = (17, 320, 512)) -> spec_mod.RunSpec:
    return spec_mod.from_dict({
        "run": {"name": "bench", "recipe": "base"},
        "model": {"preset": "cosmos-4b"},
        "tokenizer": {"encoder": str(tok), "decoder": str(tok), "compression": [4, 8, 8]},
        "video": {"num_frames": geometry[0], "height": geometry[1], "width": geometry[2]},
        "data": {"videos": str(tmp / "videos")},
        "assets": {"hf_home": str(tmp / "hf")},
        "tokenize": {"shards": shards, "batch_size": batch, "decode_workers": workers, "device": device},
    })


def _run_dir(root: Path, spec: spec_mod.RunSpec) -> RunPaths:
    from harness.launch.worker import run_task

    paths = RunPaths(root)
    root.mkdir(parents=True)
    atomic_write_json(paths.spec_json, spec_mod.to_dict(spec))
    inputs.write_inputs(paths, discover(spec))
    run_task(str(root), "stage-assets", 0)
    return paths


# ------------------------------------------------------------------------------------ CPU
_SHARD = """
import os, sys, time, torch
os.sched_setaffinity(0, {{{core}}}); torch.set_num_threads(1)
import harness.stages.tokenize, megatron.core.datasets.indexed_dataset  # imports before the start line
from harness.launch.worker import run_task
open({ready!r}, "w").close()
while not os.path.exists({go!r}):
    time.sleep(0.001)
cpu = time.process_time()
run_task({root!r}, "tokenize", {shard})
open({ready!r} + ".cpu", "w").write(str(time.process_time() - cpu))
"""


def _cpu_once(tmp: Path, tok: Path, shards: int, batch: int, tag: str,
              geometry: tuple[int, int, int]) -> dict[str, Any]:
    """All shard processes start together once imported (as array tasks on separate nodes would)."""
    paths = _run_dir(tmp / f"run-{tag}", _spec(tmp, tok, shards, "cpu", batch, 0, geometry))
    cores = sorted(os.sched_getaffinity(0))
    go = tmp / f"go-{tag}"
    ready = [tmp / f"ready-{tag}-{s}" for s in range(shards)]
    code = [_SHARD.format(core=cores[s % len(cores)], root=str(paths.root), shard=s, ready=str(ready[s]), go=str(go))
            for s in range(shards)]
    procs = [subprocess.Popen([sys.executable, "-c", c], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for c in code]
    while not all(r.exists() for r in ready):
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.01)
    t0 = time.time()
    go.touch()
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise RuntimeError(f"tokenize shard failed:\n{err[-2000:]}")
    exited = time.time() - t0
    stats = [read_json(paths.shard_manifest(s))["stats"] for s in range(shards)]
    wall = max(paths.shard_manifest(s).stat().st_mtime for s in range(shards)) - t0
    clips = sum(s["clips"] for s in stats)
    cpu = sum(float(Path(f"{r}.cpu").read_text()) for r in ready)
    return {"shards": shards, "clips": clips, "clips_per_s": clips / wall, "seconds": wall,
            "seconds_to_process_exit": exited, "clips_per_s_to_process_exit": clips / exited,
            "cpu_seconds": cpu, "clips_per_cpu_s": clips / cpu,
            "pipeline_clips_per_s": [s["clips_per_s"] for s in stats],
            "encoder_busy": statistics.mean(s["encoder_busy"] for s in stats)}


def bench_cpu(tmp: Path, a: argparse.Namespace) -> dict[str, Any]:
    tok = synth.write_tokenizer(tmp / "tok")
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for r in range(a.repeat):
        for shards in (1, 2):  # interleaved, so both see the same machine load
            runs[shards].append(_cpu_once(tmp, tok, shards, a.batch_size, f"{shards}-{r}",
                                          (a.frames, a.height, a.width)))
    med = {k: statistics.median(x["clips_per_s"] for x in v) for k, v in runs.items()}
    med_exit = {k: statistics.median(x["clips_per_s_to_process_exit"] for x in v) for k, v in runs.items()}
    return {"cores": len(os.sched_getaffinity(0)), "runs": runs,
            "median_clips_per_s": {"1_shard": med[1], "2_shards": med[2]},
            "median_encoder_busy": {f"{k}_shard{'s' if k > 1 else ''}": statistics.median(x["encoder_busy"] for x in v)
                                    for k, v in runs.items()},
            "speedup_2_vs_1": med[2] / med[1], "speedup_2_vs_1_to_process_exit": med_exit[2] / med_exit[1],
            "goal": {"speedup_at_least": 1.7},
            "cpu_efficiency_2_vs_1": statistics.median(x["clips_per_cpu_s"] for x in runs[2])
            / statistics.median(x["clips_per_cpu_s"] for x in runs[1]),
            "meets_goal": med[2] / med[1] >= 1.7,
            "note": "clips/s from a common start (after imports) to the last shard's manifest (the shard's "
                    "completion); *_to_process_exit also counts interpreter teardown, ~0.9 s per process once "
                    "megatron.core is imported, a fixed cost per array task that a real shard amortises. Each "
                    "shard process pinned to its own core (as on separate nodes), decode in-process "
                    "(decode_workers = 0). "
                    "cpu_efficiency_2_vs_1 = clips per CPU-second, 2 shards over 1: near 1 means sharding costs "
                    "nothing and wall-clock scaling is limited only by free cores (meaningful on a loaded machine)"}


# ------------------------------------------------------------------------------------ DV-sized encoder
class _Clock:
    """Encoder time: CUDA events on the GPU (time the GPU spent in the encoder), wall time on a CPU."""

    def __init__(self, device: str) -> None:
        import torch

        self.cuda = device == "cuda"
        self.torch = torch
        self.spans: list[tuple[Any, Any]] = []

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def start(self) -> Any:
        if self.cuda:
            ev = self.torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def stop(self, start: Any) -> None:
        if self.cuda:
            end = self.torch.cuda.Event(enable_timing=True)
            end.record()
            end.synchronize()
            self.spans.append((start, end))
        else:
            self.spans.append((start, time.perf_counter()))

    @property
    def busy(self) -> float:
        return span_seconds(self.spans, self.cuda)[0]

    def steady(self) -> float:
        """Encoding time / the encoder's timeline from the first to the last timed clip (as the stage's)."""
        busy, total = span_seconds(self.spans, self.cuda)
        return busy / total if total > 0 else 0.0


def bench_dv(tmp: Path, a: argparse.Namespace) -> dict[str, Any]:
    """The harness stage (decode workers overlapping the encoder) vs an upstream-style serial loop."""
    import torch

    from harness.bench import dv_encoder
    from harness.launch.worker import run_task

    tok = tmp / "dv"
    tok.mkdir()
    dv_encoder.write(str(tok))
    synth.write_tokenizer(tmp / "tiny")
    (tok / "decoder.jit").write_bytes((tmp / "tiny" / "decoder.jit").read_bytes())  # staged, never used
    workers = a.workers or max(1, (os.cpu_count() or 4) - 2)
    geometry = (a.frames, a.height, a.width)
    ceiling = _encoder_ceiling(tok / "encoder.jit", a.batch_size, a.device, geometry)
    n_serial = min(a.serial_clips, len(list((tmp / "videos").iterdir())))
    serial = _serial_loop(tmp, tok / "encoder.jit", n_serial, a.device, geometry)
    paths = _run_dir(tmp / "run", _spec(tmp, tok, 1, a.device, a.batch_size, workers, geometry))
    run_task(str(paths.root), "tokenize", 0)
    stats = read_json(paths.shard_manifest(0))["stats"]
    flops = dv_encoder.flops_per_clip(*geometry)
    return {
        "gpu": torch.cuda.get_device_name(0) if a.device == "cuda" else "none", "decode_workers": workers,
        "batch_size": a.batch_size, "encoder_tflop_per_clip": flops / 1e12, "encoder_only": ceiling,
        "harness": {"clips": stats["clips"], "clips_per_s": stats["clips_per_s"], "encoder_busy": stats["encoder_busy"],
                    "encoder_busy_steady": stats["encoder_busy_steady"], "seconds": stats["seconds"],
                    "achieved_tflops": stats["clips"] * flops / max(stats["encode_seconds"], 1e-9) / 1e12},
        "upstream_serial": serial,
        "speedup_vs_serial": stats["clips_per_s"] / serial["clips_per_s"],
        "goal": {"encoder_busy_steady_at_least": 0.9}, "meets_goal": stats["encoder_busy_steady"] >= 0.9,
        "note": "encoder_busy = CUDA-event time inside the encoder / wall time of the whole shard (start-up "
                "included); encoder_busy_steady = the same time / the GPU timeline from the start of the third "
                "batch (after TorchScript's profiling runs and cuDNN autotuning) to the end of the last: the gaps "
                "are the GPU waiting for decoded clips",
    }


def _encoder_ceiling(path: Path, batch: int, device: str, geometry: tuple[int, int, int]) -> dict[str, float]:
    """Encoder alone on a resident batch: the most any pipeline can reach."""
    import torch

    enc = Encoder.load(path, torch.device(device)).module
    x = torch.rand(batch, 3, *geometry, device=device).mul_(2).sub_(1).to(model_dtype(torch.device(device)))
    clock = _Clock(device)
    with torch.no_grad():
        for _ in range(3):
            enc(x)
        clock.sync()
        t0, n = time.perf_counter(), 5
        for _ in range(n):
            enc(x)
        clock.sync()
    dt = (time.perf_counter() - t0) / n
    return {"clips_per_s": batch / dt, "ms_per_batch": 1000 * dt}


def _serial_loop(tmp: Path, path: Path, n: int, device: str, geometry: tuple[int, int, int]) -> dict[str, float]:
    """Upstream's shape: for each video, decode + resize, encode alone, copy back, write; nothing overlaps."""
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from harness.lib.video import ClipShape, load_clip
    from harness.stages.dataset import to_uint16

    enc = Encoder.load(path, torch.device(device))
    videos = sorted((tmp / "videos").iterdir())[:n]
    builder = IndexedDatasetBuilder(str(tmp / "serial.bin"), dtype=np.uint16)
    shape, clock = ClipShape(*geometry), _Clock(device)

    def tensor(v: Path) -> Any:
        return normalise(torch.from_numpy(load_clip(v, shape))[None].to(device), enc.dtype)

    with torch.no_grad():
        for v in videos[:2]:  # warm-up (TorchScript profiling runs), as the harness's first batch
            enc.module(tensor(v))
        clock.sync()
        t0 = time.perf_counter()
        for v in videos:
            x = tensor(v)
            start = clock.start()
            idx = enc.module(x)[0]
            clock.stop(start)
            ids = idx.cpu().numpy().reshape(-1)
            builder.add_document(to_uint16(ids), [ids.size])
        wall = time.perf_counter() - t0
    builder.finalize(str(tmp / "serial.idx"))
    return {"clips": len(videos), "clips_per_s": len(videos) / wall, "encoder_busy": clock.busy / wall,
            "encoder_busy_steady": clock.steady(), "seconds": wall}


def main() -> None:
    print(json.dumps(run(sys.argv[1:]), indent=2, default=str))


if __name__ == "__main__":
    main()
