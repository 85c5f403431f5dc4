"""Shared pieces of the reliability tests (secrets, concurrency, faults): a tiny real run spec, the harness
CLI as a subprocess, and waiting on the local cluster through the harness's own Slurm boundary."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import specs
from harness.launch import slurmcli
from harness.lib import synth

FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
         "BOOT_FAIL", "DEADLINE"}


def tiny_assets(tmp: Path, clips: int = 6) -> dict[str, Path]:
    """Real mp4 clips and the tiny DV tokenizer in a local HF cache (stage-assets resolves the repo id
    offline, through the real snapshot_download)."""
    videos = tmp / "videos"
    if not videos.exists():
        synth.make_clips(videos, clips)
    hf = tmp / "hf"
    if not hf.exists():
        tok = synth.write_tokenizer(tmp / "tok-src")
        synth.write_hf_snapshot(hf, synth.TOKENIZER_REPO,
                                {n: tok / n for n in ("encoder.jit", "decoder.jit", "config.json")})
    return {"videos": videos, "hf": hf}


def tiny_spec(tmp: Path, *, name: str = "rel", shards: int = 2, extra: specs.Layer = None,
              videos: Path | None = None, clips: int = 6, max_steps: int = 2, save_every: int = 1) -> Path:
    """tmp/NAME.toml: a whole tiny run as Slurm jobs of minutes; `extra` (sections or TOML text) overrides."""
    a = tiny_assets(tmp, clips)
    return specs.write(tmp / f"{name}.toml", specs.tiny_run(tmp, name=name, videos=videos or a["videos"], hf=a["hf"]),
                       specs.QUICK_JOBS,
                       {"data": {"split": [4, 1, 1]}, "tokenize": {"shards": shards, "batch_size": 2},
                        "finetune": {"max_steps": max_steps, "save_every": save_every, "global_batch_size": 1},
                        "infer": {"max_inputs": 1}},
                       extra)


def harness(*args: str, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`harness ARGS` in a subprocess, offline (HF_HUB_OFFLINE=1: no hub on this machine)."""
    full = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=full, timeout=timeout)


def job_ids_from(stdout: str) -> dict[str, str]:
    """stage -> job id from `harness submit` output lines `  <stage> job <id>`."""
    return {ln.split()[0]: ln.split()[-1] for ln in stdout.splitlines() if " job " in ln and ln.startswith("  ")}


def run_dir_from(stdout: str, workdir: Path) -> Path:
    """The run directory named by `run <id> -> <dir>` (rich may wrap the long path, so rebuild it)."""
    run_id = next(ln.split()[1] for ln in stdout.splitlines() if ln.startswith("run "))
    root = workdir / run_id
    assert root.is_dir(), (root, stdout)
    return root


def sacct_history(job: str) -> list[str]:
    """Every attempt's state of one job or array task (-D: requeued attempts too), as JobID|State|NodeList."""
    out = subprocess.run(["sacct", "-n", "-X", "-D", "-P", "-j", job, "-o", "JobID,State,NodeList"],
                         capture_output=True, text=True, timeout=30).stdout
    return [ln for ln in out.splitlines() if ln.strip()]


def states_by_stage(ids: dict[str, str]) -> dict[str, dict[str, str]]:
    acct = slurmcli.sacct(list(ids.values()))
    return {st: {k: v.state for k, v in acct.items() if k.split("_")[0] == jid} for st, jid in ids.items()}


def wait_stages(ids: dict[str, str], stages: list[str], timeout: float = 180.0,
                poll: float = 0.5, tasks: dict[str, int] | None = None) -> dict[str, dict[str, str]]:
    """Wait until every task of the given stages is final in sacct (and none is queued); returns all states.
    `tasks`: array sizes of stages whose every task must have its own record first (a task killed and failing
    can be missing from sacct for a moment after squeue has let go of it)."""
    want = [ids[s] for s in stages]
    deadline = time.time() + timeout
    while time.time() < deadline:
        queued = slurmcli.squeue(want)
        by = states_by_stage(ids)
        counted = all(len(by[s]) >= n for s, n in (tasks or {}).items())
        if not queued and counted and all(by[s] and all(v in FINAL for v in by[s].values()) for s in stages):
            return by
        time.sleep(poll)
    raise AssertionError(f"stages {stages} not final after {timeout}s: {states_by_stage(ids)}")


def wait_for(pred, timeout: float, poll: float = 0.2, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def submit_partial(spec_path: Path, stages: tuple[str, ...], cwd: Path) -> tuple["object", dict[str, str]]:
    """Submit only `stages` of a spec's run to Slurm through the launcher's own functions (the later stages
    would only cost time here); returns (RunPaths, stage -> job id)."""
    from harness.core import spec as spec_mod
    from harness.ops import plan as plan_ops
    from harness.ops import submit as launching
    from harness.ops.inputs import discover
    from harness.stages.inputs import write_inputs

    spec = spec_mod.absolutize(spec_mod.load(spec_path), cwd)
    choice = launching.Choice("slurm", "reliability test")
    items = discover(spec)
    facts = plan_ops.cluster_facts(spec, choice, len(items))[0]
    plan = launching.plan_mod.build(spec, facts)
    paths = launching.new_run_dir(Path(spec.run.workdir), spec.run.name)
    with launching.run_lock(paths):
        launching.write_run(paths, spec_path.read_text(), plan, facts, choice)
        write_inputs(paths, items)
        todo = {s.name: list(range(s.tasks)) for s in plan.stages if s.name in stages}
        subs = launching.submit_stages(plan, paths, todo, facts, choice)
    return paths, {s.stage: s.job_id for s in subs}


def task_process(job_id: str, index: int | None = None):  # type: ignore[no-untyped-def]
    """The python process of a running task (the srun step, not the batch shell or srun itself), found by
    the Slurm environment every task carries."""
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if not cmd or not os.path.basename(cmd[0]).startswith("python") or "submitit.core._submit" not in cmd:
            continue
        try:
            env = p.environ()
        except (psutil.Error, OSError):
            continue
        if index is None:
            if env.get("SLURM_JOB_ID") == job_id:
                return p
        elif env.get("SLURM_ARRAY_JOB_ID") == job_id and env.get("SLURM_ARRAY_TASK_ID") == str(index):
            return p
    return None
