"""Process-group setup for the mcore engine: rank discovery (torchrun, Slurm, or one process), torch.distributed
(gloo on CPU, NCCL on GPU) and megatron-core's tensor/data-parallel groups (TP within a node, DP across)."""

from __future__ import annotations

import datetime
import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel

from harness.core.cpus import cpu_threads, ranks_on_node
from harness.core.errors import HarnessError
from harness.cosmos import compat, fastpaths

TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class RankEnv:
    rank: int
    world: int
    local_rank: int
    master_addr: str
    master_port: int
    source: str
    """"torchrun", "slurm", "submitit-local" or "single"."""


def rank_env(environ: dict[str, str] | None = None) -> RankEnv:
    """torchrun/spawn variables win (they are set per process); then Slurm's per-task SLURM_PROCID; then submitit's
    local executor's per-task variables (it starts tasks_per_node processes itself); else one process."""
    env = dict(os.environ if environ is None else environ)
    port = int(env.get("MASTER_PORT", "0") or 0)
    if "RANK" in env and "WORLD_SIZE" in env:
        return RankEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")),
                       env.get("MASTER_ADDR", "127.0.0.1"), port or 29500, "torchrun")
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        job = int(env.get("SLURM_JOB_ID", "0") or 0)
        addr = env.get("MASTER_ADDR") or node_address(first_host(
            env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "")))
        return RankEnv(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", "0")),
                       addr, port or 20000 + job % 20000, "slurm")
    if int(env.get("SUBMITIT_LOCAL_NTASKS", "1") or 1) > 1:  # submitit's local executor, tasks_per_node > 1
        job = int(env.get("SUBMITIT_LOCAL_JOB_ID", "0") or 0)
        return RankEnv(int(env["SUBMITIT_LOCAL_GLOBALID"]), int(env["SUBMITIT_LOCAL_NTASKS"]),
                       int(env.get("SUBMITIT_LOCAL_LOCALID", "0")), "127.0.0.1", port or 20000 + job % 20000,
                       "submitit-local")
    return RankEnv(0, 1, 0, "127.0.0.1", port or _free_port(), "single")


def first_host(nodelist: str) -> str:
    """First host of a Slurm hostlist ("gpu[003-005,9],cpu1" -> "gpu003"); scontrol when present, else parsed."""
    if not nodelist:
        raise HarnessError("SLURM_NODELIST is empty: cannot find the rendezvous host (set MASTER_ADDR)")
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                 timeout=30, check=True).stdout.split()
            if out:
                return out[0]
        except (subprocess.SubprocessError, OSError):
            pass
    m = re.match(r"^([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if not m:
        raise HarnessError(f"SLURM_NODELIST={nodelist!r}: cannot parse the first host")
    prefix, ranges = m.group(1), m.group(2)
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def node_address(host: str) -> str:
    """Where the other nodes reach `host`: the name itself where it resolves (a real cluster's node names do),
    else the NodeAddr Slurm reaches that node's slurmd at (node names Slurm alone knows, e.g. virtual nodes)."""
    try:
        socket.getaddrinfo(host, None)
        return host
    except (socket.gaierror, UnicodeError):
        pass
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(["scontrol", "show", "node", host], capture_output=True, text=True, timeout=30,
                                 check=True).stdout
            m = re.search(r"\bNodeAddr=(\S+)", out)
            if m:
                return m.group(1)
        except (subprocess.SubprocessError, OSError):
            pass
    raise HarnessError(f"rendezvous host {host!r} does not resolve and Slurm names no NodeAddr for it "
                       f"(set MASTER_ADDR)")


def share_cpu_cores(ranks: int) -> None:
    """Apply `cpu_threads` to this process (CPU ranks only: a GPU rank's host threads are not the bottleneck)."""
    if not torch.cuda.is_available() and (n := cpu_threads(len(os.sched_getaffinity(0)), ranks, dict(os.environ))):
        torch.set_num_threads(n)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reseed(seed: int) -> None:
    """Seed every generator a model's initialisation draws from (torch's and mcore's model-parallel tracker), so
    a random initialisation depends on the seed alone, not on what the process drew before (`init` seeds once
    per process)."""
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def init(tp: int, *, seed: int = 1234, env: RankEnv | None = None, gpus_requested: int = 0) -> RankEnv:
    """Initialise torch.distributed and mcore's parallel state once per process (idempotent for the same TP).
    `gpus_requested`: the stage's `gpus_per_node`; the CPU compatibility layer is applied only where it is 0."""
    env = env or rank_env()
    compat.apply(gpus_requested=gpus_requested)
    fastpaths.apply()
    # Large, varying activation sizes (12,800-token videos) fragment the caching allocator; expandable segments
    # avoid the retry/free storms near full memory. Must be set before the first CUDA allocation.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    if env.world % tp:
        raise HarnessError(f"{env.world} ranks cannot be split into tensor-parallel groups of {tp}")
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
    elif env.world > 1:
        share_cpu_cores(ranks_on_node(dict(os.environ)))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://{env.master_addr}:{env.master_port}",
                                rank=env.rank, world_size=env.world, timeout=TIMEOUT)
    if parallel_state.model_parallel_is_initialized():
        if parallel_state.get_tensor_model_parallel_world_size() == tp:
            return env
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    return env


def dp_size() -> int:
    return parallel_state.get_data_parallel_world_size()


def dp_rank() -> int:
    return parallel_state.get_data_parallel_rank()


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def check_identical(t: torch.Tensor, what: str) -> None:
    """Tensor-parallel ranks sample from the same gathered logits with the same seeded generator, so they must
    agree; a disagreement (non-deterministic collectives, a rank on other weights) fails loudly here instead of
    rank 0 silently writing one rank's video."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    ref = t.clone()
    dist.broadcast(ref, src=0)
    differ = torch.tensor([int(not torch.equal(ref, t))], device=t.device)
    dist.all_reduce(differ)
    if int(differ.item()):
        raise HarnessError(f"{what} differ between tensor-parallel ranks ({int(differ.item())} of "
                           f"{dist.get_world_size()} disagree with rank 0)")


def min_across_ranks(value: int, device: torch.device) -> int:
    """A per-rank figure (free memory) made one decision for the whole group."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
