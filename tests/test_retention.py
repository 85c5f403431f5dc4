"""Checkpoint retention (`finetune.keep_optimizer`), mcore engine on CPU: with "last" only the newest complete
checkpoint keeps its optimizer state (a separate `optimizer/` folder), older ones keep their weights; a run
SIGKILLed mid-run resumes from the newest and trains exactly the uninterrupted "all" run's steps; every
checkpoint, weights-only or not, loads for inference with the same logits and exports; a removal cut short
between its two writes never leaves a checkpoint claiming optimizer state it lacks; the disk estimates."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from cosmos_util import make_run, make_spec, metrics, tiny_pretrained
from harness.cli import main
from harness.core import footprint
from harness.core.atomic import atomic_write_json
from harness.core.errors import HarnessError
from harness.core.models import PRESETS
from harness.core.paths import RunPaths
from harness.launch.worker import run_task
from harness.stages import infer

STEPS, SAVE = 15, 5  # three checkpoints: 5, 10, 15


def spec_for(pretrained: str, keep: str) -> Any:
    return make_spec(checkpoint=pretrained, max_steps=STEPS, save_every=SAVE, lr=1e-2, keep_optimizer=keep)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> str:
    return tiny_pretrained(tmp_path_factory)


@pytest.fixture(scope="module")
def run_all(tmp_path_factory: pytest.TempPathFactory, pretrained: str) -> RunPaths:
    """keep_optimizer = "all", uninterrupted: the reference."""
    paths = make_run(tmp_path_factory.mktemp("keep-all"), spec_for(pretrained, "all"))
    run_task(str(paths.root), "finetune", 0)
    return paths


def optimizer_kept(paths: RunPaths) -> dict[int, bool]:
    """Per complete checkpoint: trainer.json's claim, checked against the folder on disk."""
    from harness.cosmos.checkpoint import has_optimizer
    from harness.stages.finetune.checkpoints import complete_steps

    out = {}
    for s in complete_steps(paths):
        d = paths.checkpoint_dir(s)
        claim = json.loads((d / "trainer.json").read_text())["optimizer_state"]
        assert claim == (d / "optimizer").is_dir() == has_optimizer(d), (s, claim)
        assert (d / "weights" / "metadata.json").is_file()
        out[s] = claim
    return out


def on_disk(paths: RunPaths) -> dict[int, bool]:
    """Per complete checkpoint: whether its optimizer/ folder is there (read while the trainer writes)."""
    from harness.stages.finetune.checkpoints import complete_steps

    return {s: (paths.checkpoint_dir(s) / "optimizer").is_dir() for s in complete_steps(paths)}


def weights_hold_no_optimizer_state(d: Path) -> bool:
    from megatron.core import dist_checkpointing

    return not any(k.startswith("optimizer") for k in dist_checkpointing.load_tensors_metadata(str(d / "weights")))


