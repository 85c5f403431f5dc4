"""A full disk is a reason a user can act on. The run directory lives on a small tmpfs (tests run
as root), sized so the tiny model's first checkpoint fits and its second does not: the task's reason names the
full filesystem and the checkpoint path, nothing completed before changes, and `harness resume` after the space
is freed completes the run. Real layers throughout: submitit's local executor, megatron-core's checkpoint
writer, torch's zip writer and the kernel's ENOSPC."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from harness.core import failures, footprint
from harness.core.atomic import read_json
from harness.core.models import PRESETS
from harness.launch import slurmstate
from harness.ops import state, status
from harness.ops import submit as launching
from reliability_helpers import harness, tiny_spec

pytestmark = pytest.mark.enospc


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A mount point for `mount -t tmpfs`; unmounted afterwards whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


def mount(mnt: Path, size: str) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], check=True, timeout=30)


def test_reason_is_the_message_never_a_frame(tmp_path: Path) -> None:
    submitit_text = ("Job (task=0) failed during processing with trace:\n----------------------\n"
                     "Traceback (most recent call last):\n  File \"<frozen runpy>\", line 88, in _run_code\n"
                     "    exec(code, run_globals)\nValueError: bad frame count 3\n----------------------\n"
                     "You can check full logs with 'job.stderr(0)'")
    assert failures.reason(submitit_text, tmp_path) == "ValueError: bad frame count 3"
    truncated = "Traceback (most recent call last):\n  File \"<frozen runpy>\", line 88, in _run_cod"
    assert failures.reason(truncated, tmp_path) == ""  # the caller then says the exit code, not a frame
    spawn = ("torch.multiprocessing.spawn.ProcessRaisedException: \n\n-- Process 1 terminated with the following "
             "error:\nTraceback (most recent call last):\n  File \"x.py\", line 1, in f\n"
             "RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598\n")
    got = failures.reason(spawn, tmp_path)
    assert got.startswith(f"no space left on {failures.filesystem(tmp_path)} for {tmp_path}: "), got
    assert got.endswith("(RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598)")


def test_slurm_reason_from_a_stderr_tail(tmp_path: Path) -> None:
    """On a cluster the reason comes from the task's stderr: a log cut mid-frame by the full disk gives no
    frame (status then shows the exit code), megatron's wording gives the full-disk line for the run directory."""
    log = tmp_path / "logs" / "finetune" / "7_0" / "7_0_0_log.out"
    log.parent.mkdir(parents=True)
    err = log.with_suffix(".err")
    err.write_text("[rank0]: Traceback (most recent call last):\n"
                   "[rank0]:   File \"<frozen runpy>\", line 88, in _run_cod")
    assert slurmstate.error_line(str(log), tmp_path) == ""
    err.write_text("srun: error: node1: task 0: Exited with exit code 1\n"
                   "[rank0]: RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598\n")
    got = slurmstate.error_line(str(log), tmp_path)
    assert got.startswith(f"no space left on {failures.filesystem(tmp_path)} for {tmp_path}: ") and "704 vs 598" in got


def test_each_layer_reports_a_full_disk_as_one_line(tmpfs: Path) -> None:
    import torch

    mount(tmpfs, "1m")
    caught: list[BaseException] = []
    try:
        (tmpfs / "big.bin").write_bytes(b"\0" * 2_000_000)
    except OSError as e:
        caught.append(e)
    try:
        torch.save(torch.zeros(500_000), tmpfs / "big.pt")
    except RuntimeError as e:
        caught.append(e)
    assert [type(e) for e in caught] == [OSError, RuntimeError], caught
    for e in caught:
        assert failures.is_no_space(e), e
        line = str(failures.as_no_space(e, tmpfs))
        assert line.startswith(f"no space left on tmpfs {tmpfs} for {tmpfs}"), line
        assert "\n" not in line and " free (" in line
    assert not failures.is_no_space(RuntimeError("unexpected keyword"))


