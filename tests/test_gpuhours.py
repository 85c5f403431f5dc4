"""GPU-hours used: elapsed x allocated GPUs of each task's latest attempt (sacct's AllocTRES on a cluster, the
local driver's start and end times x the stage's planned GPUs locally), summed per stage and per run, shown by
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
