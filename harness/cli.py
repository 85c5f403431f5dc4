"""`harness` command line. Input errors print one line each and exit 2; nothing else is caught here."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.bench import BENCHES, at_least
from harness.core.errors import HarnessError

if TYPE_CHECKING:
    from harness.core.sweep import Expanded
    from harness.ops.plan import ExecutorName, PlanView

DESCRIPTION = ("Post-train an NVIDIA Cosmos autoregressive world model on a swapped video tokenizer, from one TOML "
               "run spec, as dependency-chained Slurm job arrays (or on this machine when no Slurm controller "
               "answers). Start with `harness quickstart`; then validate, plan, doctor and submit your own spec.")

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def cmd_validate(args: list[str]) -> int:
    """Exit 2 on any problem (stderr, one line each); warnings go to stdout with the ok line. Every member of a
    sweep is checked, each problem naming its member."""
    from harness.core import spec as spec_mod
    from harness.core.overrides import split_args
    from harness.ops import plan as plan_ops

    specs, overrides = split_args(args, files=True)
    if not specs:
        raise HarnessError("validate: give a spec file (then any section.key=value overrides)")
    for path in specs:
        e = plan_ops.load_members(Path(path), overrides)
        for m in e.members:
            for w in spec_mod.warnings(m.spec):
                console.print(f"warning: {m.label + ': ' if e.is_sweep else ''}{w}", markup=False, soft_wrap=True)
        s = e.members[0].spec
        what = f"{len(e.members)} sweep members, {e.mode}; " if e.is_sweep else ""
        console.print(f"{path}: ok ({what}{s.token_math.describe()})", markup=False)
    return 0


def cmd_plan(spec_path: str, overrides: list[str], out: str | None, num_inputs: int | None,
             executor: ExecutorName) -> int:
    from harness.core.atomic import output_dir
    from harness.ops import plan as plan_ops
    from harness.ops import scripts

    e = plan_ops.load_members(Path(spec_path), overrides)
    if out is not None:
        output_dir(Path(out), "--out")  # before the plan is printed, not a traceback after it
    if e.is_sweep:
        return _plan_campaign(e, out, num_inputs, executor)
    spec = e.members[0].spec
    v = plan_ops.view(spec, plan_ops.gather(spec, executor, "plan", num_inputs=num_inputs))
    _print_view(v, overrides)
    if out is not None:
        scripts.write_scripts(v, Path(out))
        console.print(f"wrote {v.plan.sbatch_calls} sbatch script(s) to {Path(out)} "
                      f"(job ids shown as ${{STAGE_JOB_ID}})", markup=False)
    return 0


def _plan_campaign(e: Expanded, out: str | None, num_inputs: int | None, executor: ExecutorName) -> int:
    """A sweep: the first member's plan in full, then the members, the jobs they share and (--out) the scripts."""
    from harness.ops import plan as plan_ops
    from harness.ops import scripts

    cv = plan_ops.campaign_view(e, plan_ops.gather_members(e, executor, "plan", num_inputs=num_inputs))
    _print_view(cv.first, list(cv.campaign.expanded.overrides))
    console.print(f"[bold]campaign[/]: {len(cv.member_rows)} members ({cv.campaign.expanded.mode} over "
                  f"{', '.join(cv.campaign.expanded.keys)})")
    for header, rows in ((cv.member_header, cv.member_rows), (cv.job_header, cv.job_rows)):
        table = Table(*header)
        for row in rows:
            table.add_row(*map(escape, row))
        console.print(table)
    if out is not None:
        n = scripts.write_scripts(cv, Path(out))
        console.print(f"wrote {n} sbatch script(s) to {Path(out)}, one folder per member "
                      f"(job ids shown as ${{STAGE_JOB_ID}})", markup=False)
    return 0


