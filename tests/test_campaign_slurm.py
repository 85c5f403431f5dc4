"""A 2-member sweep (finetune.lr) of a tiny run submitted as one campaign on the local Slurm cluster: ONE
tokenize array and ONE merge job for both members, each member's finetune waiting on that merge and reading the
shared dataset, both members complete; then status/report given the campaign id."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import specs
from harness.core import rundir
from harness.core.atomic import read_json
from harness.core.paths import CampaignPaths
from harness.lib import synth

pytestmark = pytest.mark.slurm


@pytest.mark.timeout(600)
def test_sweep_campaign_shares_one_tokenize_and_both_members_complete(slurm_cluster: str, tmp_path: Path) -> None:
    synth.make_clips(tmp_path / "videos", 8)
    tok = synth.write_tokenizer(tmp_path / "tok")
    hf = tmp_path / "hf"
    synth.write_hf_snapshot(hf, synth.TOKENIZER_REPO, {n: tok / n for n in ("encoder.jit", "decoder.jit",
                                                                              "config.json")})
    spec = specs.write(tmp_path / "sweep.toml", specs.tiny_run(tmp_path, name="sw", videos=tmp_path / "videos", hf=hf),
                       specs.QUICK_JOBS, {
        "data": {"split": [6, 1, 1]}, "tokenize": {"shards": 1},
        "finetune": {"max_steps": 2, "save_every": 2, "precision": "fp32"},
        "infer": {"max_inputs": 1, "batch_size": 1},
        "sweep": {"finetune.lr": [3e-3, 1e-3]}})
    p = subprocess.run([sys.executable, "-m", "harness.cli", "submit", str(spec), "--wait", "--timeout", "480"],
                       capture_output=True, text=True, timeout=540, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (cdir,) = [d for d in (tmp_path / "runs").iterdir() if CampaignPaths(d).is_campaign]
    cpaths = CampaignPaths(cdir)
    members = rundir.read_campaign(cpaths)
    assert [v for v, _ in members] == ["finetune.lr=0.003", "finetune.lr=0.001"]
    first, second = (rundir.open_run(root) for _, root in members)
    assert first.shared is None and second.shared == first.root
    jobs = [rundir.read_jobs(first), rundir.read_jobs(second)]
    tokenize_ids = {s.job_id for j in jobs for s in j.submissions if s.stage == "tokenize"}
    merge_ids = {s.job_id for j in jobs for s in j.submissions if s.stage == "merge"}
    assert len(tokenize_ids) == 1 and len(merge_ids) == 1  # the second member's rows are the first's jobs
    assert not (second.root / "tokens").exists() and not (second.root / "dataset").exists()
    for m, lr in ((first, 3e-3), (second, 1e-3)):
        assert rundir.read_spec(m).finetune.lr == lr
        assert tomllib.loads(m.spec_toml.read_text())["finetune"]["lr"] == lr  # the effective spec
        assert read_json(m.checkpoints_json)["steps"] == [2]
        assert len(list(m.infer_dir(2).glob("*.mp4"))) == 1
    assert second.dataset_dir == first.dataset_dir
    st = subprocess.run([sys.executable, "-m", "harness.cli", "status", cpaths.campaign_id, "--workdir",
                         str(tmp_path / "runs")], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                        env={**os.environ, "COLUMNS": "250"})
    assert st.returncode == 0, st.stdout + st.stderr
    assert st.stdout.count("completed") >= 2 and first.run_id in st.stdout and second.run_id in st.stdout
