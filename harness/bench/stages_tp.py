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
from typing import Any, Callable

import torch

from harness.bench import at_least
from harness.core import metricslog
from harness.core.atomic import atomic_write_json, read_json
from harness.core.paths import RunPaths
from harness.core.rundir import read_spec_record
from harness.launch.backend import pid_alive


def spec_text(assets: dict[str, str], preset: str, tp: int, steps: int, save_every: int, cuda: bool,
              video: tuple[int, int, int] = (9, 48, 64), context: int = 2) -> str:
    """`video`: frames, height, width; (17, 320, 512) with 4x8x8 is the seed's 5 x 40 x 64 = 12,800-token grid.
    `context`: latent frames infer conditions on (the rest of the grid is generated)."""
    gpus = tp if cuda else 0
    frames, height, width = video
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
width = {width}
height = {height}
num_frames = {frames}
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
micro_batch_size = {1 if preset.startswith("cosmos") else 2}
lr = 3e-3
min_lr = 3e-3
max_steps = {steps}
save_every = {save_every}
max_epochs = 1000
precision = "{'bf16-mixed' if cuda else 'fp32'}"
[infer]
max_inputs = {1 if preset.startswith("cosmos") else 2}
context_latent_frames = {context}
batch_size = 2
gpus_per_node = {1 if cuda else 0}
"""


def steps_logged(paths: RunPaths) -> list[dict[str, Any]]:
    return metricslog.rows(paths.metrics_jsonl)


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
    evals = sorted(p.name for p in paths.eval_dir.rglob("*.json")) if paths.eval_dir.exists() else []
    videos = sorted(str(p.relative_to(paths.root)) for p in paths.infer_root.rglob("*.mp4"))
    return paths, {"exit_code": code, "wall_s": time.perf_counter() - t0, "checkpoints": ck,
                   "steps_logged": [r["step"] for r in steps_logged(paths)], "infer_videos": videos,
                   "evaluate_files": evals}


def fresh_copy(a: RunPaths, b_root: Path) -> RunPaths:
    """Run 1's spec, plan and merged dataset in a new run directory; nothing of finetune or after."""
    b = RunPaths(b_root)
    b_root.mkdir(parents=True)
    for src, dst in ((a.spec_json, b.spec_json), (a.plan_json, b.plan_json), (a.assets_json, b.assets_json)):
        shutil.copy(src, dst)
    shutil.copytree(a.dataset_dir, b.dataset_dir)
    for stage in ("stage-assets", "tokenize", "merge"):
        if a.markers_dir(stage).exists():
            shutil.copytree(a.markers_dir(stage), b.markers_dir(stage))
    return b


def kill_after_checkpoint(b: RunPaths, step: int, timeout_s: float = 1800) -> dict[str, Any]:
    """The stage as one process (it spawns its ranks); SIGKILL to its process group once checkpoint `step` is
    complete and training went on past it."""
    from harness.cosmos import checkpoint as ckpt
    from harness.stages.finetune.checkpoints import complete_steps

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
            "complete_checkpoints": complete_steps(b), "finished_before_kill": finished}


def torchrun_stage(b: RunPaths, stage: str, task: int, world: int) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
                    "-m", "harness.stages", str(b.root), stage, str(task)], check=True)
    return time.perf_counter() - t0


def set_tp(b: RunPaths, section: str, tp: int) -> None:
    raw = read_spec_record(b)
    raw[section]["tensor_parallel"] = tp
    raw[section]["gpus_per_node"] = tp if torch.cuda.is_available() else 0
    atomic_write_json(b.spec_json, raw)


