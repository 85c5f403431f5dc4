"""Operating runs: status, logs, resume, cancel, report, compare, runs, sync, and `submit --wait`; plus the
commands that work on folders, not runs (evaluate, synth), and doctor's printing of its checks.

Every run command rebuilds what it needs from the run directory (spec.json, plan.json, jobs.json, completion
markers) plus at most one squeue and one sacct, through the run's backend (harness.launch). Commands take
plain typed parameters; `harness.cli` parses the command line and calls them.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from rich.console import Console

    from harness.core.paths import CampaignPaths, RunPaths
    from harness.ops.state import TaskState

__all__ = ["cmd_doctor", "cmd_status", "cmd_logs", "cmd_resume", "cmd_cancel", "cmd_report", "cmd_compare",
           "cmd_runs", "cmd_cache", "cmd_inspect_checkpoint", "cmd_export", "cmd_sync", "cmd_evaluate", "cmd_synth",
           "print_report", "wait"]
"""Each command imports what it uses when it runs: `harness evaluate` of one pair would otherwise pay for the
run machinery (submitit, the launch backends, the report: ~0.36 CPU-s) before its first result."""


def _console() -> Console:
    """Made per command, so the terminal width (or COLUMNS) of this call applies."""
    from rich.console import Console

    return Console(highlight=False)


def _campaign(run: str, workdir: str) -> CampaignPaths | None:
    """`run` names a campaign (its commands then act on every member)."""
    from harness.ops import campaign

    return campaign.resolve(run, workdir)


def cmd_status(run: str, workdir: str = "runs", *, watch: bool = False, show_all: bool = False) -> int:
    from harness.launch.backend import load_plan
    from harness.ops import campaign, state, status

    cpaths = _campaign(run, workdir)
    if cpaths is not None:
        return campaign.show_status(cpaths, _console())
    paths = state.resolve_run(run, workdir)
    if watch:  # the live view until every task is final, then the full status
        from harness.ops import live

        console = _console()
        live.follow(paths, load_plan(paths), console)
        return status.status(paths, console, show_all=show_all)
    return status.status(paths, _console(), show_all=show_all)


def cmd_logs(run: str, stage: str, task: int, workdir: str = "runs", *, follow: bool = False,
             stderr: bool = False) -> int:
    from harness.ops import control, state

    return control.show_logs(state.resolve_run(run, workdir), stage, task, _console(), follow=follow, stderr=stderr)


def cmd_resume(run: str, workdir: str = "runs") -> int:
    from harness.ops import campaign, control, state

    cpaths = _campaign(run, workdir)
    if cpaths is not None:
        return campaign.resume(cpaths, _console())
    control.resume(state.resolve_run(run, workdir), _console())
    return 0


def cmd_cancel(run: str, stage: str | None = None, workdir: str = "runs") -> int:
    from harness.ops import campaign, control, state

    cpaths = _campaign(run, workdir)
    if cpaths is not None:
        return campaign.cancel(cpaths, _console(), stage)
    return control.cancel(state.resolve_run(run, workdir), _console(), stage)


def cmd_report(run: str, workdir: str = "runs") -> int:
    from harness.ops import campaign, state

    cpaths = _campaign(run, workdir)
    if cpaths is not None:
        return campaign.report(cpaths, print_report)
    return print_report(state.resolve_run(run, workdir))


def print_report(paths: RunPaths) -> int:
    """Tables in the terminal and the results files; used by `harness report` and `harness quickstart`."""
    from harness.launch.backend import load_plan
    from harness.ops import gpuhours, state
    from harness.report import build as report

    plan = load_plan(paths)
    rs, stale = state.collect_or_stored(paths, plan)
    failures = [_failure(r) for r in rs.rows if r.state != state.COMPLETED]
    rep = report.build(paths, plan.spec, failures, plan.training, gpuhours.usage(rs, plan))
    console = _console()
    if stale:
        console.print(f"note: {stale}", markup=False, soft_wrap=True)
    report.render(rep, console)
    out = report.results_dir(plan.spec, paths)
    files = report.write(rep, out)
    media = [f for f in files if f.parent.parent == out / "media"]
    for f in files:
        if f not in media:
            console.print(f"wrote {f}", soft_wrap=True, markup=False)
    if media:
        console.print(f"wrote {len(media)} video and frame files under {out / 'media'} (linked by report.html)",
                      soft_wrap=True, markup=False)
    return 0


def _failure(r: TaskState) -> dict[str, object]:
    """The report's failure rows keep the fields they always had (the task state minus Slurm's uid and the
    GPU-seconds, which the report's GPU-hours table sums)."""
    return {k: v for k, v in r.__dict__.items() if k not in ("cancelled_by", "gpu_seconds")}


def cmd_compare(runs: list[str], workdir: str = "runs") -> int:
    from harness.ops import compare

    return compare.compare(runs, workdir, _console())


def cmd_cache(verb: str, key: str, spec: str | None, cache_dir: str | None) -> int:
    """`harness cache ls|rm` on --cache-dir or the spec's data.cache_dir."""
    from harness.ops import cache

    d = cache.cache_dir_of(spec, cache_dir)
    return cache.cmd_ls(d, _console()) if verb == "ls" else cache.cmd_rm(d, key, _console())


def cmd_runs(workdir: str = "runs") -> int:
    from harness.ops import status

    return status.runs(Path(workdir), _console())


@contextmanager
def _libraries_quiet() -> Iterator[None]:
    """For the commands that read checkpoints (or write a tokenizer) on the login node: the warnings torch and
    megatron-core print on import and load (pynvml's deprecation, "Transformer Engine and Apex are not
    installed", megatron's end-of-life log lines) would bury the command's one line of result or error. The
    stages keep them in logs."""
    import logging
    import warnings

    log = logging.getLogger("megatron")
    level = log.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        log.setLevel(logging.ERROR)
        try:
            yield
        finally:
            log.setLevel(level)


