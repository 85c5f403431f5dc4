"""Resume after a failed tokenize task, on the local cluster: one tokenize task really fails (its manifest path is
blocked by a directory, so the atomic rename fails), status shows it FAILED with its exit code and the dependents
cancelled, `resume` resubmits exactly that index and the stages after it, and the run completes."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from harness import ops
from harness.ops import control, state
from harness.ops import submit as launching
from reliability_helpers import tiny_spec

pytestmark = pytest.mark.slurm


@pytest.mark.timeout(900)
def test_one_failing_tokenize_task_then_resume(slurm_cluster: str, tmp_path: Path) -> None:
    res = launching.submit(tiny_spec(tmp_path, name="rf", shards=2, max_steps=2, save_every=2), "slurm")
    paths = res.paths
    blocker = paths.shard_manifest(1)
    blocker.mkdir(parents=True)  # before tokenize runs: stage-assets needs seconds to start
    (blocker / "keep").write_text("x")
    assert ops.wait(paths, timeout_s=600) == 1

    rows = {(r.stage, r.task): r for r in state.collect(paths, res.plan).rows}
    failed = rows[("tokenize", 1)]
    assert failed.state == "FAILED" and failed.exit_code.startswith("1"), failed
    assert rows[("tokenize", 0)].state == "COMPLETED"
    for stage in ("merge", "finetune", "infer", "evaluate"):
        for (s, _), r in rows.items():
            if s == stage:
                assert r.state == "CANCELLED" and "DependencyNeverSatisfied" in r.reason, r

    (blocker / "keep").unlink()
    blocker.rmdir()
    todo = control.resume(paths, Console(record=True))
    assert todo["tokenize"] == [1] and "stage-assets" not in todo
    assert todo["merge"] == [0] and todo["finetune"] == [0]
    assert ops.wait(paths, timeout_s=600) == 0
    assert control.resume(paths, Console(record=True)) == {}
