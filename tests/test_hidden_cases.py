"""What a new user meets first, said in one line: the executor choice when Slurm's client tools are installed but
no controller is configured."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.launch import slurmcli


@pytest.mark.skipif(shutil.which("scontrol") is None, reason="Slurm's client tools are not installed")
def test_no_controller_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without SLURM_CONF (and no /etc/slurm/slurm.conf), real scontrol tries DNS SRV records and prints four
    error lines; the reason the harness gives is one line, whole words, no `scontrol: error:` prefixes."""
    if Path("/etc/slurm/slurm.conf").exists():
        pytest.skip("this host has a system-wide slurm.conf")
    monkeypatch.delenv("SLURM_CONF", raising=False)
    why = slurmcli.controller_error()
    assert why.startswith("no Slurm controller answers (scontrol ping: "), why
    assert "\n" not in why and "error:" not in why and "resolve_ctls" not in why, why
    assert why.endswith(")") and len(why) < 200, why


@pytest.mark.parametrize(("text", "said"), [
    ("scontrol: error: a\nscontrol: error: b\nscontrol: fatal: Could not establish a configuration source",
     "Could not establish a configuration source"),
    ("Slurmctld(primary) at n0 is DOWN\n", "Slurmctld(primary) at n0 is DOWN"),
    ("", "no output"),
])
def test_gist_keeps_the_message(text: str, said: str) -> None:
    assert slurmcli.gist(text) == said


def test_gist_cuts_at_a_word() -> None:
    cut = slurmcli.gist("scontrol: error: " + "configuration " * 20, limit=50)
    assert cut.endswith(" ...") and all(w == "configuration" for w in cut[:-4].split()), cut



@pytest.mark.timeout(60)
def test_decode_workers_end_when_their_task_is_killed() -> None:
    """SIGKILL of a tokenize task (the OOM killer, `scancel --signal=KILL`) left its fork-server decode workers
    running, hundreds of MB each, long after a resume had finished the shard: torch's watchdog watches a worker's
    parent, the fork server. Each worker now watches the task: here a forked stand-in worker outlives a killed
    stand-in task by about a second."""
    import functools
    import os
    import subprocess
    import time

    from harness.stages import tokenize

    init = tokenize._loader([1, 2], 1, False).worker_init_fn
    assert isinstance(init, functools.partial) and init.func is tokenize._end_with and init.args == (os.getpid(),)
    task = subprocess.Popen(["sleep", "60"])
    worker = os.fork()
    if worker == 0:  # the stand-in worker: watch the task, then idle as a decoding worker would
        tokenize._end_with(task.pid, 0)
        time.sleep(30)
        os._exit(3)
    task.kill()
    task.wait()
    deadline, status = time.time() + 10, None
    while status is None and time.time() < deadline:
        done, code = os.waitpid(worker, os.WNOHANG)
        status = code if done else None
        time.sleep(0.1)
    if status is None:
        os.kill(worker, 9)
        os.waitpid(worker, 0)
    assert status is not None and os.waitstatus_to_exitcode(status) == 0, "the worker outlived its task"