def cmd_inspect_checkpoint(directory: str, preset: str | None, tp: int, layers: int | None) -> int:
    with _libraries_quiet():
        from harness.ops.checkpoint import inspect_checkpoint

        return inspect_checkpoint(Path(directory), preset, tp, layers, _console())


def cmd_export(source: str, step: int | None, to: str, fmt: str, dtype: str, preset: str | None,
               workdir: str = "runs", context: str | None = None) -> int:
    with _libraries_quiet():
        from harness.ops import export

        return export.export(export.Request(source, step, Path(to), fmt, dtype, preset, workdir, context),
                             _console())


def wait(paths: RunPaths, timeout_s: float) -> int:
    from harness.ops import status

    return status.wait(paths, timeout_s, _console())


def cmd_sync(run: str, workdir: str = "runs") -> int:
    """Upload a run's offline W&B runs from the login node (compute nodes have no internet, and no key)."""
    from harness.ops import state
    from harness.report import tracking

    console = _console()
    for d in tracking.sync(state.resolve_run(run, workdir)):
        console.print(f"synced {d}", markup=False, soft_wrap=True)
    return 0


def cmd_evaluate(reference: str, generated: str, backend: str, out_file: str | None, protocol: str = "aligned") -> int:
    """`harness evaluate`: two folders compared as the evaluate stage compares a run's, with no run around them;
    with protocol "both" a table per protocol. The process does no linear algebra (numba and PyAV do the work, on
    this command's own threads), so BLAS/OpenMP pools of one thread: idle pool threads spinning at start-up were
    ~0.1 of the ~1 CPU-s one pair takes. Set before numpy loads, and only where the caller has not."""
    import os

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    from rich.markup import escape

    from harness.core.atomic import atomic_write_json
    from harness.core.errors import HarnessError, Problem
    from harness.report import evaltable
    from harness.stages.evaluate import evaluate_dirs, videos_of

    for folder, key in ((reference, "--reference"), (generated, "--generated")):
        videos_of(Path(folder), key)  # a missing folder is named before --out is judged
    out = _evaluate_out(Path(out_file) if out_file else evaltable.default_out(generated), "--out")
    result = evaluate_dirs(Path(reference), Path(generated), backend=backend, protocol=protocol)
    if not result["videos"] and not result["failed"]:
        gens, refs = len(result["missing_reference"]), len(result["missing_generated"])
        raise HarnessError(Problem(generated, "--generated", f"nothing to compare: none of its {gens} video(s) "
                                                             f"has a namesake among the {refs} of {reference}"))
    console = _console()
    if not result["videos"]:  # every pair failed: say why, keep what --out holds, exit 2
        for line in evaltable.problems(result):
            console.print(f"[yellow]note:[/] {escape(line)}")
        raise HarnessError(Problem(generated, "--generated", f"no pair could be compared: all "
                                                             f"{len(result['failed'])} failed (notes above)"))
    atomic_write_json(out, result)
    for one in (result, *result.get("other_protocols", [])):
        console.print(evaltable.table(one))
        for line in evaltable.problems(one):
            console.print(f"[yellow]note:[/] {escape(line)}")
    console.print(f"wrote {out} (per-frame SSIM and the compared frame indices)", markup=False)
    return 0


def _evaluate_out(out: Path, key: str) -> Path:
    """Where `harness evaluate` may write its JSON: never over a video, nor over a video's alignment sidecar
    (`<stem>.json` beside `<stem>.mp4`, which the default `evaluate.json` is beside `evaluate.mp4`)."""
    from harness.core.atomic import output_file
    from harness.core.errors import HarnessError, Problem
    from harness.lib import media

    if out.suffix.lower() in (*media.VIDEO_SUFFIXES, *media.IMAGE_SUFFIXES):  # references may be images too
        raise HarnessError(Problem(str(out), key, "is a video's or image's name: give a .json file to write"))
    video = next((out.with_suffix(s) for s in media.VIDEO_SUFFIXES if out.with_suffix(s).exists()), None)
    if video is not None:
        raise HarnessError(Problem(str(out), key, f"would replace the alignment sidecar of {video.name}: give "
                                                  "another file (--out)"))
    return output_file(out, key)


def cmd_doctor(spec: str, overrides: list[str]) -> int:
    from rich.markup import escape

    from harness.ops import doctor

    _, checks = doctor.diagnose(Path(spec), overrides=tuple(overrides))
    console, style = _console(), {"pass": "green", "fail": "bold red", "skip": "yellow"}
    for c in checks:
        console.print(f"[{style[c.status]}]{c.status:<4}[/]  {escape(c.key)}: {escape(c.what)}: {escape(c.detail)}",
                      soft_wrap=True)
    n = {k: sum(c.status == k for c in checks) for k in style}
    console.print(f"{n['pass']} passed, {n['fail']} failed, {n['skip']} skipped")
    return 2 if n["fail"] else 0


def cmd_synth(out_dir: str) -> int:
    from harness.core.atomic import output_dir

    with _libraries_quiet():  # torch writes the TorchScript tokenizer
        from harness.lib import synth

        root = Path(out_dir)
        if root.is_dir() and any(root.iterdir()) and not (root / synth.SYNTH_MARKER).exists():
            from harness.core.errors import HarnessError, Problem

            raise HarnessError(Problem(out_dir, "--out", "holds files harness synth did not write, which it "
                                                         "would overwrite: name a new or empty folder"))
        out = synth.make_quickstart(output_dir(root, "--out"))
    console = _console()
    for k, v in out.items():
        console.print(f"{k}: {v}", markup=False)
    return 0