def _checksums(root: Path, skip: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not rel.startswith(skip):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.mark.timeout(300)
def test_full_disk_at_a_checkpoint_then_resume(tmpfs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    need = footprint.checkpoint_bytes(PRESETS["tiny"].params, "fp32")  # CPU trains in fp32
    mount(tmpfs, f"{(3 * need) // 2**20 + 16}m")
    filler = tmpfs / "filler.bin"  # written first: the run then sees room for one checkpoint and a half
    filler.write_bytes(b"\0" * (failures.free_bytes(tmpfs) - need * 3 // 2 - 8_000_000))
    spec = tiny_spec(tmp_path, name="full", shards=1, clips=4, max_steps=2, save_every=1)
    spec.write_text(spec.read_text().replace(f'workdir = "{tmp_path / "runs"}"', f'workdir = "{tmpfs / "runs"}"'))
    monkeypatch.chdir(tmp_path)
    paths = launching.submit(spec, "local", doctor=False).paths
    assert paths.root.is_relative_to(tmpfs)
    assert status.wait(paths, 240, _console(), interval_s=0.5) == 1

    plan = launching.load_plan(paths)
    rows = {(r.stage, r.task): r for r in state.collect(paths, plan).rows}
    ft = rows[("finetune", 0)]
    step2 = paths.checkpoint_dir(2)
    assert ft.state == "FAILED", ft
    assert ft.reason.startswith(f"no space left on tmpfs {tmpfs} for {step2}: need ~{footprint.human(need)}, "), ft
    assert ft.reason.endswith(" free") and "\n" not in ft.reason, ft
    print("reason:", ft.reason)
    shown = harness("status", str(paths.root), cwd=tmp_path, env={"COLUMNS": "400"})
    assert f"no space left on tmpfs {tmpfs}" in shown.stdout, shown.stdout
    assert read_json(paths.checkpoints_json)["steps"] == [1] and not step2.exists()
    metrics = paths.metrics_jsonl.read_text().splitlines()
    assert [json.loads(ln)["step"] for ln in metrics if "val_loss" not in ln] == [1, 2]
    # the report runs after any outcome and is rebuilt by resume (with it the evaluation events it writes); the
    # rest completed before must stay as it is
    before = _checksums(paths.root, skip=("logs/", "local_", "jobs.json", "finetune/checkpoints.json",
                                          "finetune/metrics.jsonl", "report/", "done/report/", "tensorboard/eval/"))
    _timings(paths)
    assert "done/merge/000000.json" in before and "finetune/checkpoints/step-00000001/done.json" in before

    filler.unlink()
    res = harness("resume", str(paths.root), cwd=tmp_path)
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert status.wait(paths, 240, _console(), interval_s=0.5) == 0
    after = _checksums(paths.root, skip=("logs/",))
    # every file completed before the failure is unchanged, but step 1's optimizer state: once step 2 is complete
    # it goes (finetune.keep_optimizer = "last"), its weights stay
    step1 = "finetune/checkpoints/step-00000001/"
    kept = {k: v for k, v in before.items() if not k.startswith((step1 + "optimizer/", step1 + "trainer.json"))}
    assert {k: after.get(k) for k in kept} == kept
    assert any(k.startswith(step1 + "optimizer/") for k in before)
    assert not any(k.startswith(step1 + "optimizer/") for k in after)
    assert read_json(paths.checkpoint_dir(1) / "trainer.json")["optimizer_state"] is False
    assert paths.metrics_jsonl.read_text().splitlines()[0] == metrics[0]
    assert read_json(paths.checkpoints_json)["steps"] == [1, 2]
    _timings(paths)


def _timings(paths) -> None:  # type: ignore[no-untyped-def]
    st = read_json(paths.root / "local_state.json")["stages"]
    print({f"{s}[{t}]": round(e["end"] - e["start"], 1) for s, v in st.items()
           for t, e in v.items() if e.get("end") and e.get("start")})


def _console():  # type: ignore[no-untyped-def]
    from rich.console import Console

    return Console(record=True, width=250)


@pytest.mark.timeout(180)
def test_checkpoint_writer_meets_a_full_disk(tmpfs: Path, tmp_path: Path) -> None:
    """megatron-core's own writer on a disk too small for the weights: the partial checkpoint is removed (its space
    is free again) and the error is the one line; with the size known, nothing is written at all."""
    from harness.core import spec as spec_mod
    from harness.cosmos import checkpoint, parallel
    from harness.cosmos.model import build_model

    spec = spec_mod.load(tiny_spec(tmp_path, name="w", clips=1))
    mount(tmpfs, "16m")  # fp32 weights alone are ~33 MB
    parallel.init(1)
    try:
        model = build_model(spec.preset, spec.token_math.grid, tp=1)
        target, free0 = tmpfs / "step-00000001", failures.free_bytes(tmpfs)
        with pytest.raises(failures.NoSpaceError) as caught:
            checkpoint.save(target, model, None, trainer={"step": 1}, context={}, need_bytes=10**9)
        assert str(caught.value) == (f"no space left on tmpfs {tmpfs} for {target}: need ~1.0 GB, "
                                     f"{footprint.human(free0)} free")
        assert not target.exists()
        with pytest.raises(failures.NoSpaceError) as caught:
            checkpoint.save(target, model, None, trainer={"step": 1}, context={})
        assert str(caught.value).startswith(f"no space left on tmpfs {tmpfs} for "), caught.value
        # the writer's own words: torch's zip writer ("unexpected pos") or a plain write (errno 28), whichever of
        # megatron's parallel write workers meets the full disk first
        said = str(caught.value)
        assert "\n" not in said and ("unexpected pos" in said or "No space left" in said), said
        print("writer:", caught.value)
        assert not target.exists() and failures.free_bytes(tmpfs) == free0
    finally:
        parallel.shutdown()
