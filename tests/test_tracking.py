"""Experiment tracking: TensorBoard event files read back with TensorBoard's own reader hold the values of
metrics.jsonl (each step once, also after a resume) and the report stage's per-checkpoint evaluation means; a
W&B offline run directory holds the same values and no key; [tracking] is validated in one line. The NeMo
engine's events are checked in tests/test_nemo_engine.py (its fresh and resumed runs)."""

from __future__ import annotations

import json
import secrets
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest

from cosmos_util import assert_same_scalars, make_run, make_spec, metrics, tb_scalars, tracked_scalars, val_metrics
from harness.core import spec as spec_mod
from harness.core.errors import SpecError
from harness.core.evalrecords import ShardRecord, VideoRecord
from harness.core.paths import RunPaths
from harness.launch.worker import run_task
from harness.report import build as report
from harness.report import tracking


@pytest.mark.timeout(120)
def test_tensorboard_events_equal_metrics_jsonl_and_resume_logs_each_step_once(tmp_path: Path) -> None:
    # keep_optimizer = "all": the requeue below resumes from step 2, which "last" would have made weights-only
    paths = make_run(tmp_path / "run", make_spec(max_steps=4, save_every=2, keep_optimizer="all"))
    run_task(str(paths.root), "finetune", 0)
    recs = metrics(paths)
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    got = tb_scalars(paths.tensorboard_train)
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/mfu", "val/loss"} <= set(got)
    assert list(got["val/loss"]) == [0, 2, 4]
    assert_same_scalars(got, tracked_scalars(recs + val_metrics(paths)))
    assert got["train/mfu"][4] == pytest.approx(recs[-1]["tflops"] / report.PEAK_TFLOPS, rel=1e-6)

    # a requeue that finds only the step-2 checkpoint: steps 3 and 4 are recomputed (other timings)
    shutil.rmtree(paths.checkpoint_dir(4))
    paths.marker("finetune", 0).unlink()
    run_task(str(paths.root), "finetune", 0)
    again = metrics(paths)
    assert [r["step"] for r in again] == [1, 2, 3, 4]
    assert again[2]["step_time_s"] != recs[2]["step_time_s"]
    assert len(list((paths.tensorboard_train).glob("events.out.tfevents.*"))) == 2
    assert [r["step"] for r in val_metrics(paths)] == [0, 2, 4]  # step 2's point kept with its checkpoint
    assert_same_scalars(tb_scalars(paths.tensorboard_train), tracked_scalars(again + val_metrics(paths)))


def _shard(videos: list[tuple[str, float, float]]) -> ShardRecord:
    """One evaluate task's file: per-video records and their means (what harness.stages.evaluate writes)."""
    from harness.core.evalstats import video_means

    vids = [{"name": n, "psnr": p, "ssim": s} for n, p, s in videos]
    mean = video_means([VideoRecord.from_json(v) for v in vids], ("psnr", "ssim")).to_json()
    return ShardRecord.from_json({"videos": vids, "mean": mean, "frames": "all", "failed": []})


def test_evaluation_means_per_checkpoint_over_all_shards_rewritten_not_appended(tmp_path: Path) -> None:
    paths = RunPaths(tmp_path / "run")
    evals = {10: [_shard([("a", 20.0, 0.5), ("b", 22.0, 0.7)]), _shard([("c", 30.0, 0.9)])],
             20: [_shard([("a", 25.0, 0.6), ("b", 27.0, 0.8)]), _shard([("c", 26.0, 0.7)])]}
    cks = report.checkpoints(evals, shards_planned=2)
    for _ in range(2):  # `harness report` after the report stage: same values, still one per checkpoint
        tracking.log_evaluation(spec_mod.TrackingSection(), paths, cks)
    got = tb_scalars(paths.tensorboard_eval)
    assert got["eval/psnr_mean"] == pytest.approx({10: 24.0, 20: 26.0})
    assert got["eval/ssim_mean"] == pytest.approx({10: 0.7, 20: 0.7})
    assert got["eval/videos"] == {10: 3.0, 20: 3.0}
    assert [p.name for p in paths.tensorboard_dir.iterdir()] == ["eval"]


def test_report_stage_logs_the_checkpoint_means_it_reports(tmp_path: Path) -> None:
    """The report stage (the one place that sees every shard) writes eval/ with the means of report.json; a
    checkpoint whose evaluation is missing has no point."""
    from harness.report import stage
    from test_report import make_results

    paths, plan, _ = make_results(tmp_path, skip_eval=30)
    stage.run(plan.spec, 0, paths)
    doc = json.loads((tmp_path / "results" / paths.run_id / "report.json").read_text())
    want = {c["step"]: c for c in doc["checkpoints"]}
    assert sorted(want) == [10, 20, 40]
    got = tb_scalars(paths.tensorboard_eval)
    assert got["eval/psnr_mean"] == pytest.approx({s: c["psnr"] for s, c in want.items()}, rel=1e-6)
    assert got["eval/ssim_mean"] == pytest.approx({s: c["ssim"] for s, c in want.items()}, rel=1e-6)


def test_event_files_are_written_without_torch(tmp_path: Path) -> None:
    """The report stage writes eval/ events; through torch.utils.tensorboard that meant a torch import (3.7 s
    of the stage's 8 s on 2 cores) in a stage that computes nothing."""
    import subprocess
    import sys

    code = ("import sys; from pathlib import Path; from harness.report import tracking; "
            "w = tracking.EventWriter(Path(sys.argv[1]), purge_step=3); w.add_scalar('eval/psnr_mean', 31.5, 3); "
            "w.close(); sys.exit(sorted(m for m in sys.modules if m.split('.')[0] == 'torch') != [])")
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path)]).returncode == 0
    assert tb_scalars(tmp_path) == {"eval/psnr_mean": {3: pytest.approx(31.5)}}


