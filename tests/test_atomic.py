"""Atomic writes with names near the file system's 255-byte limit: the temp file must fit too."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from harness.core.atomic import atomic_write_json, file_mode, read_json
from harness.lib.video import write_mp4


def test_a_long_target_name_still_gets_a_temp_file(tmp_path: Path) -> None:
    """A 243-byte name is legal (ext4: 255); its temp name (the target's plus ~18 bytes) was not, so the write
    failed with ENAMETOOLONG after the work was done."""
    stem = "長" * 80
    target = tmp_path / f"{stem}.json"
    atomic_write_json(target, {"ok": 1})
    assert read_json(target) == {"ok": 1}
    mp4 = tmp_path / f"{stem}.mp4"
    write_mp4(mp4, np.zeros((2, 16, 16, 3), np.uint8), 8)
    assert mp4.stat().st_size > 0 and sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, mp4.name])
    # as readable as a plain open() makes them (mkstemp's 0600 kept generated videos from other users)
    assert {mp4.stat().st_mode & 0o777, target.stat().st_mode & 0o777} == {file_mode()}


def test_a_name_in_another_encoding_does_not_fail_a_text_file(tmp_path: Path) -> None:
    """A Latin-1 file name (read by Python as a lone surrogate) in a report cell made the strict UTF-8 encode
    fail the whole report; the byte is written as it was."""
    from harness.core.atomic import atomic_write_text
    from harness.report import html as report_html

    name = os.fsdecode(b"caf\xe9.mp4")
    s = report_html.Sample(10, "caf\ufffd", "g.mp4", f"/in/{name}", (0,), (0,), 1)
    atomic_write_text(tmp_path / "report.html", report_html.page("t", [], {}, [report_html.Media(s, "g", "r", "s")]))
    assert b"reference: caf\xe9.mp4" in (tmp_path / "report.html").read_bytes()
