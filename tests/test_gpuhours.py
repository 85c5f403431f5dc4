"""GPU-hours used: elapsed x allocated GPUs of every attempt of each task (sacct --duplicates' records of every
round's job id, with their AllocTRES, on a cluster; the local driver's start and end times of each attempt x the
stage's planned GPUs locally), summed per stage and per run, shown by
`harness status`, the report and `harness compare` beside the plan's estimate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import cli
from harness.core import estimate
from harness.core.atomic import atomic_write_json, read_json
from harness.launch import slurmcli
from harness.launch.backend import load_plan
from test_report import make_results


def test_gpus_from_sacct_alloc_tres() -> None:
    assert slurmcli.tres_gpus("billing=8,cpu=8,gres/gpu:h100=2,gres/gpu=2,mem=64G,node=1") == 2
    assert slurmcli.tres_gpus("cpu=8,gres/gpu:h100=2,gres/gpu:a100=1,node=1") == 3  # typed only: summed
    assert slurmcli.tres_gpus("billing=1,cpu=1,node=1") == 0
    assert slurmcli.tres_gpus("") == 0


def test_local_run_hours_in_status_report_and_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    paths, _, _ = make_results(tmp_path)
    other, _, _ = make_results(tmp_path)
    spec = read_json(paths.spec_json)
    spec["finetune"].update(gpus_per_node=2, tensor_parallel=2)  # the local driver counts its plan's GPUs
    atomic_write_json(paths.spec_json, spec)
    plan = load_plan(paths)
    ft = plan.stage("finetune").resources
    gpus = ft.gpus_per_node * ft.nodes
    assert gpus > 0
    atomic_write_json(paths.local_state_json, {"driver_pid": 0, "stages": {
        "finetune": {"0": {"state": "COMPLETED", "job_id": "1", "start": 1000.0, "end": 1000.0 + 1800}},
        "merge": {"0": {"state": "COMPLETED", "job_id": "2", "start": 1000.0, "end": 1000.0 + 3600}}}})
    used = 0.5 * gpus
    planned = {e.stage: e.gpu_hours for e in estimate.all_stages(plan)}
    runs = ["--workdir", str(tmp_path / "runs")]

    assert cli.main(["status", paths.run_id, *runs]) == 0
    out = capsys.readouterr().out
    assert "GPU-h used" in out and f"GPU-hours used {used:.3g}" in out
    row = next(line for line in out.splitlines() if "│ finetune" in line)
    assert f"{used:.3g}" in row and f"{planned['finetune']:.3g}" in row

    assert cli.main(["report", paths.run_id, *runs]) == 0
    capsys.readouterr()
    doc = json.loads((tmp_path / "results" / paths.run_id / "report.json").read_text())
    stages = {s["stage"]: s for s in doc["gpu_hours"]["stages"]}
    assert stages["finetune"]["used"] == pytest.approx(used)
    assert stages["merge"] == {"stage": "merge", "used": 0.0, "planned": 0.0}  # an hour on no GPU
    assert stages["finetune"]["planned"] == pytest.approx(planned["finetune"])
    assert doc["gpu_hours"]["used"] == pytest.approx(used)
    assert doc["gpu_hours"]["planned"] == pytest.approx(sum(v for v in planned.values() if v is not None))

    assert cli.main(["compare", paths.run_id, other.run_id, *runs]) == 0
    out = capsys.readouterr().out
    doc = json.loads(Path(next(x.split("wrote ", 1)[1] for x in out.splitlines() if x.endswith(".json"))).read_text())
    assert [r["gpu_hours"] for r in doc["runs"]] == [pytest.approx(used), 0.0]
    assert [r["gpu_hours"] for r in doc["rows"] if r["run_id"] == paths.run_id] == [pytest.approx(used)] * 4


SACCT_DUPLICATES = """\
71_0|COMPLETED|node1|00:01:40|0:0|0:0|00:30:00|2026-12-06T06:44:33|100|billing=2,cpu=2,gres/gpu=2,mem=8G,node=1|None
71_0.batch|COMPLETED|node1|00:01:40|0:0|||2026-12-06T06:44:33|100|cpu=2,gres/gpu=2,mem=8G,node=1|
71_1|NODE_FAIL|node2|00:05:00|0:0|0:0|00:30:00|2026-12-06T06:44:33|300|billing=2,cpu=2,gres/gpu=2,mem=8G,node=1|None
71_1.batch|CANCELLED|node2|00:05:00|0:9|||2026-12-06T06:44:33|300|cpu=2,gres/gpu=2,mem=8G,node=1|
71_1|COMPLETED|node1|00:02:00|0:0|0:0|00:30:00|2026-12-06T06:50:10|120|billing=2,cpu=2,gres/gpu=2,mem=8G,node=1|None
71_1.batch|COMPLETED|node1|00:02:00|0:0|||2026-12-06T06:50:10|120|cpu=2,gres/gpu=2,mem=8G,node=1|
60|COMPLETED|node9|01:00:00|0:0|0:0|02:00:00|2026-11-01T10:00:00|3600|billing=8,cpu=8,gres/gpu=8,mem=64G,node=1|None
60|TIMEOUT|node1|00:10:00|0:0|0:0|00:10:00|2026-12-06T07:00:01|600|billing=4,cpu=4,gres/gpu=4,mem=32G,node=1|None
60.batch|CANCELLED|node1|00:10:00|0:15|||2026-12-06T07:00:01|600|cpu=4,gres/gpu=4,mem=32G,node=1|
75|COMPLETED|node1|00:05:00|0:0|0:0|00:10:00|2026-12-06T08:00:02|300|billing=4,cpu=4,gres/gpu=4,mem=32G,node=1|None
"""
"""`sacct -n -P -D -o slurmcli.SACCT_FIELDS` in Slurm 22.05's format: array task 71_1 requeued after a node
failure (each attempt its own record and Submit time, its steps after it), job id 60 once another job's (a
month earlier: ids are reused) and then this run's finetune, which hit its time limit and was resumed as 75."""


