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



@pytest.mark.timeout(120)
def test_decode_workers_end_when_their_task_is_killed(tmp_path: Path) -> None:
    """SIGKILL of a tokenize task (the OOM killer, `scancel --signal=KILL`) left its fork-server decode workers
    running, hundreds of MB each, long after a resume had finished the shard."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "task.py"
    script.write_text(
        "import time\n"
        "from harness.stages.tokenize import _loader\n"
        "from slow_items import SlowItems\n"
        "if __name__ == '__main__':\n"
        "    it = iter(_loader(SlowItems(), 2, False))\n"
        "    next(it)\n"
        "    print(' '.join(str(w.pid) for w in it._workers), flush=True)\n"
        "    time.sleep(600)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent), str(Path(__file__).parent)])}
    task = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    assert task.stdout is not None
    workers = [int(p) for p in task.stdout.readline().split()]
    assert len(workers) == 2
    task.send_signal(signal.SIGKILL)
    task.wait()
    deadline = time.time() + 20
    alive = workers
    while alive and time.time() < deadline:
        time.sleep(0.5)
        alive = [p for p in workers if Path(f"/proc/{p}").exists() and "zombie" not in
                 Path(f"/proc/{p}/status").read_text(errors="replace").lower()]
    assert not alive, f"decode workers {alive} outlived their task"
