"""Secrets reach the run only through the environment and are written nowhere: a real run on the local cluster (the
whole DAG submitted; stage-assets, tokenize and merge run to the end) with HF_TOKEN and WANDB_API_KEY set to fresh
random values, then every file of the run directory, the generated sbatch scripts, the CLI's output and the Slurm
controller's stored job environments are searched."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

from harness.launch import slurmcli
from reliability_helpers import harness, job_ids_from, run_dir_from, tiny_spec, wait_stages

pytestmark = pytest.mark.slurm


def scan(files: list[Path], needles: dict[str, bytes]) -> list[str]:
    """'<file>: <secret name>' for every file holding a secret's bytes."""
    hits = []
    for f in files:
        try:
            data = f.read_bytes()
        except OSError:
            continue
        hits += [f"{f}: {name}" for name, value in needles.items() if value in data]
    return hits


@pytest.mark.timeout(420)
def test_no_secret_in_any_file_of_a_real_run(slurm_cluster: str, tmp_path: Path, reliability: Any) -> None:
    env = {"HF_TOKEN": "hf_" + secrets.token_hex(16), "WANDB_API_KEY": "wb" + secrets.token_hex(20),
           "HUGGING_FACE_HUB_TOKEN": "hf_" + secrets.token_hex(16)}
    needles = {k: v.encode() for k, v in env.items()}
    spec = tiny_spec(tmp_path, name="sec", max_steps=1)

    scripts = tmp_path / "scripts"
    plan = harness("plan", str(spec), "--out", str(scripts), cwd=tmp_path, env=env)
    assert plan.returncode == 0, plan.stderr
    sub = harness("submit", str(spec), cwd=tmp_path, env=env)
    assert sub.returncode == 0, sub.stderr
    ids = job_ids_from(sub.stdout)
    assert len(ids) == 7, sub.stdout
    reliability.add("slurm_jobs_submitted", len(ids))
    root = run_dir_from(sub.stdout, tmp_path / "runs")
    assert (root.stat().st_mode & 0o777) == 0o700
    assert (root.parent.stat().st_mode & 0o002) == 0

    # The controller stores each job's environment while it knows the job: only stage-assets may hold HF_TOKEN.
    state_dir = Path(slurmcli.config().get("StateSaveLocation", "/nonexistent"))
    env_files = {st: list(state_dir.glob(f"hash.*/job.{jid}/environment")) for st, jid in ids.items()}
    try:  # the data stages run to the end; the rest (CPU training here) would only cost time: cancelled
        by = wait_stages(ids, ["stage-assets", "tokenize", "merge"], timeout=240)
    finally:
        slurmcli.scancel(list(ids.values()))
    for st in ("stage-assets", "tokenize", "merge"):
        assert set(by[st].values()) == {"COMPLETED"}, (st, by)
    wait_stages(ids, list(ids), timeout=120)
    reliability.note(f"secrets run: {', '.join(f'{s} {sorted(set(v.values()))}' for s, v in by.items())}")

    status = harness("status", str(root), cwd=tmp_path, env=env)
    logs = [harness("logs", str(root), st, "0", *extra, cwd=tmp_path, env=env)
            for st in ("stage-assets", "tokenize", "merge") for extra in ((), ("--stderr",))]
    texts = [plan.stdout + plan.stderr, sub.stdout + sub.stderr, status.stdout + status.stderr] + \
        [p.stdout + p.stderr for p in logs]
    assert "tokenize" in logs[2].stdout + logs[3].stdout  # the logs really were read

    files = [p for p in root.rglob("*") if p.is_file()] + sorted(scripts.glob("*.sbatch"))
    files += [p for p in tmp_path.rglob("*") if p.is_file() and p not in files and "runs" not in p.parts]
    assert len(files) > 30 and any(p.name.endswith("_log.err") for p in files)
    assert any(p.name.endswith("_submission.sh") for p in files)  # the sbatch scripts submitit really sent
    hits = scan(files, needles) + [f"CLI output {i}: {k}" for i, t in enumerate(texts)
                                   for k, v in env.items() if v in t]
    stored = {st: scan(fs, needles) for st, fs in env_files.items()}
    leaked_to_state = [h for st, hs in stored.items() for h in hs
                       if not (st == "stage-assets" and h.endswith(("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")))]
    reliability.add("files_scanned_for_secrets", len(files) + sum(len(f) for f in env_files.values()))
    reliability.add("secrets_found", len(hits) + len(leaked_to_state))
    assert not hits, hits
    assert not leaked_to_state, leaked_to_state
    if any(env_files.values()):
        reliability.note(f"Slurm StateSaveLocation job environments checked for {sum(map(len, env_files.values()))}"
                         f" jobs: secrets blanked by --export except HF_TOKEN for stage-assets (by design)")
