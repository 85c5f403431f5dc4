"""The one subprocess boundary to Slurm's client tools.

Every call goes through `_run`, which counts calls per command so tests can check that a status of a
1,000-task run costs at most two queries. Queries are batched: one squeue and one sacct per call.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from harness.core.errors import HarnessError
from harness.launch.backend import TaskState

CALLS: collections.Counter[str] = collections.Counter()
"""Slurm client invocations by command name, for tests and benchmarks."""


class SlurmUnreachable(HarnessError):
    """A Slurm client tool failed or is missing: the controller (or slurmdbd) does not answer here. A reader of a
    run's state may then fall back to what the run directory holds."""


def _run(cmd: list[str], timeout: float = 60.0, check: bool = True, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    CALLS[cmd[0]] += 1
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SlurmUnreachable(f"{cmd[0]}: {e}") from None
    if check and proc.returncode != 0:
        raise SlurmUnreachable(f"{' '.join(cmd[:2])} failed ({proc.returncode}): {proc.stderr.strip()[:400]}")
    return proc


def have_sbatch() -> bool:
    return shutil.which("sbatch") is not None


def controller_error() -> str:
    """'' when a Slurm controller answers; otherwise why not (client tools can exist with no cluster)."""
    if not have_sbatch():
        return "sbatch not found on PATH"
    try:
        proc = _run(["scontrol", "ping"], timeout=15, check=False)
    except HarnessError as e:
        return str(e)
    if proc.returncode != 0 or "UP" not in proc.stdout:
        return f"no Slurm controller answers (scontrol ping: {gist(proc.stdout + proc.stderr)})"
    return ""


def gist(text: str, limit: int = 120) -> str:
    """One line from a Slurm client's complaint: its fatal message if it has one (scontrol without a cluster
    prints four `error:` lines of DNS lookups before `fatal: Could not establish a configuration source`), else
    its last line; without the `scontrol: error:` prefixes; cut at a word, never mid-word."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    fatal = [ln for ln in lines if "fatal:" in ln]
    line = (fatal or lines or ["no output"])[-1]
    line = re.sub(r"^(\S+: )?(fatal|error): ", "", line.split("fatal: ", 1)[-1] if fatal else line)
    if len(line) <= limit:
        return line
    return line[:limit].rsplit(" ", 1)[0] + " ..."


def test_only(script: Path, env: dict[str, str] | None = None) -> str:
    """'' when the controller would accept `script` now (`sbatch --test-only`: nothing is queued), else its
    complaint in one line."""
    proc = _run(["sbatch", "--test-only", str(script)], check=False, env=env)
    return "" if proc.returncode == 0 else gist(proc.stderr + proc.stdout)


def config() -> dict[str, str]:
    out = _run(["scontrol", "show", "config"]).stdout
    cfg = {}
    for line in out.splitlines():
        if "=" in line:
            k, _, v = line.partition("=")
            cfg[k.strip()] = v.strip()
    return cfg


DEFAULT_MAX_ARRAY_SIZE = 1001
"""Slurm's default MaxArraySize (slurm.conf(5)), assumed when no controller answers."""


def max_array_size(cfg: dict[str, str]) -> int:
    """Largest array size Slurm accepts: indices run 0..MaxArraySize-1."""
    try:
        return int(cfg.get("MaxArraySize", str(DEFAULT_MAX_ARRAY_SIZE)))
    except ValueError:
        return DEFAULT_MAX_ARRAY_SIZE


def nodes_available(partition: str = "") -> int:
    cmd = ["sinfo", "-h", "-N", "-o", "%N %t"] + (["-p", partition] if partition else [])
    lines = _run(cmd).stdout.split()
    names = {lines[i] for i in range(0, len(lines) - 1, 2) if not lines[i + 1].startswith(("down", "drain"))}
    return max(1, len(names))


def squeue(job_ids: list[str]) -> dict[str, TaskState]:
    """Live tasks (pending ones with their reason) in one call."""
    if not job_ids:
        return {}
    proc = _run(["squeue", "-h", "-r", "-j", ",".join(job_ids), "-o", "%i|%T|%N|%M|%r|%k"], check=False)
    if proc.returncode != 0 and "Invalid job id" not in proc.stderr:  # that one: every job already left
        raise SlurmUnreachable(f"squeue failed ({proc.returncode}): {' '.join(proc.stderr.split())[:300]}")
    out = proc.stdout
    states = {}
    for line in out.splitlines():
        parts = line.split("|", 5)
        if len(parts) == 6:
            states[parts[0]] = TaskState("", -1, parts[1], parts[0], parts[2], parts[3], "", parts[4],
                                         comment=parts[5])
    return states


SACCT_FIELDS = "JobID,State,NodeList,Elapsed,ExitCode,DerivedExitCode,Timelimit,Submit,ElapsedRaw,AllocTRES,Reason"


def sacct(job_ids: list[str]) -> dict[str, TaskState]:
    """Finished (and running) tasks from accounting, in one call; array tasks expanded. `--duplicates`: every
    record of each id, a requeued task's earlier attempts too (they used GPUs: `TaskState.attempts`). Steps are
    read too, for the signal that ended a task: a SIGKILLed program shows as `0:9` only on its step (`71_1.0`);
    the allocation reads `9:0` (srun's exit status) and, for array tasks on Slurm 22.05, a DerivedExitCode of
    `0:0`."""
    if not job_ids:
        return {}
    out = _run(["sacct", "-n", "-P", "-D", "-j", ",".join(job_ids), "-o", SACCT_FIELDS]
               ).stdout  # a failing sacct (slurmdbd down) must not read as "no tasks"
    return parse_sacct(out)


def parse_sacct(out: str) -> dict[str, TaskState]:
    """`sacct -n -P -D -o SACCT_FIELDS` text -> id -> the latest record (the latest Submit; a later line on a tie),
    with every record's (Submit, GPU-seconds) in `attempts` and the signal of the latest record's steps (a step's
    lines follow its allocation's)."""
    latest: dict[str, TaskState] = {}
    attempts: dict[str, list[tuple[float, float]]] = {}
    signals: dict[tuple[str, float], int] = {}
    current: dict[str, float] = {}
    for line in out.splitlines():
        parts = line.split("|", 10)
        if len(parts) != 11:
            continue
        job, _, step = parts[0].partition(".")
        sig = exit_signal(parts[5]) or exit_signal(parts[4])
        if step:
            key = (job, current.get(job, 0.0))
            signals[key] = signals.get(key) or sig
            continue
        st = _record(job, parts, sig)
        current[job] = st.submitted
        attempts.setdefault(job, []).append((st.submitted, st.gpu_seconds))
        if job not in latest or st.submitted >= latest[job].submitted:
            latest[job] = st
    return {job: dataclasses.replace(st, signal=st.signal or signals.get((job, st.submitted), 0),
                                     attempts=tuple(sorted(attempts[job], key=lambda a: a[0])))
            for job, st in latest.items()}


def _record(job: str, parts: list[str], sig: int) -> TaskState:
    """One allocation line of `parse_sacct`."""
    words = parts[1].split() or ["UNKNOWN"]
    by = words[2] if len(words) > 2 and words[1] == "by" else ""
    return TaskState("", -1, words[0], job, parts[2], parts[3], parts[4], parts[10], cancelled_by=by,
                     signal=sig, time_limit=parts[6], submitted=epoch(parts[7]),
                     gpu_seconds=float(parts[8]) * tres_gpus(parts[9]) if parts[8].isdigit() else 0.0)


def tres_gpus(tres: str) -> int:
    """GPUs in sacct's AllocTRES ('billing=8,cpu=8,gres/gpu:h100=2,gres/gpu=2,mem=64G,node=1' -> 2): the
    untyped total where Slurm lists it, else the typed counts summed; 0 for an allocation without GPUs."""
    pairs = [w.partition("=") for w in tres.split(",")]
    gpus = [(k, v) for k, _, v in pairs if (k == "gres/gpu" or k.startswith("gres/gpu:")) and v.isdigit()]
    total = [int(v) for k, v in gpus if k == "gres/gpu"]
    return total[0] if total else sum(int(v) for _, v in gpus)


def epoch(stamp: str) -> float:
    """sacct's `2026-12-06T06:44:33` (the controller's local time, as this host's) in epoch seconds; 0 if none."""
    try:
        return time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return 0.0


def exit_signal(code: str) -> int:
    """The signal of Slurm's `exit:signal` pair when the signal alone ended it (`0:9`); 0 otherwise, also for
    `1:9`, a step whose program failed first and whose other ranks srun then killed: its error line says why."""
    status, _, sig = code.partition(":")
    return int(sig) if status == "0" and sig.isdigit() else 0


def scancel(job_ids: list[str]) -> None:
    if job_ids:
        _run(["scancel", *job_ids], check=False)


# ------------------------------------------------------------------------- a task retrying itself (launch.retry)
def history(task_id: str) -> list[tuple[str, str]]:
    """(state, node list) of every attempt of one job or array task, oldest first: `-D` keeps the attempts a
    requeue replaced (a NODE_FAIL attempt among them)."""
    out = _run(["sacct", "-n", "-X", "-D", "-P", "-j", task_id, "-o", "State,NodeList"]).stdout
    rows = [ln.split("|") for ln in out.splitlines() if "|" in ln]
    return [((r[0].split() or ["UNKNOWN"])[0], r[1]) for r in rows]


def excluded_nodes(task_id: str) -> list[str]:
    """The job's ExcNodeList as node names (`scontrol show job`; `(null)`: none)."""
    recs = _records(_run(["scontrol", "-o", "show", "job", task_id]).stdout)
    text = recs[0].get("ExcNodeList", "(null)") if recs else "(null)"
    if text in ("(null)", ""):
        return []
    return _run(["scontrol", "show", "hostnames", text]).stdout.split()


def requeue(task_id: str) -> bool:
    """`scontrol requeue` of a running task; False when Slurm refused (another rank requeued it first)."""
    return _run(["scontrol", "requeue", task_id], check=False).returncode == 0


def exclude_nodes(task_id: str, nodes: list[str]) -> None:
    """Keep a requeued task off `nodes` (`ExcNodeList`; only a pending job takes it, so this follows `requeue`).
    Its begin-time hold (~2 min, Slurm's credential lifetime) is left: Slurm sets it once the task's processes
    have ended, after the task that asked could drop it."""
    if nodes:
        _run(["scontrol", "update", f"JobId={task_id}", "ExcNodeList=" + ",".join(sorted(set(nodes)))])


# ------------------------------------------------------------------------- cluster inventory (harness doctor)
@dataclass(frozen=True)
class Partition:
    name: str
    max_time_min: int | None
    """MaxTime in minutes; None = UNLIMITED."""
    state: str
    default: bool
    allow_accounts: str = "ALL"
    allow_qos: str = "ALL"


@dataclass(frozen=True)
class Node:
    name: str
    cpus: int
    mem_mb: int
    gpus: int
    """GPUs from the node's Gres (gpu[:type]:N entries summed); 0 when it has none."""
    partitions: tuple[str, ...]
    state: str


def _records(text: str) -> list[dict[str, str]]:
    """`scontrol -o show ...`: one record a line of Key=Value words (values hold no spaces, except
    a few free-text fields we do not read)."""
    out = []
    for line in text.splitlines():
        rec = {}
        for word in line.split():
            k, eq, v = word.partition("=")
            if eq:
                rec[k] = v
        if rec:
            out.append(rec)
    return out


def parse_time_min(text: str) -> int | None:
    """Slurm's [days-]hours:minutes:seconds (or minutes, minutes:seconds) -> whole minutes; UNLIMITED -> None."""
    if text.upper() in ("UNLIMITED", "INFINITE", "NONE", ""):
        return None
    days, _, rest = text.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if days:
        h, m, s = (parts + [0, 0])[:3]
    elif len(parts) == 3:
        h, m, s = parts
    else:
        h, (m, s) = 0, (parts + [0])[:2]
    return (int(days or 0) * 24 + h) * 60 + m + (1 if s else 0)


def gres_gpus(gres: str) -> int:
    """'gpu:8', 'gpu:h100:4(S:0-1),gpu:a100:2', '(null)' -> 8, 6, 0."""
    total = 0
    for entry in gres.split(","):
        fields = entry.split("(")[0].split(":")
        if fields[0] == "gpu" and len(fields) >= 2 and fields[-1].isdigit():
            total += int(fields[-1])
    return total


def partitions() -> dict[str, Partition]:
    out = {}
    for r in _records(_run(["scontrol", "-o", "show", "partition"]).stdout):
        name = r.get("PartitionName", "")
        out[name] = Partition(name, parse_time_min(r.get("MaxTime", "UNLIMITED")), r.get("State", "?"),
                              r.get("Default") == "YES", r.get("AllowAccounts", "ALL"), r.get("AllowQos", "ALL"))
    return out


def nodes() -> list[Node]:
    out = []
    for r in _records(_run(["scontrol", "-o", "show", "node"]).stdout):
        out.append(Node(r.get("NodeName", "?"), int(r.get("CPUTot", "0") or 0), int(r.get("RealMemory", "0") or 0),
                        gres_gpus(r.get("Gres", "(null)")), tuple(p for p in r.get("Partitions", "").split(",") if p),
                        r.get("State", "?")))
    return out


def sacctmgr_names(entity: str) -> set[str] | None:
    """Names of `account`s or `qos`es in accounting; None when sacctmgr cannot answer (no slurmdbd)."""
    field_name = "account" if entity == "account" else "name"
    try:
        proc = _run(["sacctmgr", "-nP", "show", entity, f"format={field_name}"], timeout=20, check=False)
    except HarnessError:
        return None
    if proc.returncode != 0:
        return None
    return {line.strip() for line in proc.stdout.splitlines() if line.strip()}


def srun_help() -> str:
    """`srun --help`: Pyxis adds --container-image to it when its SPANK plugin is loaded."""
    try:
        proc = _run(["srun", "--help"], timeout=20, check=False)
    except HarnessError as e:
        return f"({e})"
    return proc.stdout + proc.stderr
