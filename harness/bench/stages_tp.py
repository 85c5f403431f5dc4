"""`harness bench stages_tp`: the finetune and infer STAGES on several ranks, as a user's run drives them.

1. A whole run through `harness submit --executor local` (stage-assets, the real tokenize and merge stages on
   synthetic clips, finetune at TP=N with submitit's local executor starting the N ranks as srun would, infer at
   TP=1 loading each TP=N checkpoint, evaluate, report).
2. A second run directory on the same dataset: the finetune stage started as one process that spawns its ranks,
   killed (SIGKILL, no chance to save) after the first planned checkpoint, then resumed under
   `torchrun --nproc-per-node N` from that checkpoint; every step must be in metrics.jsonl exactly once, and the
   losses are compared with run 1's. Then the infer stage at infer.tensor_parallel = N.
3. The same finetune at TP=1 from the same pretrained weights: its losses against TP=N's (bf16 on GPUs).

    python -m harness.bench.stages_tp --tp 2 --out results/bench/h200x2     # two GPUs
    python -m harness.bench.stages_tp --tp 2 --out /tmp/x                   # CPU: gloo ranks, a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from harness.core.paths import RunPaths, atomic_write_json, read_json


def spec_text(assets: dict[str, str], preset: str, tp: int, steps: int, save_every: int, cuda: bool) -> str:
    gpus = tp if cuda else 0
    return f"""
[run]
name = "stages-tp{tp}"
seed = 3
[model]
preset = "{preset}"
checkpoint = "{assets['pretrained']}"
[tokenizer]
encoder = "{assets['tokenizer_dir']}"
decoder = "{assets['tokenizer_dir']}"
compression = [4, 8, 8]
[video]
width = 64
height = 48
num_frames = 9
fps = 8
[data]
videos = "{assets['videos']}"
split = [6, 1, 1]
[assets]
hf_home = "{assets['hf_home']}"
[tokenize]
shards = 2
[finetune]
engine = "mcore"
tensor_parallel = {tp}
gpus_per_node = {gpus}
global_batch_size = 2
micro_batch_size = 2
lr = 3e-3
min_lr = 3e-3
max_steps = {steps}
save_every = {save_every}
max_epochs = 1000
precision = "{'bf16-mixed' if cuda else 'fp32'}"
[infer]
max_inputs = 2
batch_size = 2
gpus_per_node = {1 if cuda else 0}
"""


def steps_logged(paths: RunPaths) -> list[dict[str, Any]]:
    if not paths.metrics_jsonl.is_file():
        return []
    return [json.loads(ln) for ln in paths.metrics_jsonl.read_text().splitlines() if ln.strip()]


def whole_run(work: Path, text: str) -> tuple[RunPaths, dict[str, Any]]:
    from harness import ops
    from harness.ops import submit as launching

    spec = work / "run.toml"
    spec.write_text(text)
    os.chdir(work)
    t0 = time.perf_counter()
    res = launching.submit(spec, "local")
    code = ops.wait(res.paths, timeout_s=3600)
    paths = res.paths
    ck = read_json(paths.checkpoints_json)
    evals = sorted(p.name for p in (paths.root / "evaluate").rglob("*.json")) if (paths.root / "evaluate").exists() \
        else []
    videos = sorted(str(p.relative_to(paths.root)) for p in (paths.root / "infer").rglob("*.mp4"))
    return paths, {"exit_code": code, "wall_s": time.perf_counter() - t0, "checkpoints": ck,
                   "steps_logged": [r["step"] for r in steps_logged(paths)], "infer_videos": videos,
                   "evaluate_files": evals}


def fresh_copy(a: RunPaths, b_root: Path) -> RunPaths:
    """Run 1's spec, plan and merged dataset in a new run directory; nothing of finetune or after."""
    b = RunPaths(b_root)
    b_root.mkdir(parents=True)
    for name in ("spec.json", "plan.json", "assets.json"):
        shutil.copy(a.root / name, b_root / name)
    shutil.copytree(a.dataset_prefix.parent, b.dataset_prefix.parent)
    for stage in ("stage-assets", "tokenize", "merge"):
        if (a.root / "done" / stage).exists():
            shutil.copytree(a.root / "done" / stage, b_root / "done" / stage)
    return b


def kill_after_checkpoint(b: RunPaths, step: int, timeout_s: float = 1800) -> dict[str, Any]:
    """The stage as one process (it spawns its ranks); SIGKILL to its process group once checkpoint `step` is
    complete and training went on past it."""
    from harness.cosmos import checkpoint as ckpt

    p = subprocess.Popen([sys.executable, "-m", "harness.stages", str(b.root), "finetune", "0"],
                         start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and p.poll() is None:
        if ckpt.is_complete(b.checkpoint_dir(step)) and len(steps_logged(b)) > step:
            break
        time.sleep(0.02)
    finished = p.poll() is not None
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    return {"killed_at_logged_steps": [r["step"] for r in steps_logged(b)],
            "complete_checkpoints": ckpt.complete_steps(b), "finished_before_kill": finished}


def torchrun_stage(b: RunPaths, stage: str, task: int, world: int) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
                    "-m", "harness.stages", str(b.root), stage, str(task)], check=True)
    return time.perf_counter() - t0