def _print_view(v: PlanView, overrides: list[str]) -> None:
    """One member's plan as `harness plan` prints it."""
    console.print(f"[bold]{v.title}[/] ({v.subtitle})")
    if overrides:
        console.print(f"effective spec: {v.plan.spec.source} with {' '.join(overrides)}", markup=False,
                      soft_wrap=True)
    for line in v.summary:
        console.print(line)
    console.print(f"infer/evaluate: {v.fanout}", markup=False)
    for w in v.notes:
        console.print(f"[yellow]note:[/] {escape(w)}")
    for line in v.resolved:
        console.print(f"[dim]resolved:[/] {escape(line)}")
    for line in v.estimates:
        console.print(f"[cyan]estimate:[/] {escape(line)}", soft_wrap=True)
    table = Table(*v.stage_header)
    for row in v.stage_rows:
        table.add_row(*row)
    console.print(table)
    for srun in v.srun_lines:
        console.print(f"finetune srun: {srun}", soft_wrap=True, markup=False)


def cmd_submit(spec: str, overrides: list[str], executor: ExecutorName, *, wait: bool, timeout_s: float,
               doctor: bool) -> int:
    from harness.ops import plan as plan_ops
    from harness.ops import submit

    e = plan_ops.load_members(Path(spec), overrides)
    if e.is_sweep:
        return _submit_campaign(e, executor, wait=wait, timeout_s=timeout_s, doctor=doctor)
    res = submit.submit(Path(spec), executor, doctor=doctor, overrides=tuple(overrides))
    console.print(f"run {res.paths.run_id} -> {res.paths.root}", markup=False)
    console.print(f"executor: {res.choice.executor} ({res.choice.reason})", markup=False)
    if res.cache is not None:
        console.print(res.cache.line(), markup=False)
    for s in res.submissions:
        console.print(f"  {s.stage:<13} job {s.job_id}")
    if wait:
        from harness.ops import live

        return live.wait(res.paths, Console(highlight=False), timeout_s)
    return 0


def _submit_campaign(e: Expanded, executor: ExecutorName, *, wait: bool, timeout_s: float, doctor: bool) -> int:
    """A sweep: the campaign id, then each member's run id and job ids; --wait waits for every member."""
    from harness.ops import campaign, live

    res = campaign.submit(Path(e.source), e, executor, doctor=doctor)
    console.print(f"campaign {res.paths.campaign_id} -> {res.paths.root} ({len(res.members)} runs)", markup=False)
    console.print(f"executor: {res.choice.executor} ({res.choice.reason})", markup=False)
    for m in res.members:
        data = f", data from {m.paths.data_root.name}" if m.paths.shared else ""
        console.print(f"run {m.paths.run_id} ({m.values}{data})", markup=False)
        for s in m.submissions:
            if not m.paths.shared or s.stage not in campaign.SHARED_STAGES:
                console.print(f"  {s.stage:<13} job {s.job_id}")
    if not wait:
        return 0
    codes = [live.wait(m.paths, Console(highlight=False), timeout_s) for m in res.members]
    return max(codes)


def cmd_quickstart(spec: str, assets: str, executor: ExecutorName, timeout_s: float) -> int:
    """synth -> submit configs/quickstart.toml -> wait -> report: the README's first command."""
    from harness import ops
    from harness.ops import live, quickstart, submit

    if quickstart.ensure_assets(Path(assets)):
        console.print(f"wrote synthetic clips and a tiny DV tokenizer to {assets}/", markup=False)
    res = submit.submit(quickstart.spec_for(Path(spec), Path(assets)), executor)
    console.print(f"run {res.paths.run_id}: executor {res.choice.executor} ({res.choice.reason})", markup=False)
    code = live.wait(res.paths, Console(highlight=False), timeout_s)
    ops.print_report(res.paths)
    return code


def cmd_bench(name: str, args: list[str]) -> int:
    import importlib
    import json

    mod = importlib.import_module(f"harness.bench.{name}")
    result = mod.run(args)
    console.print_json(json.dumps(result, default=str))
    return int(result.get("exit_code", 0)) if isinstance(result, dict) else 0