def _worker(root: Path) -> subprocess.Popen[bytes]:
    script = root / "worker.py"
    script.write_text("import sys\nfrom harness.launch.worker import run_task\n"
                      "if __name__ == '__main__':\n    run_task(sys.argv[1], 'finetune', 0)\n")
    return subprocess.Popen([sys.executable, str(script), str(root)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def kill_once(paths: RunPaths, proc: subprocess.Popen[bytes], ready: Any, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.mark.timeout(600)
def test_last_keeps_optimizer_in_the_newest_only_and_resumes_after_a_kill(tmp_path: Path, pretrained: str,
                                                                        run_all: RunPaths) -> None:
    assert optimizer_kept(run_all) == {5: True, 10: True, 15: True}
    # the two folders hold what the plan's estimate says (fp32 on CPU: 4 B weights, 8 B Adam moments a param)
    d, n = run_all.checkpoint_dir(5), PRESETS["tiny"].params
    sizes = [sum(f.stat().st_size for f in (d / sub).rglob("*") if f.is_file()) for sub in ("weights", "optimizer")]
    assert sizes == pytest.approx([footprint.checkpoint_disk(n, "fp32", 1, "all").weights,
                                   footprint.checkpoint_disk(n, "fp32", 1, "all").optimizer], rel=0.05), sizes
    paths = make_run(tmp_path / "run", spec_for(pretrained, "last"))
    proc = _worker(paths.root)
    # SIGKILL mid-run, once step 10 is complete and step 5 stripped, before step 15
    kill_once(paths, proc, lambda: on_disk(paths) == {5: False, 10: True})
    assert optimizer_kept(paths) == {5: False, 10: True}, "the kill came too late: the run finished first"
    assert max(r["step"] for r in metrics(paths)) < STEPS
    run_task(str(paths.root), "finetune", 0)  # the requeue
    assert optimizer_kept(paths) == {5: False, 10: False, 15: True}
    got, want = metrics(paths), metrics(run_all)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))  # resumed at 10, not restarted at 0
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], rel=1e-5)
    assert json.loads(paths.checkpoints_json.read_text())["steps"] == [5, 10, 15]
    for s in (5, 10, 15):
        assert weights_hold_no_optimizer_state(paths.checkpoint_dir(s))
    # every checkpoint evaluates: infer's loader reads a weights-only one as it reads the newest
    toks = torch.randint(0, 64_000, (1, 47), generator=torch.Generator().manual_seed(0))
    for s in (5, 10, 15):
        a, b = (_logits(p, s, toks) for p in (paths, run_all))
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), (s, float((a - b).abs().max()))
    # and exports (weights only, as export always reads)
    out = tmp_path / "export-5"
    assert main(["export", str(paths.checkpoint_dir(5)), "--to", str(out), "--format", "safetensors",
                 "--dtype", "fp32"]) == 0
    assert (out / "model.safetensors").is_file()


def _logits(paths: RunPaths, step: int, toks: torch.Tensor) -> torch.Tensor:
    from harness.cosmos import parallel
    from harness.launch.worker import load_run_spec

    try:
        with torch.no_grad():
            return infer.load_model(paths.checkpoint_dir(step), load_run_spec(paths), tp=1)(toks)
    finally:
        parallel.shutdown()


def _fake_checkpoint(paths: RunPaths, step: int, *, optimizer: bool) -> Path:
    """The files retention reads (no tensors): trainer.json as the writer leaves it, optimizer/, done.json."""
    from harness.cosmos.checkpoint import write_side_files

    d = paths.checkpoint_dir(step)
    (d / "weights").mkdir(parents=True)
    if optimizer:
        (d / "optimizer").mkdir()
        (d / "optimizer" / "__0_0.distcp").write_bytes(b"x" * 100)
    write_side_files(d, context={"preset": "tiny", "step": step}, trainer={"step": step})
    return d


def test_a_removal_cut_short_claims_no_optimizer_state_and_is_finished_later(tmp_path: Path) -> None:
    from harness.cosmos.checkpoint import has_optimizer, strip_optimizer
    from harness.stages.finetune.checkpoints import keep_optimizer, resume_point

    paths = RunPaths(tmp_path)
    dirs = {s: _fake_checkpoint(paths, s, optimizer=True) for s in (5, 10, 15)}
    assert resume_point(paths) == (15, dirs[15])
    # killed between the two writes of a removal: marked weights-only, folder still there
    trainer = json.loads((dirs[5] / "trainer.json").read_text())
    atomic_write_json(dirs[5] / "trainer.json", {**trainer, "optimizer_state": False})
    assert not has_optimizer(dirs[5]) and (dirs[5] / "optimizer").is_dir()
    assert keep_optimizer(paths, 15, "all") == [] and (dirs[10] / "optimizer").is_dir()
    assert keep_optimizer(paths, 15, "last") == [5, 10]  # the leftover folder goes too
    assert [has_optimizer(dirs[s]) for s in (5, 10, 15)] == [False, False, True]
    assert not (dirs[5] / "optimizer").exists() and not (dirs[10] / "optimizer").exists()
    assert not strip_optimizer(dirs[5])
    # a newest checkpoint without optimizer state strips nothing: the resume point stays
    d20 = _fake_checkpoint(paths, 20, optimizer=False)
    assert keep_optimizer(paths, 20, "last") == [] and has_optimizer(dirs[15])
    assert resume_point(paths) == (15, dirs[15])
    shutil.rmtree(d20)
    # a checkpoint written before the split (optimizer state inside weights/, no key) counts as resumable
    legacy = paths.checkpoint_dir(20)
    (legacy / "weights").mkdir(parents=True)
    atomic_write_json(legacy / "trainer.json", {"step": 20})
    atomic_write_json(legacy / "done.json", {"step": 20})
    assert has_optimizer(legacy) and resume_point(paths) == (20, legacy)


