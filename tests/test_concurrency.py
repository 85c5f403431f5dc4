"""Concurrent use of one spec and one run: two `harness submit` at once never share a run directory or a job,
and `harness resume` on a run that is active (or whose lock another process holds) refuses with one clear
line instead of submitting duplicates."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.core.atomic import read_json
from harness.core.paths import RunPaths
from harness.launch import slurmcli
from harness.ops import submit as launching
from reliability_helpers import harness, job_ids_from, run_dir_from, tiny_spec

pytestmark = pytest.mark.slurm


def _comments(job_ids: list[str]) -> dict[str, str]:
    """job id -> --comment (the run id) of live jobs, straight from squeue."""
    out = subprocess.run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%F %k"], capture_output=True,
                         text=True, timeout=30).stdout
    return dict(ln.split(None, 1) for ln in out.splitlines() if len(ln.split(None, 1)) == 2)


@pytest.mark.timeout(180)
def test_two_cli_submits_at_once(slurm_cluster: str, tmp_path: Path, reliability: Any) -> None:
    spec = tiny_spec(tmp_path, name="conc")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "harness.cli", "submit", str(spec)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    ids = [job_ids_from(o) for o, _ in outs]
    all_ids = [j for d in ids for j in d.values()]
    try:
        assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
        roots = [run_dir_from(o, tmp_path / "runs") for o, _ in outs]
        assert roots[0] != roots[1]
        assert len(all_ids) == len(set(all_ids)) == 14
        reliability.add("slurm_jobs_submitted", len(all_ids))
        for root, mine in zip(roots, ids):
            recorded = {s["stage"]: s["job_id"] for s in read_json(RunPaths(root).jobs_json)["submissions"]}
            assert recorded == mine
            assert (root.stat().st_mode & 0o777) == 0o700
        comments = _comments(all_ids)  # jobs still queued carry their own run id, never the other's
        for root, mine in zip(roots, ids):
            assert all(comments[j] == root.name for j in mine.values() if j in comments), comments
    finally:
        slurmcli.scancel(all_ids)


@pytest.mark.timeout(180)
def test_resume_of_an_active_run_refuses(slurm_cluster: str, tmp_path: Path, reliability: Any) -> None:
    spec = tiny_spec(tmp_path, name="act")
    sub = harness("submit", str(spec), cwd=tmp_path)
    assert sub.returncode == 0, sub.stderr
    ids = job_ids_from(sub.stdout)
    reliability.add("slurm_jobs_submitted", len(ids))
    root = run_dir_from(sub.stdout, tmp_path / "runs")
    try:
        before = read_json(RunPaths(root).jobs_json)["submissions"]
        res = harness("resume", str(root), cwd=tmp_path)
        assert res.returncode == 2, (res.stdout, res.stderr)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "still pending or running" in lines[0] and root.name in lines[0], lines
        assert "Traceback" not in res.stderr
        assert read_json(RunPaths(root).jobs_json)["submissions"] == before  # nothing resubmitted

        # another process holds the run's lock (a submit or resume in flight): refused at once, one line
        with launching.run_lock(RunPaths(root)):
            res = harness("resume", str(root), cwd=tmp_path, timeout=60)
        assert res.returncode == 2
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "holds this run's lock" in lines[0], lines
        assert read_json(RunPaths(root).jobs_json)["submissions"] == before
    finally:
        slurmcli.scancel(list(ids.values()))
