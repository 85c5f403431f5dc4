"""The token cache (`data.cache_dir`): the facts a key is made of, an entry's state, the claim a building submit
holds, and `harness cache ls` / `rm`.

The key itself is `harness.core.tokencache`'s. Who builds is settled under the entry's lock at submit: the first
submit creates `claim.json` (O_EXCL) and submits tokenize and merge into the entry while holding the lock, so a
second submit of the same key, waiting on that lock, finds the claim with the builder's jobs recorded and makes
its finetune wait on the builder's merge. A claim is live while the builder's tokenize or merge tasks are pending
or running (the builder's own backend answers: squeue/sacct, or the local driver); a dead claim without the merge
marker is stale: its partial outputs are removed and the entry is built again, never read.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterator, Mapping

from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from harness.core import footprint, rundir, tokencache
from harness.core import spec as spec_mod
from harness.core.assets import is_local
from harness.core.atomic import atomic_write_json, read_json
from harness.core.errors import HarnessError, Problem
from harness.core.paths import CACHED_STAGES, CacheEntry, RunPaths, cache_entry
from harness.core.spec import RunSpec
from harness.launch.backend import ACTIVE, Submission, load_plan
from harness.lib.inputs import InputItem
from harness.ops.state import backend_for
from harness.stages.dataset import merged_problem


# ------------------------------------------------------------------------------------------ the key's facts
def inputs_digest(spec: RunSpec, items: list[InputItem]) -> str:
    """A manifest's or jsonl's text (nothing is stat-ed for those), else each listed file's path, size and mtime."""
    h = hashlib.sha256()
    listing = spec.data.jsonl or spec.data.manifest
    if listing:
        h.update(f"{listing}\n".encode())
        h.update(Path(listing).expanduser().read_bytes())
        return h.hexdigest()
    for it in items:
        try:
            st = os.stat(it.path)
            h.update(f"{it.path}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{it.path}\t{it.error or 'missing'}\n".encode())
    return h.hexdigest()


def encoder_id(spec: RunSpec) -> str:
    """A local encoder by the SHA-256 of its encoder.jit; an HF repo id by its id and revision (assets.revisions,
    'main' where none: pin a commit there so that a hub update makes a new key)."""
    enc = spec.tokenizer.encoder
    if not is_local(enc):
        return f"{enc}@{spec.assets.revisions.get(enc, 'main')}"
    jit = Path(enc).expanduser() / "encoder.jit"
    try:
        with open(jit, "rb") as f:
            return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as e:
        return f"{jit} (unreadable: {e.__class__.__name__})"


TEXT_ENCODER_SMALL = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                      "spiece.model")
"""A local prompt encoder's files hashed whole; its weight files (T5-11B's are ~45 GB) by name, size and mtime."""


def text_encoder_id(spec: RunSpec) -> str:
    """A local prompt-encoder folder by its files: another encoder copied to the same path (a new hidden size, new
    weights) makes a new key, where the path alone reused the old embeddings. An HF repo id: '' (its id and
    revision are in the key already)."""
    t5 = spec.model.text_encoder
    if not spec.video2world or not is_local(t5):
        return ""
    root, h = Path(t5).expanduser(), hashlib.sha256()
    for f in sorted(root.rglob("*")) if root.is_dir() else ():
        rel = f.relative_to(root).as_posix()
        if not f.is_file() or any(part.startswith(".") for part in rel.split("/")):  # locks, caches
            continue
        h.update(rel.encode() + b"\0")
        if f.name in TEXT_ENCODER_SMALL:
            h.update(f.read_bytes())
        else:
            st = f.stat()
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return "files:" + h.hexdigest()


def key_inputs(spec: RunSpec, items: list[InputItem], shards: int) -> dict[str, Any]:
    return tokencache.key_inputs(spec, inputs_digest(spec, items), encoder_id(spec), shards, text_encoder_id(spec))


def entry_of(spec: RunSpec, key: str) -> CacheEntry:
    return cache_entry(Path(spec.data.cache_dir).expanduser(), key)


