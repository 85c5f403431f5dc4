"""The token cache (`data.cache_dir`) on the local Slurm cluster: a 2-member sweep builds one entry with ONE tokenize
array; a third submit of another learning rate is planned as `tokenize: reused <key> (built by <run>)` and completes
with no tokenize or merge job; a build cancelled mid-way leaves a stale claim, and the next submit rebuilds the
entry (the partial outputs removed, never read). Only the third run is waited for to the end: the sweep and the
rebuild are cancelled once their entry is complete (what follows merge is the campaign tests')."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import specs
from harness.core import rundir
from harness.core.atomic import read_json
from harness.core.paths import CacheEntry, CampaignPaths, RunPaths, mark_done
from harness.lib import synth
from harness.ops import cache

pytestmark = pytest.mark.slurm


def _cli(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, "COLUMNS": "250"})


def _stages(paths: RunPaths) -> list[str]:
    return [s.stage for s in rundir.read_jobs(paths).submissions]


def _spec(tmp: Path, name: str, *layers: specs.Layer) -> Path:
    hf = tmp / "hf"
    return specs.write(tmp / f"{name}.toml", specs.tiny_run(tmp, name=name, videos=tmp / "videos", hf=hf),
                       specs.QUICK_JOBS, {
        "data": {"split": [6, 1, 1], "cache_dir": str(tmp / "cache")}, "tokenize": {"shards": 1},
        "finetune": {"max_steps": 2, "save_every": 2, "precision": "fp32"},
        "infer": {"max_inputs": 1, "batch_size": 1}}, *layers)


POLL_S = 0.25
"""A file check or one squeue: polled often, so each wait ends within a quarter second of its event."""


def _until_complete(entry: CacheEntry, timeout_s: float = 300) -> None:
    deadline = time.time() + timeout_s
    while not entry.is_complete and time.time() < deadline:
        time.sleep(POLL_S)
    assert entry.is_complete, f"{entry.root}: merge's marker not written within {timeout_s} s"


def _entry(paths: RunPaths) -> CacheEntry:
    assert paths.cache is not None
    return CacheEntry(paths.cache)


@pytest.mark.timeout(900)
def test_a_sweep_builds_one_entry_and_a_later_submit_reuses_it(slurm_cluster: str, tmp_path: Path) -> None:
    synth.make_clips(tmp_path / "videos", 8)
    tok = synth.write_tokenizer(tmp_path / "tok")
    synth.write_hf_snapshot(tmp_path / "hf", synth.TOKENIZER_REPO,
                            {n: tok / n for n in ("encoder.jit", "decoder.jit", "config.json")})
    sweep = _spec(tmp_path, "sw", {"sweep": {"finetune.lr": [3e-3, 1e-3]}})
    p = _cli(tmp_path, "submit", str(sweep))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (cdir,) = [d for d in (tmp_path / "runs").iterdir() if CampaignPaths(d).is_campaign]
    first, second = (rundir.open_run(root) for _, root in rundir.read_campaign(CampaignPaths(cdir)))
    entry = _entry(first)
    _until_complete(entry)
    assert _cli(tmp_path, "cancel", str(cdir)).returncode == 0  # the members' training is not this test's
    assert second.cache == entry.root and second.dataset_dir == entry.root / "dataset"
    assert _stages(first).count("tokenize") == 1
    assert {s.job_id for p in (first, second) for s in rundir.read_jobs(p).submissions if s.stage == "tokenize"} \
        == {s.job_id for s in rundir.read_jobs(first).submissions if s.stage == "tokenize"}  # one array for both
    assert not (first.root / "tokens").exists() and cache.builder_of(entry) == first.run_id

    # a third, separate submit (another learning rate): reused, no tokenize or merge job, completes
    third_spec = _spec(tmp_path, "third", {"finetune": {"lr": 2e-3}})
    plan = _cli(tmp_path, "plan", str(third_spec))
    assert plan.returncode == 0, plan.stderr
    assert f"tokenize: reused {entry.key16} (built by {first.run_id})" in plan.stdout
    p = _cli(tmp_path, "submit", str(third_spec), "--wait", "--timeout", "300", timeout=360)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (third,) = [rundir.open_run(d) for d in (tmp_path / "runs").iterdir() if d.name.startswith("third-")]
    assert third.cache == entry.root and not {"tokenize", "merge"} & set(_stages(third))
    assert read_json(third.checkpoints_json)["steps"] == [2]
    assert {u.stem for u in entry.users_dir.iterdir()} == {first.run_id, second.run_id, third.run_id}
    ls = _cli(tmp_path, "cache", "ls", str(third_spec))
    assert ls.returncode == 0 and entry.key16 in ls.stdout and first.run_id in ls.stdout

    # a build killed mid-way: its claim goes stale, the partial entry is rebuilt, not used
    killed_spec = _spec(tmp_path, "killed", {"run": {"seed": 5}})
    p = _cli(tmp_path, "submit", str(killed_spec))
    assert p.returncode == 0, p.stdout + p.stderr
    (killed,) = [rundir.open_run(d) for d in (tmp_path / "runs").iterdir() if d.name.startswith("killed-")]
    assert _cli(tmp_path, "cancel", str(killed.root)).returncode == 0
    partial = _entry(killed)
    mark_done(RunPaths(partial.root), "tokenize", 0)  # as if its one shard had finished before the kill
    faked = read_json(RunPaths(partial.root).marker("tokenize", 0))["time"]
    deadline = time.time() + 60
    while cache.claim_live(read_json(partial.claim_json)) and time.time() < deadline:
        time.sleep(POLL_S)
    plan = _cli(tmp_path, "plan", str(killed_spec))
    assert f"tokenize: building into cache {partial.key16} (the build by {killed.run_id} died: rebuilt)" \
        in plan.stdout, plan.stdout
    p = _cli(tmp_path, "submit", str(killed_spec))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (rebuilt,) = [rundir.open_run(d) for d in (tmp_path / "runs").iterdir()
                  if d.name.startswith("killed-") and d != killed.root]
    assert rebuilt.cache == partial.root and "tokenize" in _stages(rebuilt)
    # a separate submit of the same key meanwhile: no build of its own, its finetune after the builder's merge
    waiter_spec = _spec(tmp_path, "waiter", {"run": {"seed": 5}, "finetune": {"lr": 2e-3}})
    p = _cli(tmp_path, "submit", str(waiter_spec))
    assert f"tokenize: waits on {rebuilt.run_id}'s build of cache entry {partial.key16}" in p.stdout, p.stdout
    (waiter,) = [rundir.open_run(d) for d in (tmp_path / "runs").iterdir() if d.name.startswith("waiter-")]
    merge_id = {s.job_id for s in rundir.read_jobs(rebuilt).submissions if s.stage == "merge"}
    assert waiter.builder == rebuilt.root and {s.job_id for s in rundir.read_jobs(waiter).submissions
                                               if s.stage == "merge"} == merge_id
    (finetune_id,) = [s.job_id for s in rundir.read_jobs(waiter).submissions if s.stage == "finetune"]
    shown = subprocess.run(["scontrol", "show", "job", finetune_id], capture_output=True, text=True).stdout
    assert f"afterok:{next(iter(merge_id))}" in shown or partial.is_complete, shown  # (shown until satisfied)
    _until_complete(partial)
    for run in (rebuilt, waiter):
        assert _cli(tmp_path, "cancel", str(run.root)).returncode == 0
    assert read_json(partial.claim_json)["run"] == rebuilt.run_id and cache.builder_of(partial) == rebuilt.run_id
    assert read_json(RunPaths(partial.root).marker("tokenize", 0))["time"] > faked  # tokenized again