def tp1_losses(a: RunPaths, root: Path) -> dict[int, float]:
    """The same finetune (same pretrained start, data, seed) at TP=1, as one process."""
    c = fresh_copy(a, root)
    set_tp(c, "finetune", 1)
    subprocess.run([sys.executable, "-m", "harness.stages", str(c.root), "finetune", "0"], check=True)
    return {r["step"]: r["loss"] for r in steps_logged(c)}


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The harness CLI as a user types it (a child process, so this bench follows the commands, not internals)."""
    p = subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True)
    if check and p.returncode:
        raise RuntimeError(f"harness {' '.join(args)}: exit {p.returncode}: {(p.stderr or p.stdout).strip()[-800:]}")
    return p


class Timeline:
    """Seconds since the flow began at which each event was first seen: the bench's own steps (`mark`) and what
    the run wrote (`poll`: stage completion markers, complete checkpoints, logged steps), so a run cut short by a
    time limit still says where its time went."""

    def __init__(self, out: dict[str, Any], save: Callable[[], None]) -> None:
        self.t0 = time.perf_counter()
        self.out = out
        self.events: dict[str, float] = out.setdefault("timeline_s", {})
        self.save = save

    def mark(self, name: str) -> None:
        self.events[name] = round(time.perf_counter() - self.t0, 1)
        self.save()

    def poll(self, paths: RunPaths) -> None:
        from harness.cosmos import checkpoint as ckpt

        seen = [f"done {m.parent.name}/{int(m.stem)}" for m in sorted(paths.done_dir.glob("*/*.json"))]
        seen += [f"checkpoint {s} complete" for s in paths.checkpoint_steps()
                 if ckpt.is_complete(paths.checkpoint_dir(s))]
        rows = steps_logged(paths)
        seen += [f"step {r['step']} logged" for r in rows]
        self.out["steps_logged"], self.out["losses"] = [r["step"] for r in rows], [r["loss"] for r in rows]
        new = [e for e in seen if e not in self.events]
        for e in new:
            self.events[e] = round(time.perf_counter() - self.t0, 1)
        if new:
            self.save()


def wait_local(paths: RunPaths, timeout_s: float, timeline: Timeline | None = None) -> None:
    """Until the local driver has finished its pass over the DAG (it writes local_done.json last) and its process
    has exited (`harness resume` refuses while a driver is alive)."""
    done = paths.local_done_json
    deadline = time.monotonic() + timeout_s
    while not done.exists() or pid_alive(read_json(paths.local_state_json)["driver_pid"]):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{paths.root}: local driver still running after {timeout_s:.0f} s")
        if timeline:
            timeline.poll(paths)
        time.sleep(0.5)
    if timeline:
        timeline.poll(paths)


def kill_ranks(paths: RunPaths, stage: str) -> list[int]:
    """SIGKILL every process of the stage's task (submitit's local executor starts the ranks; their command
    lines name the stage's log folder): no handler runs, as on a node that dies."""
    pids = [int(p) for p in subprocess.run(["pgrep", "-f", str(paths.logs(stage))], capture_output=True,
                                           text=True).stdout.split()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def kill_resume_flow(work: Path, text: str, first_ckpt: int, out: dict[str, Any], save: Callable[[], None],
                     timeout_s: float = 3600) -> None:
    """The user's path end to end: `harness submit --executor local`; as soon as the first checkpoint is complete
    (training is then in the next step), every finetune rank is SIGKILLed; `harness resume RUN` then finishes the
    run (the finetune stage resumes at TP=N from that checkpoint, infer loads each TP=N checkpoint at TP=1).
    Figures go into `out` as they exist; `save` writes them."""
    from harness.cosmos import checkpoint as ckpt

    spec = work / "run.toml"
    spec.write_text(text)
    os.chdir(work)
    tl = Timeline(out, save)
    out["submit"] = cli("submit", str(spec), "--executor", "local", "--no-doctor").stdout[-400:]
    tl.mark("submitted")
    # Resolved: the stage processes' command lines name the real path (--runs-on may be reached by a symlink).
    paths = RunPaths(next(p for p in (work / "runs").iterdir() if p.is_dir()).resolve())
    out["run_dir"] = str(paths.root)
    deadline = time.monotonic() + timeout_s
    while not ckpt.is_complete(paths.checkpoint_dir(first_ckpt)):
        if time.monotonic() > deadline or paths.local_done_json.exists():
            raise RuntimeError(f"{paths.root}: no checkpoint {first_ckpt} (see harness status)")
        tl.poll(paths)
        time.sleep(0.02)
    out["killed_pids"] = kill_ranks(paths, "finetune")
    tl.mark("finetune ranks killed")
    if not out["killed_pids"]:
        raise RuntimeError(f"{paths.root}: no finetune process found to kill (pgrep -f {paths.logs('finetune')})")
    out["killed_at_logged_steps"] = [r["step"] for r in steps_logged(paths)]
    wait_local(paths, timeout_s, tl)
    out["status_after_kill"] = cli("status", str(paths.root), check=False).stdout[-1500:]
    paths.local_done_json.unlink()
    out["resume"] = cli("resume", str(paths.root)).stdout[-600:]
    tl.mark("resumed")
    if "nothing to resubmit" in out["resume"]:
        raise RuntimeError(f"{paths.root}: the run had finished before the kill: {out['resume'].strip()}")
    wait_local(paths, timeout_s, tl)
    tl.mark("driver finished")
    out["status_final"] = cli("status", str(paths.root), check=False).stdout[-2000:]
    out["wall_s"] = round(time.perf_counter() - tl.t0, 1)
    out["checkpoints"] = read_json(paths.checkpoints_json)
    out["infer_videos"] = sorted(str(p.relative_to(paths.root)) for p in paths.infer_root.rglob("*.mp4"))
    out["evaluate_files"] = sorted(str(p.relative_to(paths.root)) for p in paths.eval_dir.rglob("*.json"))
    report = work / "results" / paths.root.name / "report.json"
    out["report_means"] = read_json(report).get("checkpoints") if report.is_file() else None


def run(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="harness bench stages_tp")
    ap.add_argument("--tp", type=at_least(1), default=2)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=at_least(1), default=20, help="enough that the kill lands mid-run on a fast GPU")
    ap.add_argument("--save-every", type=at_least(1), default=2)
    ap.add_argument("--out", default="results/bench")
    ap.add_argument("--flow", choices=["full", "kill-resume"], default="full",
                    help="full: whole run + kill/torchrun resume + TP inference + TP=1 losses; kill-resume: the "
                         "user's path only (submit, kill the finetune ranks, harness resume), for model shapes "
                         "whose checkpoints fill the disk (a Cosmos-4B checkpoint with Adam state is ~56 GB)")
    ap.add_argument("--video", type=at_least(1), nargs=3, default=[9, 48, 64], metavar=("FRAMES", "H", "W"))
    ap.add_argument("--infer-context", type=at_least(1), default=2, metavar="LATENT_FRAMES",
                    help="latent frames infer conditions on; the rest of the grid is generated")
    ap.add_argument("--runs-on", default="", help="put the bench's work folder (pretrained weights, runs, "
                    "checkpoints) in this folder, e.g. a tmpfs when the disk cannot hold two Cosmos-4B checkpoints "
                    "beside the pretrained weights")
    a = ap.parse_args(argv)
    from harness.core.models import PRESETS
    from harness.cosmos.pretrained import write_tiny_pretrained
    from harness.lib import synth

    cuda = torch.cuda.is_available()
    cwd = Path.cwd()
    # `timeout` sends SIGTERM: leave through `finally`, which writes what was measured so far.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out_dir = (cwd / a.out).resolve()
    result: dict[str, Any] = {"bench": "stages_tp", "tp": a.tp, "preset": a.preset, "device": (
        torch.cuda.get_device_name() if cuda else "cpu"), "gpus": torch.cuda.device_count() if cuda else 0,
        "command": "python -m harness.bench.stages_tp " + " ".join(argv if argv is not None else sys.argv[1:])}
    if a.runs_on:
        Path(a.runs_on).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-stages-", dir=a.runs_on or None) as d:
        work = Path(d)
        assets = synth.make_quickstart(work / "assets", clips=8, bad_files=False)
        assets["pretrained"] = str(work / "assets" / "pretrained")
        t0 = time.perf_counter()
        write_tiny_pretrained(assets["pretrained"], PRESETS[a.preset], seed=1)
        result["write_pretrained_s"] = round(time.perf_counter() - t0, 1)
        suffix = "" if a.flow == "full" else f"-{a.preset}-kill-resume"
        out_file = out_dir / f"stages-tp{a.tp}{suffix}.json"
        try:
            if a.flow == "full":
                _phases(a, work, assets, cuda, result, out_file)
            else:
                text = spec_text(assets, a.preset, a.tp, a.steps, a.save_every, cuda, tuple(a.video),
                                 a.infer_context)
                r = result["run"] = {}
                kill_resume_flow(work, text, a.save_every, r, lambda: atomic_write_json(out_file, result))
                result["ok"] = bool(r["steps_logged"] == list(range(1, a.steps + 1)) and r["infer_videos"]
                                    and max(r["killed_at_logged_steps"]) < a.steps)
        except SystemExit as e:
            result["stopped"] = f"SystemExit({e.code}): a time limit's SIGTERM; the figures so far are kept"
            raise
        finally:
            os.chdir(cwd)
            atomic_write_json(out_file, result)
            keep_logs(work, out_file.with_suffix(".logs"))
    return result


