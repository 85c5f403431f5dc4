"""Operating runs: status, logs, resume, cancel, report, runs, and `submit --wait`.

Every command rebuilds what it needs from the run directory (spec.json, plan.json, jobs.json, completion
markers) plus at most one squeue and one sacct, all through `harness.launch.slurmcli`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from harness.ops import control, state, status
from harness.core.paths import RunPaths



def _console() -> Console:
    """Made per command, so the terminal width (or COLUMNS) of this call applies."""
    return Console(highlight=False)

__all__ = ["cmd_status", "cmd_logs", "cmd_resume", "cmd_cancel", "cmd_report", "cmd_runs", "cmd_inspect_checkpoint", "wait",
           "control", "state", "status"]


def _run(a: argparse.Namespace) -> RunPaths:
    return state.resolve_run(a.run, getattr(a, "workdir", "runs"))


def cmd_status(a: argparse.Namespace) -> int:
    if getattr(a, "watch", False):  # the live view until every task is final, then the full status
        from harness.launch import load_plan
        from harness.ops import live

        paths, console = _run(a), _console()
        live.follow(paths, load_plan(paths), console)
        return status.status(paths, console, show_all=getattr(a, "all", False))
    return status.status(_run(a), _console(), show_all=getattr(a, "all", False))


def cmd_logs(a: argparse.Namespace) -> int:
    return control.show_logs(_run(a), a.stage, a.task, _console(), follow=a.follow, stderr=a.stderr)


def cmd_resume(a: argparse.Namespace) -> int:
    control.resume(_run(a), _console())
    return 0


def cmd_cancel(a: argparse.Namespace) -> int:
    return control.cancel(_run(a), _console(), getattr(a, "stage", None))


def cmd_report(a: argparse.Namespace) -> int:
    return print_report(_run(a))


def print_report(paths: RunPaths) -> int:
    """Tables in the terminal and the results files; used by `harness report` and `harness quickstart`."""
    from harness.report import build as report
    from harness.launch import load_plan

    plan = load_plan(paths)
    rs = state.collect(paths, plan)
    failures = [r.__dict__ for r in rs.rows if r.state != state.COMPLETED]
    rep = report.build(paths, plan.spec, failures, plan.training)
    console = _console()
    report.render(rep, console)
    out = report.results_dir(plan.spec, paths)
    files = report.write(rep, out)
    media = [f for f in files if f.parent.parent == out / "media"]
    for f in files:
        if f not in media:
            console.print(f"wrote {f}", soft_wrap=True)
    if media:
        console.print(f"wrote {len(media)} video and frame files under {out / 'media'} (linked by report.html)",
                      soft_wrap=True)
    return 0


def cmd_runs(a: argparse.Namespace) -> int:
    return status.runs(Path(a.workdir), _console())


def cmd_inspect_checkpoint(a: argparse.Namespace) -> int:
    from harness.ops.checkpoint import inspect_checkpoint

    return inspect_checkpoint(Path(a.directory), a.preset, a.tp, a.layers, _console())


def wait(paths: RunPaths, timeout_s: float) -> int:
    return status.wait(paths, timeout_s, _console())