# ------------------------------------------------------------------------------------------ an entry's state
def read_claim(entry: CacheEntry) -> dict[str, Any] | None:
    try:
        claim = read_json(entry.claim_json)
    except (OSError, ValueError):
        return None
    return claim if isinstance(claim, dict) else None  # valid JSON of another shape reads as unreadable


def builder_of(entry: CacheEntry) -> str:
    """Run id of the build that made the entry (entry.json), '' where unknown."""
    try:
        builder = read_json(entry.entry_json).get("builder", "")
    except (OSError, ValueError, AttributeError):
        return ""
    return builder if isinstance(builder, str) else ""


def run_active(root: Path, stages: Collection[str] | None = None) -> bool:
    """Whether the run at `root` may still work (in `stages`, or any stage): a task pending or running (not one
    that waits on a failed dependency) per the run's own backend."""
    paths = rundir.open_run(root)
    if not paths.is_run:
        return False  # a submit that died before recording its run: nothing of it can finish
    try:
        jobs = rundir.read_jobs(paths)
        q = backend_for(jobs.executor).query(paths, load_plan(paths), jobs)
    except (HarnessError, OSError, ValueError):
        return False
    return any(r.state in ACTIVE and "DependencyNeverSatisfied" not in r.reason
               for name, rows in q.stages if stages is None or name in stages for r in rows)


def claim_live(claim: Mapping[str, Any]) -> bool:
    """Whether the claiming run's tokenize or merge may still finish."""
    return run_active(Path(str(claim.get("root", ""))), CACHED_STAGES)


def live_users(entry: CacheEntry) -> list[str]:
    """Runs recorded as using the entry that still have a task pending or running: they read its dataset."""
    out = []
    for p in sorted(entry.users_dir.glob("*.json")) if entry.users_dir.is_dir() else []:
        try:
            root = Path(str(read_json(p).get("root", "")))
        except (OSError, ValueError, AttributeError):
            continue
        if root != Path("") and run_active(root):
            out.append(p.stem)
    return out


def damage(entry: CacheEntry) -> str | None:
    """Why a complete entry cannot be used (freed, or a file of its dataset gone or cut short), None when it can."""
    if entry.freed_json.is_file():
        return "its tokens and dataset were freed (harness cache rm)"
    return merged_problem(RunPaths(entry.root)) if entry.is_complete else None


def usable(entry: CacheEntry) -> bool:
    return entry.is_complete and damage(entry) is None


def inspect(entry: CacheEntry, key: str) -> tokencache.CacheUse:
    """What a submit would do with the entry now (`harness plan`; submit decides again under the lock). A
    complete entry whose dataset is damaged is built again, like a stale one."""
    complete = usable(entry)
    claim = read_claim(entry) if not complete else None
    live = claim is not None and claim_live(claim)
    return tokencache.decide(key, complete, str((claim or {}).get("run", "")), live, builder_of(entry))


