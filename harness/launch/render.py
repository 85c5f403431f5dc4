"""Stage plan -> submitit executor parameters and the sbatch script. Pure: no Slurm calls, no file writes.

The harness writes the sbatch script itself (`sbatch_text`) and hands it to submitit through the executor's
submission-file hook (`harness.launch.slurm.Executor`), so `harness plan --out` and `harness submit` render
through this one function and the golden files check the very text sbatch receives. submitit keeps what it
does well: it pickles the task, names each array task's pickle after its real job id, runs `sbatch`, and on
the job side turns USR2 into checkpoint + requeue. The script keeps submitit's layout and file names (its
job side reads `%j_submitted.pkl` and writes `%j_%t_log.out`), so requeue and log paths are unchanged; no
private submitit name is imported. Secrets are never rendered: HF_TOKEN reaches stage-assets through the
job's inherited environment and is unset for every other stage.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from submitit.core.utils import JobPaths
from submitit.slurm.slurm import SlurmJobEnvironment

from harness.core import sbatch_options
from harness.core.paths import RunPaths
from harness.core.plan import Plan, StagePlan, infer_shards
from harness.core.secretenv import SECRETS, stage_secrets
from harness.core.spec import RunSpec
from harness.core.stages import stage as stage_def
from harness.core.trainplan import eval_steps


def dependency(stage: StagePlan, parent_ids: dict[str, list[str]], chunk: int | None = None) -> str:
    """`afterok:1:2` style, one entry per parent array (several when a big array was split). aftercorr pairs
    array task i with the parent's task i, so chunk k of a split array waits on the parent's chunk k alone
    (both are split at the same indices: the same task list, the same MaxArraySize)."""
    parts = []
    for dep in stage.depends:
        ids = parent_ids.get(dep.stage, [])
        if dep.kind == "aftercorr" and chunk is not None and len(ids) > 1:
            ids = ids[chunk:chunk + 1]
        if ids:
            parts.append(dep.kind + ":" + ":".join(ids))
    return ",".join(parts)


def container_args(plan: Plan, paths: RunPaths, harness_src: Path, deps_src: list[Path]) -> list[str]:
    """Pyxis flags: the image (the imported .sqsh where the plan imports one), the harness source and its
    pure-python deps, the run dir and the HF cache."""
    spec = plan.spec
    c = spec.container
    hf_home = str(Path(spec.assets.hf_home).expanduser())
    mounts = [f"{harness_src}:{c.harness_mount}:ro", f"{paths.root}:{paths.root}", f"{hf_home}:{hf_home}"]
    for other in dict.fromkeys(p for p in (paths.shared, paths.cache) if p is not None and p != paths.root):
        mounts.append(f"{other}:{other}")  # another member's run (its assets, dataset), the token-cache entry
    mounts += [f"{d}:{c.harness_mount}-deps/{d.name}:ro" for d in deps_src]
    mounts += list(c.mounts)
    workdir = c.workdir or c.harness_mount
    return [f"--container-image={plan.container_image}", "--container-mounts=" + ",".join(mounts),
            f"--container-workdir={workdir}", "--no-container-mount-home"]


def fanout_line(spec: RunSpec, stage: StagePlan) -> list[str]:
    """infer/evaluate: the array's shape as a comment, so a script says which task is which pair."""
    if stage_def(stage.name).shape != "checkpoints":
        return []
    c, k = len(eval_steps(spec)), infer_shards(spec.infer)
    return [f"# {stage.name} array: {c} checkpoint(s) x {k} input shard(s) of up to "
            f"{spec.infer.inputs_per_task or spec.infer.max_inputs} input(s); task = checkpoint * {k} + shard"]


def setup_lines(spec: RunSpec, stage: StagePlan) -> list[str]:
    hf_home = str(Path(spec.assets.hf_home).expanduser())
    lines = fanout_line(spec, stage) + [f"export HF_HOME={shlex.quote(hf_home)}"]
    if not stage_def(stage.name).downloads:
        lines += ["export HF_HUB_OFFLINE=1", "unset " + " ".join(SECRETS)]
    if stage.container:
        mount = spec.container.harness_mount
        lines.append(f"export PYTHONPATH={shlex.quote(mount)}:{shlex.quote(mount + '-deps')}"
                     "${PYTHONPATH:+:$PYTHONPATH}")
        lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(spec.container.env.items())]
    if stage.resources.nodes * stage.resources.ntasks_per_node > 1:
        lines += ['_first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
                  "export MASTER_ADDR=$(scontrol show node \"$_first\" | sed -n 's/.*NodeAddr=\\([^ ]*\\).*/\\1/p')",
                  "export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))"]
    return lines


