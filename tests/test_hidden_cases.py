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

