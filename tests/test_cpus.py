"""A task's CPU threads on a real unbound Slurm task: the local cluster runs task/none, so a task given one CPU
sees every core of the node, as on clusters that neither bind nor confine tasks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROBE = """
import os
from harness.core import cpus
os.environ.update(cpus.task_env(os.environ, len(os.sched_getaffinity(0))))
import torch
print(len(os.sched_getaffinity(0)), os.environ["SLURM_CPUS_PER_TASK"], torch.get_num_threads())
"""


@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_an_unbound_task_runs_as_many_threads_as_it_was_given(tmp_path: Path, slurm_cluster: str) -> None:
    out = tmp_path / "probe.out"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    env["PYTHONPATH"] = str(REPO)
    (tmp_path / "probe.py").write_text(PROBE)
    subprocess.run(["sbatch", "--wait", "--parsable", "-c", "1", "-t", "5", "-o", str(out),
                    "--wrap", f"{sys.executable} {tmp_path / 'probe.py'}"], env=env, check=True, timeout=240,
                   capture_output=True)
    seen, given, threads = (int(x) for x in out.read_text().split()[-3:])
    assert seen > given == 1, "the task is bound: this test needs task/none (sbatch/local-slurm.sh)"
    assert threads == 1, out.read_text()  # torch alone starts one thread per core the task can see