def test_sacct_duplicates_keep_every_attempt_and_the_latest_state() -> None:
    states = slurmcli.parse_sacct(SACCT_DUPLICATES)
    assert set(states) == {"71_0", "71_1", "60", "75"}
    t1 = states["71_1"]
    assert (t1.state, t1.node, t1.signal) == ("COMPLETED", "node1", 0)  # the latest attempt, its own steps' signal
    assert t1.attempts == ((slurmcli.epoch("2026-12-06T06:44:33"), 600.0), (slurmcli.epoch("2026-12-06T06:50:10"),
                                                                              240.0))
    assert states["71_0"].attempts == ((slurmcli.epoch("2026-12-06T06:44:33"), 200.0),)
    assert states["60"].state == "TIMEOUT" and len(states["60"].attempts) == 2


def test_gpu_hours_count_every_attempt_and_round_of_a_task(tmp_path: Path) -> None:
    """A requeued array task counts both attempts (and is still this run's, though its latest record was
    submitted at the requeue); a resumed task counts the first round's job and the resume's; the record of an
    earlier job that had the same id counts nothing."""
    from harness.core.paths import RunPaths, mark_done
    from harness.core.rundir import Jobs, Submission
    from harness.launch import slurmstate

    paths = RunPaths(tmp_path / "run")
    for t in range(2):
        mark_done(paths, "tokenize", t)
    mark_done(paths, "finetune", 0)
    e = slurmcli.epoch
    jobs = Jobs("slurm", "", (Submission("tokenize", "71", ((0, 2),), True, e("2026-12-06T06:44:32")),
                              Submission("finetune", "60", ((0, 1),), False, e("2026-12-06T07:00:00")),
                              Submission("finetune", "75", ((0, 1),), False, e("2026-12-06T08:00:00"), round=1)))
    states = slurmcli.parse_sacct(SACCT_DUPLICATES)
    tok = slurmstate.stage_rows(paths, jobs, "tokenize", 2, states)
    assert [(r.job_id, r.state, r.gpu_seconds) for r in tok] == [("71_0", "COMPLETED", 200.0),
                                                                 ("71_1", "COMPLETED", 840.0)]
    (ft,) = slurmstate.stage_rows(paths, jobs, "finetune", 1, states)
    assert (ft.job_id, ft.gpu_seconds) == ("75", 600 * 4 + 300 * 4)


def test_local_driver_counts_every_attempt_it_recorded(tmp_path: Path) -> None:
    """A task the local driver ran twice (a resume after a failure): both runs' wall time x the stage's GPUs; one
    whose driver died before recording its end adds nothing it cannot know."""
    from harness.core.paths import RunPaths
    from harness.launch import local

    first = local.attempt(None, state="FAILED", job_id="1", start=100.0, reason="")
    first["end"] = 400.0
    second = local.attempt(first, state="RUNNING", job_id="2", start=1000.0, reason="")
    second.update(state="COMPLETED", end=1600.0)
    assert second["earlier_s"] == 300.0 and first["earlier_s"] == 0.0
    skipped = local.attempt(second, state="CANCELLED", job_id="", reason="DependencyNeverSatisfied")
    assert skipped["earlier_s"] == 900.0 and "start" not in skipped
    lost = local.attempt({"state": "RUNNING", "start": 5.0, "earlier_s": 7.0}, state="RUNNING", start=9.0)
    assert lost["earlier_s"] == 7.0
    rows = local.stage_rows(RunPaths(tmp_path / "run"), {"0": second, "1": skipped}, "finetune", 2, False, gpus=2)
    assert [r.gpu_seconds for r in rows] == [900.0 * 2, 900.0 * 2]
