"""A 3-member campaign with a registry container image on the local Slurm cluster: ONE import-image job for all
members, exactly one `enroot import` (a stand-in enroot on PATH that records its calls), and every container
stage's srun line naming the imported .sqsh; a later plan of the same image reuses it and submits no import.

This cluster has no Pyxis (srun rejects --container-image) and the test is about the import, not training: a
stand-in `srun` on PATH records every job step's argv and runs only the import-image job's step for real (the
worker, the lock, enroot, the rename, the marker); every other step (the data stages, the container stages and
those after them) is stood in and exits 0, so the whole DAG completes in seconds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import specs
import standins
from harness.core import rundir
from harness.core.paths import CampaignPaths
from harness.launch import slurmcli
from harness.lib import synth

pytestmark = pytest.mark.slurm

URI = "nvcr.io#nvidia/nemo:26.02"


def _wait_gone(job_ids: list[str], timeout: float) -> None:
    deadline = time.time() + timeout
    while slurmcli.squeue(job_ids):
        assert time.time() < deadline, f"jobs still queued after {timeout} s: {slurmcli.squeue(job_ids)}"
        time.sleep(1.0)


@pytest.mark.timeout(300)
def test_campaign_imports_the_image_once_and_every_container_stage_runs_the_sqsh(slurm_cluster: str,
                                                                                 tmp_path: Path) -> None:
    real_srun = shutil.which("srun")
    assert real_srun is not None
    enroot_log, srun_log = tmp_path / "enroot.log", tmp_path / "srun.log"
    standins.enroot(tmp_path / "bin", enroot_log)
    standins.srun(tmp_path / "bin", srun_log, real_srun, ".import-image")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    synth.make_clips(tmp_path / "videos", 3)
    run = specs.tiny_run(tmp_path, name="img", videos=tmp_path / "videos")
    spec = specs.write(tmp_path / "sweep.toml", run, specs.QUICK_JOBS, {
        "finetune": {"max_steps": 2, "save_every": 2}, "infer": {"max_inputs": 1, "baseline": "off"},
        "container": {"image": URI}, "sweep": {"finetune.lr": [1e-3, 2e-3, 3e-3]}})
    # --no-doctor: doctor (rightly) fails on this cluster's missing Pyxis
    p = subprocess.run([sys.executable, "-m", "harness.cli", "submit", "--no-doctor", str(spec)],
                       capture_output=True, text=True, timeout=180, cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (cdir,) = [d for d in (tmp_path / "runs").iterdir() if CampaignPaths(d).is_campaign]
    members = [rundir.open_run(root) for _, root in rundir.read_campaign(CampaignPaths(cdir))]
    jobs = [rundir.read_jobs(m).submissions for m in members]
    all_ids = sorted({s.job_id for subs in jobs for s in subs})
    _wait_gone(all_ids, 150)

    sqsh = tmp_path / "runs" / "images" / "nvcr.io+nvidia+nemo+26.02.sqsh"
    assert enroot_log.read_text().splitlines() == [f"import -o {sqsh}.partial docker://{URI}"]
    assert sqsh.read_bytes() == b"hsqs stand-in squashfs" and Path(f"{sqsh}.done").is_file()
    assert not Path(f"{sqsh}.partial").exists()
    imports = {s.job_id for subs in jobs for s in subs if s.stage == "import-image"}
    assert len(imports) == 1 and all(any(s.stage == "import-image" for s in subs) for subs in jobs)
    assert (members[0].markers_dir("import-image") / "000000.json").is_file()  # the owner's task ran

    steps = [ln.split(" ", 1) for ln in srun_log.read_text().splitlines()]
    container = [(job, args) for job, args in steps if job.endswith((".finetune", ".infer"))]
    names = {m.run_id: rundir.read_spec(m).run.name for m in members}
    assert sorted({job.split(".")[0] for job, _ in container}) == sorted(names.values())  # all 3 members
    assert len(container) == 3 * 2  # one finetune step and one infer task (1 checkpoint x 1 shard) each
    for job, args in container:
        assert f"--container-image={sqsh} " in args, (job, args)
    assert all("--container-image" not in args for job, args in steps if (job, args) not in container)
    first = [i for i, (job, _) in enumerate(steps) if job.endswith(".import-image")]
    assert len(first) == 1 and all(first[0] < i for i, step in enumerate(steps) if step in container)  # afterok

    # a later run of the same image: the complete .sqsh is reused, no import-image job is planned
    single = specs.write(tmp_path / "again.toml", run, specs.QUICK_JOBS, {"container": {"image": URI}})
    out = tmp_path / "scripts"
    p = subprocess.run([sys.executable, "-m", "harness.cli", "plan", str(single), "--out", str(out)],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**env, "COLUMNS": "250"})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert f"import-image: reused {sqsh} (complete; not submitted)" in " ".join(p.stdout.split())
    assert not list(out.glob("*import-image*")) and len(list(out.glob("*.sbatch"))) == 7
    assert f"--container-image={sqsh} " in (out / "03-finetune.sbatch").read_text()