def test_sync_without_offline_runs_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from harness import cli
    from test_report import make_results

    paths, _, _ = make_results(tmp_path)
    assert cli.main(["sync", str(paths.root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{paths.root / 'wandb'}: no offline W&B runs"), err


def test_tracking_spec_section_validated_in_one_line() -> None:
    spec = spec_mod.from_dict({"data": {"videos": "/x"}, "tracking": {"wandb": True, "wandb_project": "p1"}})
    assert spec.tracking.wandb and spec.tracking.wandb_project == "p1" and spec.tracking.wandb_entity == ""
    for bad, key in (({"wandb": "yes"}, "tracking.wandb"), ({"wandb_project": "a b"}, "tracking.wandb_project"),
                     ({"wandb_key": "x"}, "tracking.wandb_key")):
        with pytest.raises(SpecError) as e:
            spec_mod.from_dict({"data": {"videos": "/x"}, "tracking": bad})
        lines = str(e.value).splitlines()
        assert len(lines) == 1 and key in lines[0], lines


def test_validate_says_in_one_line_when_wandb_is_asked_for_but_not_installed(tmp_path: Path) -> None:
    """`sys.modules["wandb"] = None` is Python's own way to make a package unimportable (find_spec -> None)."""
    import subprocess
    import sys

    spec = tmp_path / "run.toml"
    quickstart = Path(__file__).resolve().parents[1] / "configs" / "quickstart.toml"
    spec.write_text(quickstart.read_text() + "\n[tracking]\nwandb = true\n")
    code = ("import sys; sys.modules['wandb'] = None; from harness.cli import main; "
            f"sys.exit(main(['validate', {str(spec)!r}]))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = [ln for ln in p.stderr.splitlines() if "tracking" in ln]
    assert p.returncode == 2 and len(lines) == 1, p.stdout + p.stderr
    assert lines[0].startswith(f"{spec}: tracking.wandb") and "pip install -e '.[wandb]'" in lines[0]


# ---------------------------------------------------------------------------------------------------- W&B
def _wandb_records(run_dir: Path) -> list[Any]:
    """The records of an offline run's transaction log (W&B's LevelDB-style log: 7-byte file header, 32 KiB
    blocks, records with a 7-byte header crc32/length/type, FULL=1 FIRST=2 MIDDLE=3 LAST=4)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = next(run_dir.glob("*.wandb")).read_bytes()
    assert data[:4] == b":W&B"
    pos, out, buf = 7, [], b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


@pytest.mark.timeout(120)
def test_wandb_offline_run_holds_the_metrics_jsonl_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    key = "wb" + secrets.token_hex(20)
    monkeypatch.setenv("WANDB_API_KEY", key)  # present in the task's environment: must reach no file
    spec = spec_mod.from_dict({**spec_mod.to_dict(make_spec(max_steps=3, save_every=3)),
                               "tracking": {"wandb": True, "wandb_project": "harness-test"}})
    paths = make_run(tmp_path / "run", spec)
    run_task(str(paths.root), "finetune", 0)
    runs = tracking.offline_runs(paths)
    assert len(runs) == 1
    history = {}
    for rec in _wandb_records(runs[0]):
        if rec.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
            history[rec.history.step.num] = items
    want = tracked_scalars(metrics(paths) + val_metrics(paths))
    assert sorted(history) == [0, 1, 2, 3] and "val/loss" in history[0] and "val/loss" in history[3]
    for tag, per_step in want.items():
        assert {s: history[s][tag] for s in per_step} == pytest.approx(per_step, rel=1e-12), tag
    leaked = [p for p in paths.root.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
    assert not leaked
    cmd = tracking.sync_command(runs)
    assert cmd[-2:] == ["sync", str(runs[0])] and not any("KEY" in c for c in cmd)


def test_sync_that_wandb_reports_failed_is_a_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`wandb sync` exits 0 after "ERROR Failed to sync all data" (here: a cut-short offline run, and a server
    that refuses connections); the harness says failed, exit 2, instead of "synced"."""
    from harness import cli
    from test_report import make_results

    pytest.importorskip("wandb")
    paths, _, _ = make_results(tmp_path)
    run = paths.wandb_runs / "offline-run-20260101_000000-abc"
    run.mkdir(parents=True)
    (run / "run-abc.wandb").write_bytes(b"cut short")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert cli.main(["sync", str(paths.root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "wandb sync" in err[0] and "ERROR" in err[0] and "k" * 40 not in err[0], err


def test_sync_names_wandbs_cause_not_its_log_pointer() -> None:
    """Without a key `wandb sync` prints "ERROR Find detailed error logs at ..." first and the cause after."""
    from harness.report.tracking import sync_errors

    lines = ["wandb: ERROR Find detailed error logs at: /x/debug-cli.root.log",
             "Error: No API key configured. Use `wandb login` to log in."]
    assert sync_errors(lines) == [lines[1]]
    assert sync_errors(["wandb: ERROR Failed to sync all data"]) == ["wandb: ERROR Failed to sync all data"]
    assert sync_errors(lines[:1]) == lines[:1] and sync_errors(["synced"]) == []
