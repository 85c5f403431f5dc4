"""The ranks a stage spawns die with it: a SIGKILLed finetune must not leave ranks holding GPUs and half a
collective (seen on 2 x H200: a killed 4B stage's ranks outlived it into the resumed run)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import specs
from harness.launch.backend import pid_alive

REPO = Path(__file__).resolve().parents[1]

SPAWN = """
import sys
from harness.core import spec as spec_mod
from harness.core.paths import RunPaths
from harness.stages import ranks
import rank_sleeper
spec = spec_mod.loads(open(sys.argv[1]).read(), sys.argv[1])
ranks.spawn(spec, 0, RunPaths(__import__("pathlib").Path(sys.argv[2])), 2, rank_sleeper.sleep)
"""


def _wait(cond, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


def test_spawned_ranks_die_with_a_killed_stage(tmp_path: Path) -> None:
    spec = specs.write(tmp_path / "run.toml", specs.tiny_run(tmp_path, name="ranks", videos=tmp_path))
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}
    stage = subprocess.Popen([sys.executable, "-c", SPAWN, str(spec), str(tmp_path)], env=env,
                             start_new_session=True)
    pid_files = [tmp_path / f"rank-{r}.pid" for r in (0, 1)]
    try:
        assert _wait(lambda: all(p.is_file() and p.read_text() for p in pid_files), 120), "ranks did not start"
        pids = [int(p.read_text()) for p in pid_files]
        assert all(pid_alive(p) for p in pids)
        os.kill(stage.pid, signal.SIGKILL)  # the stage process only, as a node agent or the OOM killer would
        stage.wait()
        assert _wait(lambda: not any(pid_alive(p) for p in pids), 20), f"ranks {pids} outlived their stage"
    finally:
        try:
            os.killpg(stage.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


FAIL = SPAWN.replace("rank_sleeper.sleep", "rank_sleeper.fail")


def test_a_failed_ranks_error_reaches_the_stage(tmp_path: Path) -> None:
    """A rank's exception ends the stage with the rank's own last line (the task's reason), also when its traceback
    is larger than the pipe it travels through (a blocked write there would hang the stage forever)."""
    from harness.core.failures import reason

    spec = specs.write(tmp_path / "run.toml", specs.tiny_run(tmp_path, name="fail", videos=tmp_path))
    out = subprocess.run([sys.executable, "-c", FAIL, str(spec), str(tmp_path)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"})
    assert out.returncode != 0
    assert "RankFailed: rank " in out.stderr
    assert reason(out.stderr).startswith("RuntimeError: xxx"), reason(out.stderr)[:200]


THREADS = SPAWN.replace("rank_sleeper.sleep", "rank_sleeper.threads")


def test_spawned_cpu_ranks_share_the_cores(tmp_path: Path) -> None:
    """Two CPU ranks on C cores take C/2 intra-op threads each; torch's default (C each) oversubscribed a
    2-core machine's TP=2 finetune twice over (measured: the TP tests of test_finetune.py 174 s -> 144 s)."""
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("one core: every rank gets one thread either way")
    spec = specs.write(tmp_path / "run.toml", specs.tiny_run(tmp_path, name="threads", videos=tmp_path))
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", THREADS, str(spec), str(tmp_path)], timeout=180,
                         env={**env, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}", "CUDA_VISIBLE_DEVICES": ""},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert [int((tmp_path / f"rank-{r}.threads").read_text()) for r in (0, 1)] == [cores // 2] * 2


def test_thread_share_follows_the_launcher_and_the_user() -> None:
    from harness.core.cpus import TASK_CPUS, cpu_threads, ranks_on_node, task_env

    assert ranks_on_node({"LOCAL_WORLD_SIZE": "4", "SLURM_NTASKS_PER_NODE": "2"}) == 4  # torchrun's own count
    assert ranks_on_node({"SLURM_NTASKS_PER_NODE": "2"}) == 2
    assert ranks_on_node({"SUBMITIT_LOCAL_NTASKS": "3"}) == 3
    assert ranks_on_node({}) == 1
    assert cpu_threads(16, 4, {}) == 4 and cpu_threads(2, 4, {}) == 1
    assert cpu_threads(16, 1, {}) is None  # one rank keeps torch's default
    assert cpu_threads(16, 4, {"OMP_NUM_THREADS": "8"}) is None  # the user's setting wins
    # srun's ranks, 4 tasks of 4 CPUs: a bound task sees its 4 (its own share), an unbound one the node's 16
    srun = {"SLURM_CPUS_PER_TASK": "4", "SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "4"}
    assert cpu_threads(4, 4, srun) is None and cpu_threads(16, 4, srun) == 4
    # ranks spawned inside one Slurm task of 8 CPUs on an unbound 64-core node share the task's 8
    inside = {"SLURM_CPUS_PER_TASK": "8", "SLURM_NTASKS": "1", "LOCAL_WORLD_SIZE": "2"}
    assert cpu_threads(64, 2, inside) == 4 and cpu_threads(8, 2, inside) == 4
    assert cpu_threads(64, 1, {"SLURM_CPUS_PER_TASK": "8", "SLURM_NTASKS": "1"}) == 8  # one rank, unbound
    # the worker's own setting for an unbound task: its ranks still share it; a bound task or the user: nothing
    assert task_env({"SLURM_CPUS_PER_TASK": "8"}, 64) == {"OMP_NUM_THREADS": "8", TASK_CPUS: "8"}
    assert task_env({"SLURM_CPUS_PER_TASK": "8"}, 8) == {} and task_env({}, 64) == {}
    assert task_env({"SLURM_CPUS_PER_TASK": "8", "OMP_NUM_THREADS": "2"}, 64) == {}
    assert cpu_threads(64, 2, {**inside, **task_env(inside, 64)}) == 4
    assert cpu_threads(64, 2, {**inside, "OMP_NUM_THREADS": "8"}) is None  # the same number, but the user's


SAVE_TWICE = """
import sys
from pathlib import Path
from harness.core.models import PRESETS
from harness.core.tokens import Grid
from harness.cosmos import checkpoint, parallel
from harness.cosmos.model import build_model

parallel.init(1)
model = build_model(PRESETS["tiny"], Grid(2, 2, 2), tp=1, precision="fp32")
for step in (1, 2):
    checkpoint.save(Path(sys.argv[1]) / f"step-{step}", model, None, trainer={"step": step}, context={})
import multiprocessing
print(len(multiprocessing.active_children()), flush=True)
"""


def test_a_save_leaves_no_helper_process(tmp_path: Path) -> None:
    """megatron-core's writer reports its results through a queue; the harness' saves are synchronous, so the
    queue is the trainer's own, not one served by a helper process (that server imported torch to unpickle the
    first result, ~290 MB and ~2 CPU-s a trainer, and died of Slurm's stop signals mid-save). Two saves: both
    complete, and nothing the writer started outlives them."""
    out = subprocess.run([sys.executable, "-c", SAVE_TWICE, str(tmp_path)], capture_output=True, text=True,
                         timeout=180, env={**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "0", out.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-1", "step-2"]
    assert all((tmp_path / s / "done.json").is_file() for s in ("step-1", "step-2"))
