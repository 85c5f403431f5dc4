"""The same DAG without a cluster: submitit's LocalExecutor under the harness's own dependency driver."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import specs
from harness.core import plan
from harness.core.atomic import read_json
from harness.core.paths import is_done
from harness.launch import local
from harness.lib import synth
from harness.ops import submit as launching


def make_run(tmp: Path, encoder: Path, shards: int = 2) -> tuple[launching.RunPaths, plan.Plan]:
    from harness.ops.inputs import discover
    from harness.stages.inputs import write_inputs

    clips = tmp / "videos"
    synth.make_clips(clips, 6)
    s = specs.build(specs.tiny_run(tmp, name="loc", videos=clips, hf=tmp / "hf", tokenizer=str(encoder)),
                    {"tokenize": {"shards": shards}})
    facts = plan.Facts(num_inputs=len(discover(s)), max_array_size=1_000_000, nodes_available=1)
    p = plan.build(s, facts)
    paths = launching.new_run_dir(Path(s.run.workdir), "loc")
    launching.write_run(paths, "", p, facts, launching.Choice("local", "test"))
    write_inputs(paths, discover(s))
    return paths, p


@pytest.mark.timeout(300)
def test_local_driver_runs_stages_in_order(tmp_path: Path) -> None:
    tok = synth.write_tokenizer(tmp_path / "tok")
    paths, p = make_run(tmp_path, tok)
    local.drive(paths, only={"stage-assets": [0], "tokenize": [0, 1], "merge": [0]})
    state = read_json(paths.local_state_json)["stages"]
    assert state["stage-assets"]["0"]["state"] == "COMPLETED"
    assert {v["state"] for v in state["tokenize"].values()} == {"COMPLETED"}
    assert state["merge"]["0"]["state"] == "COMPLETED"
    assert state["tokenize"]["0"]["end"] <= state["merge"]["0"]["start"]
    assert is_done(paths, "merge", 0)
    assert read_json(paths.dataset_summary)["tokenized"] == 6


@pytest.mark.timeout(300)
def test_local_driver_cancels_dependents_of_a_failure(tmp_path: Path) -> None:
    paths, p = make_run(tmp_path, tmp_path / "missing-tokenizer")
    local.drive(paths, only={"stage-assets": [0], "tokenize": [0, 1], "merge": [0]})
    state = read_json(paths.local_state_json)["stages"]
    assert state["stage-assets"]["0"]["state"] == "FAILED"
    assert "missing-tokenizer" in state["stage-assets"]["0"]["reason"]
    assert {v["state"] for v in state["tokenize"].values()} == {"CANCELLED"}
    assert state["merge"]["0"]["reason"] == "DependencyNeverSatisfied"


@pytest.mark.timeout(300)
def test_local_driver_keeps_the_time_of_earlier_attempts(tmp_path: Path) -> None:
    """A task run again (a resume after its failure) keeps the wall time of its earlier run, for GPU-hours."""
    paths, p = make_run(tmp_path, tmp_path / "missing-tokenizer")
    local.drive(paths, only={"stage-assets": [0]})
    first = read_json(paths.local_state_json)["stages"]["stage-assets"]["0"]
    local.drive(paths, only={"stage-assets": [0]})
    second = read_json(paths.local_state_json)["stages"]["stage-assets"]["0"]
    assert first["earlier_s"] == 0.0 and second["start"] >= first["end"] > first["start"]
    assert second["earlier_s"] == pytest.approx(first["end"] - first["start"])


@pytest.mark.timeout(120)
def test_submit_local_returns_at_once(tmp_path: Path) -> None:
    tok = synth.write_tokenizer(tmp_path / "tok")
    paths, _ = make_run(tmp_path, tok)
    spec_path = tmp_path / "run.toml"
    spec_path.write_text(paths.spec_toml.read_text() or "")
    t0 = time.perf_counter()
    pid = local.start_driver(paths)
    assert time.perf_counter() - t0 < 5 and pid > 0
    deadline = time.time() + 100
    while time.time() < deadline and not paths.local_state_json.exists():
        time.sleep(0.2)
    assert paths.local_state_json.exists()


def test_a_moved_run_reads_its_own_logs_and_a_lost_marker_is_not_completed(tmp_path: Path) -> None:
    """local_state.json of an earlier layout holds absolute log paths: a run directory moved since reads the log
    under its new root. A task the driver saw complete whose marker is gone reads MISSING (resume reruns it), not
    COMPLETED."""
    from harness.core.atomic import atomic_write_json
    from harness.core.paths import RunPaths, mark_done

    paths = RunPaths(tmp_path / "moved-run")
    log = paths.root / "logs" / "tokenize" / "7" / "7_0_log.out"
    log.parent.mkdir(parents=True)
    log.write_text("here")
    old = "/gone/runs/old-run/logs/tokenize/7/7_0_log.out"
    entries = {"0": {"state": "COMPLETED", "job_id": "7", "stdout": old, "start": 1.0, "end": 2.0},
               "1": {"state": "COMPLETED", "job_id": "8", "stdout": "logs/tokenize/8/8_0_log.out", "start": 1.0,
                     "end": 2.0}}
    atomic_write_json(paths.local_state_json, {"stages": {"tokenize": entries}})
    mark_done(paths, "tokenize", 0)
    rows = local.stage_rows(paths, entries, "tokenize", 2, alive=False)
    assert (rows[0].state, rows[0].log) == ("COMPLETED", str(log))
    assert rows[1].state == "MISSING" and "marker is gone" in rows[1].reason
    assert rows[1].log == str(paths.root / "logs" / "tokenize" / "8" / "8_0_log.out")