def export_env(stage: StagePlan) -> str:
    """sbatch --export: the submitting environment minus the secrets a stage does not need. sbatch stores a
    job's environment in the controller's state (and slurmdbd with AccountingStoreFlags=job_env) for the
    job's lifetime; `unset` in the script alone would leave the token there for every stage. Only
    stage-assets receives HF_TOKEN; no stage receives WANDB_API_KEY through Slurm."""
    keep = stage_secrets(stage_def(stage.name).downloads)
    return ",".join(["ALL"] + [f"{k}=" for k in SECRETS if k not in keep])


def executor_params(plan: Plan, stage: StagePlan, paths: RunPaths, dep: str, srun_args: list[str]) -> dict[str, Any]:
    r, spec = stage.resources, plan.spec
    params: dict[str, Any] = {
        "job_name": f"{spec.run.name}.{stage.name}",
        "time": r.time_min,
        "nodes": r.nodes,
        "ntasks_per_node": r.ntasks_per_node,
        "cpus_per_task": r.cpus_per_task,
        "signal_delay_s": r.signal_delay_s,
        "setup": setup_lines(spec, stage),
        "comment": paths.run_id,
        "additional_parameters": {"kill-on-invalid-dep": "yes", "export": export_env(stage)},
        "srun_args": srun_args,
    }
    optional = {"partition": r.partition, "account": r.account, "qos": r.qos, "constraint": r.constraint,
                "gpus_per_node": r.gpus_per_node, "mem": f"{r.mem_gb}GB" if r.mem_gb else "",
                "dependency": dep}
    params.update({k: v for k, v in optional.items() if v})
    if stage.array:  # submitit throttles to 256 unless told; 0 = no limit = as many as the array has
        params["array_parallelism"] = chunk_throttle(r.array_throttle, len(stage.chunks)) or stage.tasks
    if stage.requeue:
        params["additional_parameters"] = {**params["additional_parameters"], "requeue": True}
    if r.sbatch_extra:  # validated against sbatch's options and the ones set above (harness.core.sbatch_options)
        params["additional_parameters"] = {**params["additional_parameters"],
                                           **dict(sbatch_options.parsed(o) for o in r.sbatch_extra)}
    return params


def chunk_throttle(throttle: int, chunks: int) -> int:
    """`%k` of each sbatch call of a stage: an array split at MaxArraySize is several jobs, each throttled on its
    own by Slurm, so the stage's limit is shared out between them (planning refuses fewer than one each; 0 stays
    no limit)."""
    return max(1, throttle // chunks) if throttle else 0


SBATCH_DEFAULTS = {"wckey": "submitit", "array_parallelism": 256, "signal_delay_s": 90}
"""submitit's defaults for what `executor_params` leaves unset (its wckey marks the job as submitit's)."""


def _flag(key: str, value: Any) -> str:
    key = key.replace("_", "-")
    return f"#SBATCH --{key}" if value is True else f"#SBATCH --{key}={shlex.quote(str(value))}"


def sbatch_text(params: dict[str, Any], folder: Path, command: str) -> str:
    """The whole script for executor parameters `params` (`map_count`: the array size, absent for one task):
    sorted #SBATCH lines, the setup lines, then `command` under srun with per-rank log files."""
    p = {**SBATCH_DEFAULTS, **params}
    setup, srun_extra, extra = p.pop("setup", []), p.pop("srun_args", []), p.pop("additional_parameters", {})
    count, throttle = p.pop("map_count", None), p.pop("array_parallelism")
    flags = {k: v for k, v in p.items() if v is not None and k != "signal_delay_s"}
    flags["signal"] = f"{SlurmJobEnvironment.USR_SIG}@{p['signal_delay_s']}"
    files = JobPaths(folder=folder)
    out, err = str(files.stdout), str(files.stderr)
    if count:  # array task i of job A logs as A_i
        flags["array"] = f"0-{count - 1}%{min(count, throttle)}"
        out, err = out.replace("%j", "%A_%a"), err.replace("%j", "%A_%a")
    flags.update({"output": out.replace("%t", "0"), "error": err.replace("%t", "0"), "open-mode": "append"})
    flags.update(extra)
    srun = " ".join(shlex.quote(a) for a in ["srun", "--unbuffered", "--output", out, "--error", err, *srun_extra])
    lines = ["#!/bin/bash", "", "# Parameters", *(_flag(k, flags[k]) for k in sorted(flags))]
    lines += ["", "# setup", *setup] if setup else []
    return "\n".join(lines + ["", "# command", "export SUBMITIT_EXECUTOR=slurm", f"{srun} {command}", ""])
