"""sbatch's long options as data (from `sbatch --help` of Slurm 22.05), for `<stage>.sbatch_extra`: an option
the spec has no key for (`--mail-type`, `--exclusive`, `--reservation`, ...) passes through to every script of the
stage; a misspelt one is caught here, at validate time, rather than by sbatch at submit; and one that would fight
what the harness itself sets (the job name, log files, array, dependency, resources the stage table owns) is
refused with the key to use instead.
"""

from __future__ import annotations

import difflib
from typing import Literal

Arg = Literal["value", "flag", "optional"]

OPTIONS: dict[str, Arg] = {
    "account": "value", "array": "value", "bb": "value", "bbf": "value", "begin": "value", "chdir": "value",
    "cluster-constraint": "value", "clusters": "value", "comment": "value", "constraint": "value",
    "container": "value", "contiguous": "flag", "core-spec": "value", "cores-per-socket": "value",
    "cpu-freq": "value", "cpus-per-gpu": "value", "cpus-per-task": "value", "deadline": "value",
    "delay-boot": "value", "dependency": "value", "distribution": "value", "error": "value",
    "exclude": "value", "exclusive": "optional", "export": "optional", "export-file": "value",
    "extra-node-info": "value", "get-user-env": "optional", "gid": "value", "gpu-bind": "value",
    "gpu-freq": "value", "gpus": "value", "gpus-per-node": "value", "gpus-per-socket": "value",
    "gpus-per-task": "value", "gres": "value", "gres-flags": "value", "help": "flag", "hold": "flag",
    "ignore-pbs": "flag", "input": "value", "job-name": "value", "kill-on-invalid-dep": "value",
    "licenses": "value", "mail-type": "value", "mail-user": "value", "mcs-label": "value", "mem": "value",
    "mem-per-cpu": "value", "mem-per-gpu": "value", "mincpus": "value", "nice": "optional", "no-kill": "optional",
    "no-requeue": "flag", "nodefile": "value", "nodelist": "value", "nodes": "value", "ntasks": "value",
    "ntasks-per-core": "value", "ntasks-per-node": "value", "ntasks-per-socket": "value", "open-mode": "value",
    "output": "value", "overcommit": "flag", "oversubscribe": "flag", "parsable": "flag", "partition": "value",
    "power": "value", "priority": "value", "profile": "value", "propagate": "optional", "qos": "value",
    "quiet": "flag", "reboot": "flag", "requeue": "flag", "reservation": "value", "signal": "value",
    "sockets-per-node": "value", "spread-job": "flag", "switches": "value", "thread-spec": "value",
    "threads-per-core": "value", "time": "value", "time-min": "value", "tmp": "value", "uid": "value",
    "usage": "flag", "use-min-nodes": "flag", "verbose": "flag", "version": "flag", "wait": "flag",
    "wckey": "value", "wrap": "value",
    "hint": "value", "mem-bind": "value", "network": "value", "ntasks-per-gpu": "value", "acctg-freq": "value",
    "prefer": "value", "batch": "value", "kill-command": "optional", "tres-per-task": "value",
}
"""Every long option of `sbatch --help` (22.05), plus those `man sbatch` documents and the help omits (`open-mode`,
`kill-on-invalid-dep`, `hint`, `mem-bind`, `network`, `ntasks-per-gpu`, `acctg-freq`, `prefer`, `batch`,
`kill-command`, `tres-per-task`): whether it takes a value (`--mail-type=END`), none (`--hold`) or an optional
one (`--exclusive[=user]`)."""

_STAGE_KEYS = {"partition": "partition", "account": "account", "qos": "qos", "time": "time_min",
               "nodes": "nodes", "gpus-per-node": "gpus_per_node", "gpus": "gpus_per_node",
               "gpus-per-task": "gpus_per_node", "cpus-per-task": "cpus_per_task", "cpus-per-gpu": "cpus_per_task",
               "mem": "mem_gb", "mem-per-cpu": "mem_gb", "mem-per-gpu": "mem_gb", "constraint": "constraint"}
"""Options the stage table owns: the key to set instead."""

HARNESS_SET: dict[str, str] = {
    **{k: f"set it with <stage>.{v}" for k, v in _STAGE_KEYS.items()},
    **dict.fromkeys(("job-name", "comment"), "the harness names each job and marks it with the run id"),
    **dict.fromkeys(("output", "error", "open-mode", "input"), "the harness places each task's log files"),
    **dict.fromkeys(("array", "dependency", "kill-on-invalid-dep", "hold"),
                    "the harness sets the array and chains the stages"),
    **dict.fromkeys(("ntasks", "ntasks-per-node", "ntasks-per-gpu"),
                    "the harness sets the tasks per node from the stage's ranks"),
    **dict.fromkeys(("gpus-per-socket", "tres-per-task"), "set GPUs and CPUs with <stage>.gpus_per_node and "
                                                           "<stage>.cpus_per_task (the harness renders those)"),
    **dict.fromkeys(("signal", "requeue", "no-requeue"), "the harness sets the checkpoint signal and requeue"),
    **dict.fromkeys(("export", "export-file", "get-user-env"),
                    "the harness sets the environment (it keeps secrets out of the job record)"),
    "wckey": "submitit's wckey marks the harness's jobs",
    **dict.fromkeys(("clusters", "cluster-constraint"),
                    "status, cancel and resume ask this cluster's controller (squeue/sacct/scancel without -M)"),
    **dict.fromkeys(("wrap", "parsable", "wait", "quiet", "verbose", "help", "usage", "version", "uid", "gid"),
                    "a command-line switch of sbatch itself, not a job option"),
}
"""Options refused in sbatch_extra, with why: those the harness renders itself or that change how sbatch runs."""


def check(option: str) -> str:
    """'' when `option` (one sbatch_extra entry) is accepted, else what is wrong and what is allowed."""
    if not option.startswith("--"):
        return f"{option!r}: must be a long option, '--name' or '--name=value'"
    name, eq, value = option[2:].partition("=")
    if name not in OPTIONS:
        close = difflib.get_close_matches(name, list(OPTIONS), n=1, cutoff=0.6)
        hint = f"did you mean '--{close[0]}'?" if close else "see `sbatch --help` for its long options"
        return f"{option!r}: not an sbatch option; {hint}"
    if name in HARNESS_SET:
        return f"{option!r}: clashes with what the harness sets ({HARNESS_SET[name]})"
    arg = OPTIONS[name]
    if arg == "value" and not (eq and value):
        return f"{option!r}: needs a value, '--{name}=...'"
    if arg == "flag" and eq:
        return f"{option!r}: takes no value, '--{name}'"
    return ""


def parsed(option: str) -> tuple[str, str | bool]:
    """An accepted entry as (name, value), True for an option without one: the render's #SBATCH parameter."""
    name, eq, value = option[2:].partition("=")
    return name, value if eq else True