def set_tp(b: RunPaths, section: str, tp: int) -> None:
    raw = read_json(b.spec_json)
    raw[section]["tensor_parallel"] = tp
    raw[section]["gpus_per_node"] = tp if torch.cuda.is_available() else 0
    atomic_write_json(b.spec_json, raw)


def tp1_losses(a: RunPaths, root: Path) -> dict[int, float]:
    """The same finetune (same pretrained start, data, seed) at TP=1, as one process."""
    c = fresh_copy(a, root)
    set_tp(c, "finetune", 1)
    subprocess.run([sys.executable, "-m", "harness.stages", str(c.root), "finetune", "0"], check=True)
    return {r["step"]: r["loss"] for r in steps_logged(c)}


def run(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="harness bench stages_tp")
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=20, help="enough that the kill lands mid-run on a fast GPU")
    ap.add_argument("--save-every", type=int, default=2)
    ap.add_argument("--out", default="results/bench")
    a = ap.parse_args(argv)
    from harness.lib import synth
    from harness.cosmos.pretrained import write_tiny_pretrained
    from harness.core.models import PRESETS

    cuda = torch.cuda.is_available()
    cwd = Path.cwd()
    out_dir = (cwd / a.out).resolve()
    result: dict[str, Any] = {"bench": "stages_tp", "tp": a.tp, "preset": a.preset, "device": (
        torch.cuda.get_device_name() if cuda else "cpu"), "gpus": torch.cuda.device_count() if cuda else 0,
        "command": "python -m harness.bench.stages_tp " + " ".join(argv if argv is not None else sys.argv[1:])}
    with tempfile.TemporaryDirectory(prefix="bench-stages-") as d:
        work = Path(d)
        assets = synth.make_quickstart(work / "assets", clips=8, bad_files=False)
        assets["pretrained"] = str(work / "assets" / "pretrained")
        write_tiny_pretrained(assets["pretrained"], PRESETS[a.preset], seed=1)
        out_file = out_dir / f"stages-tp{a.tp}.json"
        try:
            _phases(a, work, assets, cuda, result, out_file)
        finally:
            os.chdir(cwd)
            atomic_write_json(out_file, result)
    return result


def _phases(a: argparse.Namespace, work: Path, assets: dict[str, str], cuda: bool, result: dict[str, Any],
            out_file: Path) -> None:
    """Each phase's figures are written as soon as they exist: a run cut short still reports what it did."""
    a_paths, result["run1_local_executor"] = whole_run(work, spec_text(assets, a.preset, a.tp, a.steps,
                                                                       a.save_every, cuda))
    atomic_write_json(out_file, result)
    b = fresh_copy(a_paths, work / "run2")
    result["run2_kill"] = kill_after_checkpoint(b, a.save_every)
    result["run2_resume_torchrun_s"] = torchrun_stage(b, "finetune", 0, a.tp)
    logged = steps_logged(b)
    result["run2_steps_logged"] = [r["step"] for r in logged]
    result["run2_every_step_once"] = result["run2_steps_logged"] == list(range(1, a.steps + 1))
    result["run2_resumed_mid_run"] = max(result["run2_kill"]["complete_checkpoints"]) < a.steps
    losses1 = {r["step"]: r["loss"] for r in steps_logged(a_paths)}
    result["loss_max_abs_diff_run2_vs_run1"] = max(abs(r["loss"] - losses1[r["step"]]) for r in logged)
    result["losses_run1"] = [losses1[s] for s in sorted(losses1)]
    atomic_write_json(out_file, result)
    set_tp(b, "infer", a.tp)
    last = len(read_json(b.checkpoints_json)["steps"]) - 1
    result["run2_infer_tp_s"] = torchrun_stage(b, "infer", last, a.tp)
    result["run2_infer_tp_videos"] = sorted(p.name for p in (b.root / "infer").rglob("*.mp4"))
    atomic_write_json(out_file, result)
    tp1 = tp1_losses(a_paths, work / "run3")
    result["losses_tp1"] = [tp1[k] for k in sorted(tp1)]
    result["loss_max_abs_diff_tp1_vs_tp"] = max(abs(tp1[k] - losses1[k]) for k in tp1)
    result["ok"] = bool(result["run1_local_executor"]["exit_code"] == 0 and result["run2_every_step_once"]
                        and result["run2_resumed_mid_run"] and result["run2_infer_tp_videos"])


if __name__ == "__main__":
    print(json.dumps(run(), indent=2, default=str))
