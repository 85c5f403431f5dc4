"""Why a task failed, as one line a user can act on: the one place a failure text becomes a task's reason.

Two sources feed `status` and the report: submitit's exception text (local executor) and the tail of a task's
stderr (Slurm). Both are tracebacks, and a traceback's last line is not always its message: a full disk
truncates the log mid-frame (seen: the reason `File "<frozen runpy>", line 88, in _run_cod`). So the reason is the
last exception line, never a frame, and a full disk or an exhausted quota, whichever layer reports it (OSError
ENOSPC/EDQUOT, torch's `unexpected pos 704 vs 598`, megatron's wrapped RuntimeError), becomes one line naming the
filesystem and the path: `no space left on tmpfs /mnt/x for /mnt/x/run/...: need ~99.2 MB, 75.1 MB free`.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

from harness.core.errors import HarnessError
from harness.core.footprint import human

NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_NO_SPACE_TEXT = re.compile(
    r"No space left on device|Disk quota exceeded|unexpected pos \d+ vs \d+|PytorchStreamWriter failed writing"
    r"|\[Errno (?:28|122)\]|errno(?: =|:)? (?:28|122)\b", re.IGNORECASE)
"""How the layers under a checkpoint word a full disk: Python's OSError, torch's zip writer (a short write shows
as `unexpected pos`, caffe2/serialize/inline_container.cc), megatron-core's re-raised RuntimeError."""
PREFIX = "no space left on "
_OURS = re.compile(r"no space left on \S+ \S+ for \S.*")
_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit|Preempted)\b(:.*)?$")
_RANK = re.compile(r"^\[rank\d+\]:\s?")
_LOG_RECORD = re.compile(r"\b(DEBUG|INFO|WARNING|WARN)\b")
"""A log line (`2026-... INFO harness.tokenize: ...`) is what a task said while it ran, never why it ended: a task
killed mid-way leaves one as the last line of its log."""


class NoSpaceError(HarnessError):
    """A task's filesystem is full (or its quota spent); the message is the task's reason as it stands."""


# ------------------------------------------------------------------------------------------ filesystems
def existing(path: Path) -> Path:
    """The path or its nearest existing parent: free space is a property of where a file will land."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(existing(path)).free


def filesystem(path: Path) -> str:
    """`<type> <mount point>` of the filesystem holding `path` (from /proc/self/mounts), e.g. `lustre /scratch`."""
    real = os.path.realpath(existing(path))
    best, kind = "/", "?"
    try:
        with open("/proc/self/mounts", encoding="utf-8") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) < 3:
                    continue
                mnt = fields[1].replace("\\040", " ")
                inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) >= len(best):
                    best, kind = mnt, fields[2]
    except OSError:
        pass
    return f"{kind} {best}"


def message(path: Path, need: int | None = None, detail: str = "") -> str:
    """The one line: filesystem, path, what was needed (when known) and what is free now."""
    want = f"need ~{human(need)}, " if need else ""
    tail = f" ({detail})" if detail else ""
    return f"{PREFIX}{filesystem(path)} for {path}: {want}{human(free_bytes(path))} free{tail}"


def check_free(path: Path, need: int, free: int | None = None) -> None:
    """Refuse before writing anything when `need` bytes do not fit (`free`: a figure agreed across ranks)."""
    free = free_bytes(path) if free is None else free
    if free < need:
        raise NoSpaceError(f"{PREFIX}{filesystem(path)} for {path}: need ~{human(need)}, {human(free)} free")


# ------------------------------------------------------------------------------------------ recognising one
def _chain(e: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and cur not in out:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def is_no_space(e: BaseException | str) -> bool:
    """True for ENOSPC/EDQUOT from any layer: an OSError anywhere in the chain, or the text the layer wrote."""
    if isinstance(e, str):
        return bool(_NO_SPACE_TEXT.search(e))
    for x in _chain(e):
        if isinstance(x, NoSpaceError) or (isinstance(x, OSError) and x.errno in NO_SPACE_ERRNOS):
            return True
        if _NO_SPACE_TEXT.search(str(x)):
            return True
    return False


def as_no_space(e: BaseException, where: Path, need: int | None = None) -> NoSpaceError:
    """The exception a worker raises for a full disk: the OSError's own file when it names one, else `where`."""
    ours = _OURS.search(str(e))
    if ours:
        return NoSpaceError(ours.group(0))
    names = [x.filename for x in _chain(e) if isinstance(x, OSError) and isinstance(x.filename, str)]
    first = (str(e).strip().splitlines() or [type(e).__name__])[-1][:200]
    return NoSpaceError(message(Path(names[0]) if names else where, need, f"{type(e).__name__}: {first}"))


# ------------------------------------------------------------------------------------------ reasons
def reason(text: str, where: Path | None = None, limit: int = 300) -> str:
    """A task's reason from its traceback text: our full-disk line if present; else the last exception line with
    a message, mapped to the full-disk line (`where`: the run directory) when it is one; never a frame."""
    raw = [_RANK.sub("", ln).rstrip() for ln in text.splitlines()]
    raw = [ln for ln in raw if ln.strip() and not ln.startswith(("srun:", "slurmstepd:"))]
    lines = [ln.strip() for ln in raw]
    ours = [m.group(0) for ln in lines if (m := _OURS.search(ln))]
    if ours:
        return ours[-1][:limit]
    hits = [ln for ln in lines if _EXC_LINE.match(ln)]
    said = [ln for ln in hits if not ln.endswith(":")] or hits
    plain = [ln for ln in raw if not ln[0].isspace() and not _is_frame(ln)  # source lines are indented
             and not _LOG_RECORD.search(ln)]
    line = said[-1] if said else (plain[-1] if plain else "")
    if where is not None and is_no_space(text):
        space = next((ln for ln in reversed(lines) if is_no_space(ln)), line)
        return message(where, None, space[:200])[:limit]
    return line[:limit]


def names_an_exception(text: str) -> bool:
    """Whether the text holds an exception line (a traceback's last), or our full-disk line."""
    lines = [_RANK.sub("", ln).strip() for ln in text.splitlines()]
    return any(_EXC_LINE.match(ln) or _OURS.search(ln) for ln in lines) or is_no_space(text)


def _is_frame(line: str) -> bool:
    """Traceback furniture: frames, their source lines, carets, separators."""
    return line.startswith(("File ", "Traceback", "^", "~", "-" * 4, "During handling", "The above exception"))