def keep_logs(work: Path, dest: Path) -> None:
    """The runs' stage logs (text, small) beside the figures: the work folder is deleted on exit."""
    for log in (f for run in sorted((work / "runs").glob("*")) for f in RunPaths(run).logs_dir.rglob("*")):
        if log.is_file() and log.suffix in (".out", ".err", ".log", ".txt") and log.stat().st_size < 5_000_000:
            target = dest / log.relative_to(work / "runs")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(log, target)


def _phases(a: argparse.Namespace, work: Path, assets: dict[str, str], cuda: bool, result: dict[str, Any],
            out_file: Path) -> None:
    """Each phase's figures are written as soon as they exist: a run cut short still reports what it did."""
    a_paths, result["run1_local_executor"] = whole_run(work, spec_text(assets, a.preset, a.tp, a.steps,
                                                                       a.save_every, cuda, tuple(a.video)))
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
    result["run2_infer_tp_videos"] = sorted(p.name for p in b.infer_root.rglob("*.mp4"))
    atomic_write_json(out_file, result)
    tp1 = tp1_losses(a_paths, work / "run3")
    result["losses_tp1"] = [tp1[k] for k in sorted(tp1)]
    result["loss_max_abs_diff_tp1_vs_tp"] = max(abs(tp1[k] - losses1[k]) for k in tp1)
    result["ok"] = bool(result["run1_local_executor"]["exit_code"] == 0 and result["run2_every_step_once"]
                        and result["run2_resumed_mid_run"] and result["run2_infer_tp_videos"])


if __name__ == "__main__":
    print(json.dumps(run(), indent=2, default=str))