# ------------------------------------------------------------------------------------------ submit
@contextmanager
def _locked(entry: CacheEntry) -> Iterator[None]:
    """The entry's lock: held by a submit from its decision until its build's jobs are recorded."""
    entry.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(entry.lock, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextmanager
def claimed(entry: CacheEntry, key: str, inputs: Mapping[str, Any], paths: RunPaths
            ) -> Iterator[tokencache.CacheUse]:
    """Decide under the entry's lock and, to build, claim it for `paths`' run; the caller submits inside. A stale
    claim's partial outputs are removed first; a submit that fails inside gives its claim up."""
    with _locked(entry):
        use = inspect(entry, key)
        if use.mode == "build":
            for p in entry.build_outputs:
                shutil.rmtree(p, ignore_errors=True)
            entry.claim_json.unlink(missing_ok=True)
            _create_claim(entry, paths)
            atomic_write_json(entry.entry_json, {"key": key, "inputs": dict(inputs), "builder": paths.run_id,
                                                 "builder_root": str(paths.root), "created": time.time()})
        try:
            yield use
        except BaseException:
            if use.mode == "build":
                entry.claim_json.unlink(missing_ok=True)
            raise


def _create_claim(entry: CacheEntry, paths: RunPaths) -> None:
    fd = os.open(entry.claim_json, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(_claim_text(paths, []))


def _claim(paths: RunPaths, merge_ids: list[str]) -> dict[str, Any]:
    return {"run": paths.run_id, "root": str(paths.root), "merge_jobs": merge_ids, "time": time.time()}


def _claim_text(paths: RunPaths, merge_ids: list[str]) -> str:
    return json.dumps(_claim(paths, merge_ids))


def record_build(entry: CacheEntry, paths: RunPaths, subs: list[Submission]) -> None:
    """The builder's merge job ids into its claim (what a later submit's finetune waits on)."""
    atomic_write_json(entry.claim_json, _claim(paths, [s.job_id for s in subs if s.stage == "merge"]))


def record_rebuild(paths: RunPaths, subs: list[Submission]) -> None:
    """A resume of the entry's builder that resubmitted its merge: the claim names the new merge job, which a
    later submit's finetune waits on (the cancelled one never completes)."""
    if paths.cache is None or not any(s.stage == "merge" for s in subs):
        return
    entry = CacheEntry(paths.cache)
    if (read_claim(entry) or {}).get("run") == paths.run_id:
        record_build(entry, paths, subs)


def builder_root(entry: CacheEntry) -> Path:
    claim = read_claim(entry) or {}
    return Path(str(claim.get("root", "")))


def add_user(entry: CacheEntry, paths: RunPaths, use: tokencache.CacheUse) -> None:
    """One file per run: `harness cache ls` counts them, the newest is the entry's last use."""
    atomic_write_json(entry.user(paths.run_id), {"run": paths.run_id, "root": str(paths.root), "mode": use.mode,
                                                 "time": time.time()})


# ------------------------------------------------------------------------------------------ ls / rm
@dataclass(frozen=True)
class EntryRow:
    key16: str
    size: int
    complete: bool
    builder: str
    last_use: float
    users: tuple[str, ...]
    claim: str
    """'' (no claim, or a complete entry), `live (run)` or `stale (run)`."""
    damage: str = ""
    """Why a complete entry's dataset is unusable (the next submit builds it again); '' when it is usable."""


def _size(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def row(entry: CacheEntry) -> EntryRow:
    users = sorted(entry.users_dir.glob("*.json")) if entry.users_dir.is_dir() else []
    stamps = [p.stat().st_mtime for p in users] or [entry.root.stat().st_mtime]
    claim = read_claim(entry) if not entry.is_complete else None
    state = "" if claim is None else f"{'live' if claim_live(claim) else 'stale'} ({claim.get('run', '')})"
    return EntryRow(entry.key16, _size(entry.root), entry.is_complete, builder_of(entry), max(stamps),
                    tuple(p.stem for p in users), state, damage(entry) or "")


def entries(cache_dir: Path) -> list[CacheEntry]:
    if not cache_dir.is_dir():
        raise HarnessError(Problem(str(cache_dir), "data.cache_dir", "not a directory"))
    return [CacheEntry(d) for d in sorted(cache_dir.iterdir())
            if d.is_dir() and (CacheEntry(d).entry_json.exists() or CacheEntry(d).claim_json.exists())]


def full_key(entry: CacheEntry) -> str:
    """The whole key from entry.json; the directory's 16 characters where it is missing, unreadable or not a key
    of that directory (an edited entry.json: `cache ls` shows the directory, so `cache rm` must take it)."""
    try:
        key = read_json(entry.entry_json).get("key")
    except (OSError, ValueError, AttributeError):
        return entry.key16
    return key if isinstance(key, str) and key.startswith(entry.key16) else entry.key16


def find(cache_dir: Path, key: str) -> CacheEntry:
    """The entry whose whole key starts with `key`: exactly one. Every character given counts (a longer key that
    only shares the directory's 16 would name another entry)."""
    hits = [e for e in entries(cache_dir) if key and full_key(e).startswith(key)]
    if len(hits) != 1:
        what = "no entry" if not hits else f"{len(hits)} entries ({', '.join(e.key16 for e in hits)})"
        raise HarnessError(Problem(str(cache_dir), "KEY", f"{key!r} matches {what}; `harness cache ls` lists them"))
    return hits[0]


def remove(cache_dir: Path, key: str) -> CacheEntry:
    """Remove an entry, under its lock; an entry whose build is still live, or that a live run reads, is refused.
    A complete entry is freed: its tokens and dataset go, its markers, logs and users stay, so the runs trained
    on it still read as complete (and a later submit of its key builds it again, as it does a damaged one); a
    freed entry removed again goes whole."""
    entry = find(cache_dir, key)
    if entry.root.is_symlink():
        raise HarnessError(Problem(str(entry.root), "KEY", f"is a symbolic link to {entry.root.resolve()}, which "
                                                           "the harness did not create: remove it yourself"))
    with _locked(entry):
        claim = read_claim(entry) if not entry.is_complete else None
        if claim is not None and claim_live(claim):
            raise HarnessError(Problem(str(entry.claim_json), "run",
                                       f"run {claim.get('run', '')} is still building this entry; cancel it first"))
        busy = live_users(entry)
        if busy:
            raise HarnessError(Problem(str(entry.root), "KEY", f"run(s) {', '.join(busy)} still have tasks pending "
                                                               "or running on this entry; wait or cancel them first"))
        if entry.is_complete and not entry.freed_json.is_file():
            atomic_write_json(entry.freed_json, {"time": time.time()})  # first: a cut-short free is a damaged entry
            for part in entry.build_outputs:
                if part != RunPaths(entry.root).done_dir:  # the markers stay: the runs on it read as complete
                    shutil.rmtree(part, ignore_errors=True)
        else:
            shutil.rmtree(entry.root)
    return entry


def cache_dir_of(spec: str | None, cache_dir: str | None) -> Path:
    """`harness cache`'s directory: --cache-dir, else the spec's data.cache_dir; a directory given where the
    spec goes is taken as the cache directory itself (what `harness cache ls DIR` plainly means)."""
    if not cache_dir and spec and Path(spec).is_dir():
        cache_dir = spec
    if not cache_dir and spec:
        cache_dir = spec_mod.absolutize(spec_mod.load(Path(spec)), Path.cwd()).data.cache_dir
        if not cache_dir:
            raise HarnessError(Problem(spec, "data.cache_dir", "is not set: give --cache-dir DIR"))
    if not cache_dir:
        raise HarnessError(Problem("cache", "--cache-dir", "give the cache directory or a spec with data.cache_dir"))
    return Path(cache_dir).expanduser()


def cmd_ls(cache_dir: Path, console: Console) -> int:
    """A table of the entries: key, size, complete?, builder, last use and the runs using each."""
    t = Table(Column("key", no_wrap=True, min_width=16), "size", "complete", Column("builder", overflow="fold"),
              "last use", Column("users", overflow="fold"), Column("claim", overflow="fold"),
              title=escape(f"token cache {cache_dir}"), title_justify="left")
    for e in entries(cache_dir):
        r = row(e)
        done = f"damaged: {r.damage}" if r.damage else "yes" if r.complete else "no"
        t.add_row(r.key16, footprint.human(r.size), escape(done), escape(r.builder or "-"),
                  time.strftime("%Y-%m-%d %H:%M", time.localtime(r.last_use)),
                  escape(f"{len(r.users)}: {', '.join(r.users)}" if r.users else "0"), escape(r.claim or "-"))
    console.print(t)
    return 0


def cmd_rm(cache_dir: Path, key: str, console: Console) -> int:
    entry = remove(cache_dir, key)
    console.print(f"freed cache entry {entry.key16} ({entry.root}): its tokens and dataset are removed; the runs "
                  "trained on it keep their records (rm it again to remove the rest)" if entry.root.is_dir() else
                  f"removed cache entry {entry.key16} ({entry.root})", markup=False)
    return 0
