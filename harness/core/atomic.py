"""Atomic file writes: a reader (another task, `status`, a browser) never sees half a file, and a task killed
mid-write leaves the previous version or nothing. Library code uses these too, so they know no run directory."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from harness.core.errors import HarnessError, Problem


def _umask() -> int:
    """The process umask without changing it (os.umask can only be read by setting it, which races threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def file_mode() -> int:
    """The mode a plain `open` would give a new file under this umask: what temp-then-rename writes (mkstemp
    makes 0600) and library writers (safetensors) set afterwards, so results on a shared filesystem are as
    readable as the user's other files."""
    return 0o666 & ~_umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename: readers never see half a file."""
    tmp = _synced_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_create_text(path: Path, text: str) -> bool:
    """Write `path` atomically unless it exists; False where it did. Of processes racing to create it the first
    wins and the rest keep its content: a hard link of the synced temp file fails on a taken name, where a
    rename would replace it. A file system without hard links falls back to a rename where the name is free."""
    tmp = _synced_temp(path, text.encode("utf-8", "surrogateescape"))
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:
        if path.exists():
            return False
        os.replace(tmp, path)
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)


def _synced_temp(path: Path, data: bytes) -> str:
    """A hidden temp file beside `path` holding `data`, on disk, with the mode a plain `open` would give."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())  # mkstemp makes 0600; results are for everyone the umask allows
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def temp_prefix(name: str, limit: int = 100) -> str:
    """A hidden temp file's name prefix for target `name`, from at most `limit` bytes of it (whole UTF-8
    characters): the temp name adds ~18 bytes and a file name may have 255, so a long target name must not make
    its temp name impossible."""
    return "." + name.encode("utf-8")[:limit].decode("utf-8", "ignore") + "."


def atomic_write_text(path: Path, text: str) -> None:
    """UTF-8; a file name in another encoding (a Latin-1 byte, which Python reads as a lone surrogate) goes in
    as the byte it was, where a strict encode would fail the whole report over one name."""
    atomic_write_bytes(path, text.encode("utf-8", "surrogateescape"))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def output_dir(path: Path, key: str) -> Path:
    """`path` as a directory to write into, created if need be, checked before any work is done: a file in its
    place or a parent that cannot hold it is one line naming it, not a traceback after the work."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise HarnessError(Problem(str(path), key, f"cannot be written into as a directory ({e.strerror or e})")) \
            from None
    return path


def output_file(path: Path, key: str) -> Path:
    """`path` as a file to write (atomically) once the work is done, checked first: not a directory, and its
    directory writable."""
    if path.is_dir():
        raise HarnessError(Problem(str(path), key, "is a directory: give the path of a file to write"))
    output_dir(path.parent, key)
    return path
