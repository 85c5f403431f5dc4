"""Live progress for `submit --wait`, `quickstart` and `status --watch`.

On a terminal: a rich live table (one row per stage: a bar over its tasks, state counts, elapsed, and what the
tasks themselves report: tokenize clips done, finetune step / max_steps, loss, ETA), redrawn every second so it
is never silent. Elsewhere (a log file, CI): one line per change of a stage's counts and one per failed task,
with its reason. Rendering and change detection are pure functions of a `RunState`.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table

from harness.core.errors import HarnessError
from harness.core.paths import RunPaths
from harness.core.plan import Plan
from harness.launch.backend import load_plan
from harness.ops.state import COMPLETED, RunState, collect, load_jobs
from harness.ops.status import WAIT_RETRIES, _counts, verdict

_BAD = ("FAILED", "OUT_OF_MEMORY", "TIMEOUT", "NODE_FAIL", "CANCELLED", "LOST", "MISSING")
_TOKENIZE_LINE = re.compile(rb"(\d+)/(\d+) inputs")


def _tail(path: str | Path, n: int = 4096) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - n))
            return f.read()
    except OSError:
        return b""


def finetune_progress(paths: RunPaths, plan: Plan) -> str:
    """'step 12/30, loss 4.12, val loss 4.50 at 10, ETA 1 min' from the last step and validation lines of
    finetune/metrics.jsonl; '' before the first step. The ETA counts the remaining tokens (steps x global batch x
    sample length) at the last logged tokens/s."""
    rec: dict[str, Any] = {}
    val: dict[str, Any] = {}
    for line in reversed(_tail(paths.metrics_jsonl).splitlines()):
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r, dict) and "val_loss" in r:
            val = val or r
        elif isinstance(r, dict):
            rec = rec or r
        if rec and val:
            break
    if not isinstance(rec.get("step"), int):
        return ""
    f = plan.spec.finetune
    out = f"step {rec['step']}/{f.max_steps}"
    if isinstance(rec.get("loss"), (int, float)):
        out += f", loss {rec['loss']:.3f}"
    if isinstance(val.get("val_loss"), (int, float)):
        out += f", val loss {val['val_loss']:.3f} at {val.get('step')}"
    rate = rec.get("tokens_per_s")
    if isinstance(rate, (int, float)) and rate > 0 and rec["step"] < f.max_steps:
        left = (f.max_steps - rec["step"]) * f.global_batch_size * plan.token_math.sample_length / rate
        out += f", ETA {_fmt(left)}"
    return out


def tokenize_progress(rs: RunState, plan: Plan) -> str:
    """Clips done: every input of the completed shards plus what running shards last logged ('d/t inputs')."""
    stage = next((s for s in rs.stages if s.name == "tokenize"), None)
    if stage is None or not plan.num_inputs:
        return ""
    shards = max(1, len(stage.rows))
    # inputs.shard_of gives input i to shard i % shards, so shard s holds len(range(s, n, shards)) inputs
    done = sum(len(range(r.task, plan.num_inputs, shards)) for r in stage.rows if r.state == COMPLETED)
    for r in [r for r in stage.rows if r.state == "RUNNING" and r.log][:64]:
        found = _TOKENIZE_LINE.findall(_tail(r.log) + _tail(r.log[:-4] + ".err" if r.log.endswith(".out") else ""))
        if found:
            done += int(found[-1][0])
    return f"{done:,}/{plan.num_inputs:,} clips" if done else ""


def _fmt(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def table(rs: RunState, extras: dict[str, str], elapsed_s: float) -> Table:
    t = Table("stage", "progress", "done", "states", "", title=f"run {rs.paths.run_id} ({rs.executor}), "
                                                              f"{_fmt(elapsed_s)} elapsed: {verdict(rs)}")
    for s in rs.stages:
        total = max(1, len(s.rows))
        bar = ProgressBar(total=total, completed=s.done, width=24,
                          style="bar.back", complete_style="red" if any(r.state in _BAD for r in s.rows) else
                          "green" if s.done == total else "cyan")
        t.add_row(s.name, bar, f"{s.done}/{len(s.rows)}", _counts(s.counts), escape(extras.get(s.name, "")))
    return t


def failures(rs: RunState) -> list[str]:
    return [f"{r.stage}[{r.task}] {r.state}: {r.reason or '-'}" for r in rs.rows if r.state in _BAD]


def view(rs: RunState, extras: dict[str, str], elapsed_s: float) -> Group:
    bad = failures(rs)
    return Group(table(rs, extras, elapsed_s), *[f"[red]failed:[/] {escape(b)}" for b in bad[:10]])


def changes(before: RunState | None, after: RunState, elapsed_s: float) -> list[str]:
    """Lines for a non-terminal: a stage whose counts changed, and each task that newly failed."""
    out = []
    old = {s.name: s.counts for s in before.stages} if before else {}
    old_bad = set(failures(before)) if before else set()
    for s in after.stages:
        if old.get(s.name) != s.counts:
            counts = ", ".join(f"{n} {k}" for k, n in sorted(s.counts.items()))
            out.append(f"[{_fmt(elapsed_s)}] {s.name}: {s.done}/{len(s.rows)} done ({counts})")
    out += [f"[{_fmt(elapsed_s)}] failed: {b}" for b in failures(after) if b not in old_bad]
    return out


def extras_of(rs: RunState, plan: Plan) -> dict[str, str]:
    return {"tokenize": tokenize_progress(rs, plan), "finetune": finetune_progress(rs.paths, plan)}


def follow(paths: RunPaths, plan: Plan, console: Console, timeout_s: float = float("inf"),
           interval_s: float = 2.0) -> RunState | None:
    """Poll until every task is final (None: timed out); a live table on a terminal, lines elsewhere. Elapsed
    times count from the run's first submission (jobs.json), so a later `status --watch` shows the run's age."""
    from rich.live import Live

    deadline = time.monotonic() + timeout_s
    try:
        start = min(s.time for s in load_jobs(paths).submissions)
    except (HarnessError, ValueError, TypeError):
        start = time.time()
    rs, prev, errors = None, None, 0
    live = Live(console=console, refresh_per_second=1, transient=False) if console.is_terminal else None
    try:
        if live:
            live.start()
        while True:
            try:
                rs, errors = collect(paths, plan), 0
            except HarnessError:
                errors += 1  # a busy controller or slurmdbd: retry a few polls before giving up
                if errors >= WAIT_RETRIES:
                    raise
                time.sleep(interval_s)
                continue
            elapsed = max(0.0, time.time() - start)
            if live:
                live.update(view(rs, extras_of(rs, plan), elapsed))
            else:
                for line in changes(prev, rs, elapsed):
                    console.print(line, markup=False, soft_wrap=True)
            prev = rs
            if rs.final and not rs.driver_alive:
                return rs
            if time.monotonic() > deadline:
                return None
            time.sleep(interval_s)
    finally:
        if live:
            live.stop()


def wait(paths: RunPaths, console: Console, timeout_s: float, interval_s: float = 2.0) -> int:
    """`submit --wait` and `quickstart`: follow the run, then one summary line; 0 iff every task completed."""
    plan = load_plan(paths)
    rs = follow(paths, plan, console, timeout_s, interval_s)
    if rs is None:
        last = collect(paths, plan)
        console.print(f"run {paths.run_id}: still running after {timeout_s:.0f} s: {last.summary()}", soft_wrap=True)
        return 1
    word = verdict(rs)
    hint = "" if word == "completed" else f"; harness status {escape(str(paths.root))}"
    console.print(f"run {paths.run_id}: {word}: {rs.summary()}{hint}", soft_wrap=True)
    return 0 if rs.complete else 1


__all__ = ["changes", "finetune_progress", "follow", "table", "tokenize_progress", "view", "wait"]
