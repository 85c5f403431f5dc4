"""Atomic writes with names near the file system's 255-byte limit: the temp file must fit too."""

from __future__ import annotations

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
