"""The run directory's layout and its records' readers (harness.core.paths, harness.core.rundir).

The layout is pinned name by name: runs already on disk (resume, status, report of an older run) are read with
these paths, so a renamed folder is a behaviour change that must show up here, not in a user's `harness status`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.core import plan as plan_mod
from harness.core import rundir
from harness.core import spec as spec_mod
from harness.core.atomic import atomic_write_json
from harness.core.errors import HarnessError
from harness.core.paths import RunPaths
from harness.ops.submit import Choice, write_run
from specs import TINY, build


def test_every_run_path_is_where_earlier_runs_put_it(tmp_path: Path) -> None:
    p = RunPaths(tmp_path)
    got = {
        "spec_toml": p.spec_toml, "spec_json": p.spec_json, "plan_json": p.plan_json, "jobs_json": p.jobs_json,
        "lock": p.lock, "logs": p.logs("merge"), "job_folder": p.job_folder("merge"),
        "task_log": p.task_log("infer", "123_7"), "marker": p.marker("tokenize", 7),
        "markers_dir": p.markers_dir("tokenize"), "driver_log": p.driver_log,
        "local_state_json": p.local_state_json, "local_done_json": p.local_done_json,
        "local_only_json": p.local_only_json, "assets_json": p.assets_json, "inputs_jsonl": p.inputs_jsonl,
        "shard_prefix": p.shard_prefix(3), "shard_manifest": p.shard_manifest(3), "dataset_prefix": p.dataset_prefix,
        "dataset_summary": p.dataset_summary, "dataset_split": p.dataset_split, "finetune_dir": p.finetune_dir,
        "checkpoint_dir": p.checkpoint_dir(20), "checkpoints_json": p.checkpoints_json,
        "metrics_jsonl": p.metrics_jsonl, "nemo_log_dir": p.nemo_log_dir, "infer_dir": p.infer_dir(20),
        "infer_manifest": p.infer_manifest(20, 1), "infer_manifest_one": p.infer_manifest(20),
        "eval_json": p.eval_json(20, 1), "eval_json_one": p.eval_json(20), "tensorboard_train": p.tensorboard_train,
        "tensorboard_eval": p.tensorboard_eval, "wandb_dir": p.wandb_dir, "wandb_runs": p.wandb_runs,
        "numba_cache": p.numba_cache}
    assert {k: str(v.relative_to(tmp_path)) for k, v in got.items()} == {
        "spec_toml": "spec.toml", "spec_json": "spec.json", "plan_json": "plan.json", "jobs_json": "jobs.json",
        "lock": ".lock", "logs": "logs/merge", "job_folder": "logs/merge/%j",
        "task_log": "logs/infer/123_7/123_7_0_log.out", "marker": "done/tokenize/000007.json",
        "markers_dir": "done/tokenize", "driver_log": "logs/driver/driver.log",
        "local_state_json": "local_state.json", "local_done_json": "local_done.json",
        "local_only_json": "local_only.json", "assets_json": "assets.json", "inputs_jsonl": "inputs.jsonl",
        "shard_prefix": "tokens/shard-00003", "shard_manifest": "tokens/shard-00003.manifest.json",
        "dataset_prefix": "dataset/tokens", "dataset_summary": "dataset/summary.json",
        "dataset_split": "dataset/split.json", "finetune_dir": "finetune",
        "checkpoint_dir": "finetune/checkpoints/step-00000020", "checkpoints_json": "finetune/checkpoints.json",
        "metrics_jsonl": "finetune/metrics.jsonl", "nemo_log_dir": "finetune/nemo",
        "infer_dir": "infer/step-00000020", "infer_manifest": "infer/step-00000020.shard-00001.stats.json",
        "infer_manifest_one": "infer/step-00000020.stats.json", "eval_json": "eval/step-00000020.shard-00001.json",
        "eval_json_one": "eval/step-00000020.json", "tensorboard_train": "tensorboard/train",
        "tensorboard_eval": "tensorboard/eval", "wandb_dir": "wandb", "wandb_runs": "wandb/wandb",
        "numba_cache": "cache/numba"}
    assert p.eval_json(20).parent == p.eval_dir and p.infer_dir(20).parent == p.infer_root
    assert p.checkpoint_dir(20).parent == p.checkpoints_dir and p.dataset_prefix.parent == p.dataset_dir
    assert p.markers_dir("x").parent == p.done_dir and p.logs("x").parent == p.logs_dir


def test_a_run_is_a_directory_with_its_plan_and_jobs(tmp_path: Path) -> None:
    p = RunPaths(tmp_path)
    assert not p.is_run
    atomic_write_json(p.plan_json, {})
    assert not p.is_run
    atomic_write_json(p.jobs_json, {})
    assert p.is_run


def test_the_records_read_back_as_written(tmp_path: Path) -> None:
    spec = build(TINY, {"data": {"videos": str(tmp_path)}})
    facts = plan_mod.Facts(num_inputs=10, max_array_size=7, nodes_available=3)
    plan = plan_mod.build(spec, facts)
    paths = RunPaths(tmp_path / "run")
    write_run(paths, "", plan, facts, Choice("local", "no controller"))
    assert rundir.read_spec(paths) == plan.spec  # the spec as planned: derived values (shards) resolved
    assert rundir.read_facts(paths) == facts
    assert rundir.read_plan_record(paths)["executor"] == "local"
    assert [s["name"] for s in rundir.read_plan_record(paths)["stages"]] == [s.name for s in plan.stages]
    assert rundir.read_spec_record(paths) == spec_mod.to_dict(plan.spec)
    jobs = rundir.Jobs("local", "why", (rundir.Submission("*", "local:42", ((0, 3),), True, 1.5, 1),))
    atomic_write_json(paths.jobs_json, jobs.to_json())
    assert rundir.read_jobs(paths) == jobs and rundir.read_jobs(paths).next_round == 2


@pytest.mark.parametrize("content", ["{not json", '{"executor": "pbs", "submissions": []}', '{"executor": "local"}'])
def test_a_damaged_jobs_json_is_one_line_naming_the_file(tmp_path: Path, content: str) -> None:
    paths = RunPaths(tmp_path)
    paths.jobs_json.write_text(content)
    with pytest.raises(HarnessError) as e:
        rundir.read_jobs(paths)
    assert str(e.value).startswith(str(paths.jobs_json)) and "\n" not in str(e.value)


DAMAGE = [  # (record, content): what a crash mid-write by hand, an edit or a full disk leaves
    ("jobs.json", "[]"), ("jobs.json", '{"executor": "local", "submissions": [{"stage": "*"}]}'),
    ("jobs.json", '{"executor": "local", "submissions": [5]}'),
    ("jobs.json", '{"executor": "local", "submissions": [{"stage": "*", "job_id": "local:abc"}]}'),
    ("plan.json", "{"), ("plan.json", "{}"), ("spec.json", None), ("spec.json", b"\xff\xfe"),
    ("local_state.json", "{"), ("local_state.json", '{"stages": 5}')]


@pytest.mark.parametrize("record,content", DAMAGE, ids=[f"{r}-{i}" for i, (r, _) in enumerate(DAMAGE)])
def test_every_command_reports_a_damaged_record_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            record: str, content: str | bytes | None) -> None:
    """status, report, logs, cancel and resume read the same records: each names the file in one line, exit 2,
    and `harness runs` still lists the other runs."""
    from harness import cli

    spec = build(TINY, {"data": {"videos": str(tmp_path)}, "run": {"workdir": str(tmp_path / "runs")}})
    facts = plan_mod.Facts(num_inputs=2, max_array_size=7, nodes_available=1)
    good, bad = RunPaths(tmp_path / "runs" / "good"), RunPaths(tmp_path / "runs" / "bad")
    for p in (good, bad):
        write_run(p, "", plan_mod.build(spec, facts), facts, Choice("local", "no controller"))
        atomic_write_json(p.jobs_json, rundir.Jobs("local", "", ()).to_json())
    target = bad.root / record
    if content is None:
        target.unlink()
    else:
        target.write_bytes(content if isinstance(content, bytes) else content.encode())
    for argv in (["status"], ["report"], ["logs", "tokenize", "0"], ["cancel"], ["resume"]):
        cmd = [argv[0], str(bad.root), *argv[1:]]
        assert cli.main(cmd) == 2, cmd
        err = capsys.readouterr().err.strip()
        assert err.startswith(str(target)) and "\n" not in err and "Traceback" not in err, (cmd, err)
    assert cli.main(["runs", "--workdir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "good" in out and "unreadable" in out


def test_a_campaign_with_a_member_gone_still_cancels_the_others(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from harness import cli

    spec = build(TINY, {"data": {"videos": str(tmp_path)}})
    facts = plan_mod.Facts(num_inputs=2, max_array_size=7, nodes_available=1)
    alive = RunPaths(tmp_path / "m2")
    write_run(alive, "", plan_mod.build(spec, facts), facts, Choice("local", "no controller"))
    atomic_write_json(alive.jobs_json, rundir.Jobs("local", "", ()).to_json())
    camp = tmp_path / "camp"
    atomic_write_json(camp / "campaign.json", {"members": [{"root": str(tmp_path / "m1-deleted")},
                                                           {"root": str(alive.root)}]})
    for cmd in ("cancel", "status", "report"):
        assert cli.main([cmd, str(camp)]) == 2, cmd
        err = capsys.readouterr().err.strip()
        assert err.startswith(str(tmp_path / "m1-deleted")) and "\n" not in err, (cmd, err)
        if cmd == "cancel":
            assert alive.local_done_json.is_file()  # the member after the gone one was cancelled