def test_resume_never_picks_a_weights_only_checkpoint(tmp_path: Path) -> None:
    from harness.cosmos.checkpoint import strip_optimizer
    from harness.stages.finetune.checkpoints import resume_point

    paths = RunPaths(tmp_path)
    assert resume_point(paths) is None  # a fresh start
    d5 = _fake_checkpoint(paths, 5, optimizer=True)
    d10 = _fake_checkpoint(paths, 10, optimizer=False)  # its optimizer state removed by hand
    assert resume_point(paths) == (5, d5)  # the older one with optimizer state; training rewrites step 10
    assert strip_optimizer(d5) and not strip_optimizer(d10)
    with pytest.raises(HarnessError, match=r"no complete checkpoint has optimizer state \(steps \[5, 10\] are "
                                           r"weights only\).*model.checkpoint = .*step-00000010"):
        resume_point(paths)


def test_disk_estimates_follow_keep_optimizer() -> None:
    p = PRESETS["cosmos-4b"].params
    last, every = (footprint.checkpoint_disk(p, "bf16-mixed", 4, k) for k in ("last", "all"))
    assert (last.weights, last.optimizer) == (2 * p, 12 * p)
    assert every.final == every.peak == 4 * 14 * p == 4 * footprint.checkpoint_bytes(p, "bf16-mixed")
    assert last.final == 4 * 2 * p + 12 * p  # N x weights + 1 x optimizer
    assert last.peak == last.final + 12 * p  # + the optimizer state of the save being written
    one = footprint.checkpoint_disk(p, "bf16-mixed", 1, "last")
    assert one.final == one.peak == 14 * p
    assert footprint.checkpoint_disk(p, "fp32", 3, "last").final == 3 * 4 * p + 8 * p


def test_a_damaged_trainer_json_is_named(tmp_path: Path) -> None:
    """An empty trainer.json (a save killed mid-write of it) failed finetune with a JSON error naming no file."""
    from harness.core.errors import HarnessError
    from harness.cosmos.checkpoint import has_optimizer

    (tmp_path / "trainer.json").write_text("")
    with pytest.raises(HarnessError, match="trainer.json: cannot read .*delete this folder and resume"):
        has_optimizer(tmp_path)


def test_signal_checkpoints_go_once_a_newer_one_is_complete(tmp_path: Path) -> None:
    """Each time-limit requeue saved a whole checkpoint at the signal's step (72, 151, ...) that was never removed
    nor evaluated: with "last" they go once a newer checkpoint holds the resume point; planned ones stay."""
    from harness.stages.finetune.checkpoints import complete_steps, drop_unplanned

    paths = RunPaths(tmp_path)
    for s in (72, 100, 151):
        _fake_checkpoint(paths, s, optimizer=True)
    assert drop_unplanned(paths, 151, (100, 200), "all") == []
    assert drop_unplanned(paths, 151, (100, 200), "last") == [72]
    assert complete_steps(paths) == [100, 151] and not paths.checkpoint_dir(72).exists()
    _fake_checkpoint(paths, 200, optimizer=True)
    assert drop_unplanned(paths, 200, (100, 200), "last") == [151] and complete_steps(paths) == [100, 200]
