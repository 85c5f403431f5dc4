"""The local driver's task processes: they get the secrets of their stage only, as `sbatch --export` gives a Slurm
job (a real submitit LocalExecutor task process reads its own environment), and a killed one reads killed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import submitit

from harness.launch import local

NAMES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")


def _in_a_task(tmp_path: Path, downloads: bool) -> dict[str, str | None]:
    """Each secret as a task process started for such a stage reads it (`os.getenv` in that process)."""
    ex = submitit.LocalExecutor(folder=tmp_path / f"logs-{downloads}")
    ex.update_parameters(timeout_min=2)
    with local._secrets_for(downloads), ex.batch():
        jobs = [ex.submit(os.getenv, name) for name in NAMES]
    return {name: job.result() for name, job in zip(NAMES, jobs)}


@pytest.mark.timeout(120)
def test_only_the_downloading_stage_gets_the_hugging_face_token(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("WANDB_API_KEY", "wb_secret")
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(local, "_HELD", {})
    local.hold_secrets()
    assert "HF_TOKEN" not in os.environ and "WANDB_API_KEY" not in os.environ  # the driver holds them aside
    assert _in_a_task(tmp_path, downloads=True) == {"HF_TOKEN": "hf_secret", "HUGGING_FACE_HUB_TOKEN": None,
                                                    "WANDB_API_KEY": None}
    assert _in_a_task(tmp_path, downloads=False) == {"HF_TOKEN": None, "HUGGING_FACE_HUB_TOKEN": None,
                                                     "WANDB_API_KEY": None}
    assert "HF_TOKEN" not in os.environ  # given back after the stage's tasks started


@pytest.mark.timeout(120)
def test_a_killed_task_reads_killed_not_its_last_log_line(tmp_path: Path) -> None:
    """A task process that ends outright (here os._exit; SIGKILL or the OOM killer alike) writes no result and no
    error: its reason says killed, not the last thing it logged; a task that raised keeps its exception line."""
    ex = submitit.LocalExecutor(folder=tmp_path / "logs")
    ex.update_parameters(timeout_min=2)
    with ex.batch():
        killed, raised = ex.submit(os._exit, 3), ex.submit(int, "x")
    killed._results_timeout_s = 1  # submitit waits 15 s for a result file that may lag on NFS; none comes here
    reasons = []
    for job in (killed, raised):
        with pytest.raises(Exception) as e:
            job.results()
        reasons.append(local._failure(e.value, tmp_path, "finetune", 0))
    assert reasons[0] == local.KILLED
    assert reasons[1] == "ValueError: invalid literal for int() with base 10: 'x'"


@pytest.mark.timeout(120)
def test_the_driver_holds_the_hugging_face_token_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The detached driver outlives `harness submit`: it is started without the W&B key (no stage needs it)."""
    from test_ops import make_run

    paths, _, _ = make_run(tmp_path, executor="local")
    monkeypatch.setenv("WANDB_API_KEY", "wb_secret")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    pid = local.start_driver(paths)
    try:  # read once the driver runs Python: mid-exec (a loaded machine) /proc shows an empty environment
        deadline = time.monotonic() + 30
        while b"harness.launch.local" not in Path(f"/proc/{pid}/cmdline").read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)
        env = Path(f"/proc/{pid}/environ").read_bytes()
    finally:
        os.killpg(pid, 9)
    assert b"WANDB_API_KEY" not in env and b"HF_TOKEN=hf_secret" in env