def _add_ops(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The commands that operate on a submitted run (harness.ops)."""
    for name, helptext in (("status", "stage and array-task states"), ("logs", "a task's stdout/stderr"),
                           ("resume", "resubmit only incomplete tasks and the stages after them"),
                           ("cancel", "cancel a run (or one stage)"), ("report", "tables + results files"),
                           ("runs", "list runs")):
        s = sub.add_parser(name, help=helptext)
        if name != "runs":
            s.add_argument("run", help="run id or run directory")
        else:
            s.add_argument("--workdir", default="runs")
        if name == "logs":
            s.add_argument("stage")
            s.add_argument("task", nargs="?", type=int, default=0)
            s.add_argument("--follow", "-f", action="store_true")
            s.add_argument("--stderr", action="store_true")
        if name == "status":
            s.add_argument("--watch", action="store_true")
            s.add_argument("--all", action="store_true", help="list every task, completed ones too")
        if name == "cancel":
            s.add_argument("stage", nargs="?", default=None)
        if name in ("status", "resume", "cancel", "report", "logs"):
            s.add_argument("--workdir", default="runs", help="where to look up a run id")

    s = sub.add_parser("cache", help="the token cache (data.cache_dir): `ls` its entries, `rm KEY` one of them")
    verbs = s.add_subparsers(dest="cache_command", required=True)
    for verb in ("ls", "rm"):
        v = verbs.add_parser(verb, help="list the entries" if verb == "ls" else "remove an entry (not one being built)")
        if verb == "rm":
            v.add_argument("key", help="the entry's key (its first characters, as `harness cache ls` shows them)")
        v.add_argument("spec", nargs="?", default=None, help="a spec whose data.cache_dir names the cache")
        v.add_argument("--cache-dir", default=None, help="the cache directory (instead of a spec)")

    s = sub.add_parser("compare", help="runs side by side: one row per (run, checkpoint), the spec keys that differ, "
                       "the best row per metric; writes results/compare-<id>/compare.{md,json,html}")
    s.add_argument("runs", nargs="+", metavar="run", help="run ids, run directories or campaigns (two runs at least)")
    s.add_argument("--workdir", default="runs", help="where to look up run ids")

    s = sub.add_parser("inspect-checkpoint", help="compare a NeMo 2 checkpoint's tensor names and shapes with a "
                       "preset (metadata only); table of mismatches and exit 2 on any")
    s.add_argument("directory", help="checkpoint folder: weights/ + context/, weights in the folder itself "
                   "(metadata.json), or an HF snapshot holding nemo/")
    s.add_argument("--preset", default=None, help="model preset (default: the one the checkpoint names)")
    s.add_argument("--tp", type=int, default=1, help="tensor-parallel size the checkpoint will be loaded at")
    s.add_argument("--layers", type=int, default=None, help="expect this many decoder layers (a reduced stand-in)")


def _add_export(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser("export", help="a checkpoint's weights, TP shards merged, as files that leave the harness: "
                       "model.pt or model.safetensors under upstream's PyTorch names (+ config.json), or a NeMo 2 "
                       "checkpoint folder")
    s.add_argument("source", help="run id or run directory, a checkpoints folder, or one checkpoint folder")
    s.add_argument("--step", type=int, default=None, help="the checkpoint's step (required for a run or "
                   "checkpoints folder)")
    s.add_argument("--to", required=True, help="new folder to write (renamed into place when complete)")
    s.add_argument("--format", required=True, choices=["pytorch", "safetensors", "nemo"])
    s.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="(default bf16, as upstream ships)")
    s.add_argument("--preset", default=None, help="model preset (default: the one the checkpoint names)")
    s.add_argument("--context", default=None, help="nemo format: the NeMo checkpoint (or its context/ folder) "
                   "whose io.json to carry (default: the run's model.checkpoint, else the source's own)")
    s.add_argument("--workdir", default="runs", help="where to look up a run id")


def _add_tools(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Commands beside a run's life cycle: tracking sync, the quickstart, standalone evaluation, benchmarks."""
    s = sub.add_parser("sync", help="upload a run's offline W&B runs ([tracking] wandb = true) with `wandb sync`; "
                       "the key comes from WANDB_API_KEY or `wandb login` on this machine")
    s.add_argument("run", help="run id or run directory")
    s.add_argument("--workdir", default="runs", help="where to look up a run id")

    s = sub.add_parser("synth", help="write the quickstart's synthetic clips and tiny tokenizer")
    s.add_argument("--out", default=".quickstart")

    s = sub.add_parser("quickstart", help="synthetic assets + the whole DAG on configs/quickstart.toml + report")
    s.add_argument("--spec", default="configs/quickstart.toml")
    s.add_argument("--assets", default=".quickstart")
    s.add_argument("--executor", choices=["auto", "slurm", "local"], default="auto")
    s.add_argument("--timeout", type=at_least(1), default=1800, help="seconds")

    s = sub.add_parser("evaluate", help="TokenBench PSNR/SSIM of generated vs reference videos")
    s.add_argument("--reference", required=True)
    s.add_argument("--generated", required=True)
    s.add_argument("--backend", choices=["auto", "fast", "skimage"], default="auto")
    s.add_argument("--out", default=None, help="where the full JSON goes (default: GENERATED/evaluate.json)")
    s.add_argument("--protocol", choices=["aligned", "tokenbench", "both"], default="aligned",
                   help="aligned: frame i (or the sidecar's) at the generated size; tokenbench: TokenBench's "
                        "preprocessing (17 frames, short side 320, H.264 round trip); both: each")

    s = sub.add_parser("bench", help="benchmarks; figures go to results/bench/")
    s.add_argument("name", choices=BENCHES)
    s.add_argument("args", nargs=argparse.REMAINDER)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harness", description=DESCRIPTION)
    sub = p.add_subparsers(dest="command", required=True)

    over = "section.key=value overrides, values in TOML syntax (finetune.lr=3e-4)"
    s = sub.add_parser("validate", help="check specs (every member of a sweep); one line per problem, exit 2 on any")
    s.add_argument("specs", nargs="+", help="spec files, then any " + over)

    s = sub.add_parser("plan", help="print the DAG, token math and resources; --out writes every sbatch script")
    s.add_argument("spec")
    s.add_argument("overrides", nargs="*", help=over)
    s.add_argument("--out", default=None)
    s.add_argument("--num-inputs", type=at_least(0), default=None, help="plan for N inputs instead of listing them")
    s.add_argument("--executor", choices=["auto", "slurm", "local"], default="slurm",
                   help="plan for this executor, as `submit --executor` would run it (default slurm: the "
                        "controller's figures, or Slurm's defaults assumed where none answers here)")

    s = sub.add_parser("submit", help="submit the whole DAG (a [sweep]: a campaign of runs); returns at once with "
                       "the run id and job ids")
    s.add_argument("spec")
    s.add_argument("overrides", nargs="*", help=over)
    s.add_argument("--executor", choices=["auto", "slurm", "local"], default="auto")
    s.add_argument("--wait", action="store_true", help="wait for the run to finish (exit 1 if a task failed)")
    s.add_argument("--timeout", type=at_least(1), default=3600, help="seconds --wait waits")
    s.add_argument("--no-doctor", action="store_true", help="skip the preflight checks (see harness doctor)")

    s = sub.add_parser("doctor", help="preflight on the login node: every check a line; exit 2 on any failure")
    s.add_argument("spec")
    s.add_argument("overrides", nargs="*", help=over)

    _add_ops(sub)
    _add_export(sub)

    _add_tools(sub)
    return p


def _overrides(args: list[str]) -> list[str]:
    from harness.core.overrides import split_args

    return split_args(args, files=False)[1]


def dispatch(a: argparse.Namespace) -> int:
    """Parsed arguments -> the command's typed call; the one place argparse names meet the commands."""
    from harness import ops

    calls = {
        "validate": lambda: cmd_validate(a.specs),
        "plan": lambda: cmd_plan(a.spec, _overrides(a.overrides), a.out, a.num_inputs, a.executor),
        "submit": lambda: cmd_submit(a.spec, _overrides(a.overrides), a.executor, wait=a.wait, timeout_s=a.timeout,
                                     doctor=not a.no_doctor),
        "doctor": lambda: ops.cmd_doctor(a.spec, _overrides(a.overrides)),
        "status": lambda: ops.cmd_status(a.run, a.workdir, watch=a.watch, show_all=a.all),
        "logs": lambda: ops.cmd_logs(a.run, a.stage, a.task, a.workdir, follow=a.follow, stderr=a.stderr),
        "resume": lambda: ops.cmd_resume(a.run, a.workdir),
        "cancel": lambda: ops.cmd_cancel(a.run, a.stage, a.workdir),
        "report": lambda: ops.cmd_report(a.run, a.workdir),
        "compare": lambda: ops.cmd_compare(a.runs, a.workdir),
        "cache": lambda: ops.cmd_cache(a.cache_command, getattr(a, "key", ""), a.spec, a.cache_dir),
        "runs": lambda: ops.cmd_runs(a.workdir),
        "inspect-checkpoint": lambda: ops.cmd_inspect_checkpoint(a.directory, a.preset, a.tp, a.layers),
        "export": lambda: ops.cmd_export(a.source, a.step, a.to, a.format, a.dtype, a.preset, a.workdir,
                                         a.context),
        "sync": lambda: ops.cmd_sync(a.run, a.workdir),
        "synth": lambda: ops.cmd_synth(a.out),
        "quickstart": lambda: cmd_quickstart(a.spec, a.assets, a.executor, a.timeout),
        "evaluate": lambda: ops.cmd_evaluate(a.reference, a.generated, a.backend, a.out, a.protocol),
        "bench": lambda: cmd_bench(a.name, a.args),
    }
    return int(calls[a.command]())


def main(argv: Sequence[str] | None = None) -> int:
    return _call(parse(argv))


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Overrides may follow options too (`submit run.toml --executor local finetune.lr=1e-3`): argparse ends the
    positionals at the first option, so the `section.key=value` words after it join the overrides."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if not extra:
        return args
    from harness.core.overrides import OVERRIDE  # only then: `harness evaluate` starts without the spec modules

    if not hasattr(args, "overrides") or not all(OVERRIDE.match(x) or "=" in x and x[0] != "-" for x in extra):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = [*args.overrides, *extra]
    return args


def _call(args: argparse.Namespace) -> int:
    for stream in (sys.stdout, sys.stderr):  # a file name in another encoding prints as its byte, not a traceback
        getattr(stream, "reconfigure", lambda **_: None)(errors="surrogateescape")
    try:
        return dispatch(args)
    except HarnessError as e:
        for problem in e.problems:
            err.print(str(problem), markup=False, soft_wrap=True)
        return 2
    except OSError as e:  # the file system refused (read-only, a file where a folder goes, full): one line
        where = e.filename if e.filename is not None else "harness"
        err.print(f"{where}: {e.strerror or e}", markup=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        return 130


EXIT_AT_ONCE = frozenset({"evaluate"})
"""Commands whose process ends the moment they return (all they write is written and joined by then): the
interpreter's teardown of numba's and llvmlite's modules cost `harness evaluate` of one pair ~0.25 CPU-s."""


def run() -> None:
    """The `harness` executable (`main` is for callers in a process that goes on)."""
    args = parse()
    rc = _call(args)
    if args.command in EXIT_AT_ONCE:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)


if __name__ == "__main__":
    run()
