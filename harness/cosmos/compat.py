"""Run megatron-core on a machine without CUDA (the CPU quickstart, CI): a handful of patches, applied only when
`torch.cuda.is_available()` is false AND the stage's spec asks for no GPU (`gpus_per_node = 0`; a stage that asks for
GPUs and sees none is a broken node, and fails rather than training on the CPU), each naming the megatron-core code that
assumes CUDA (checked against megatron-core 0.15.3, 0.16.1 and 0.19.2; the last also on a CUDA build of torch with no
GPU visible, as a CPU-only task of submitit's local executor sees a GPU workstation). Nothing here runs on a GPU node;
`apply()` is idempotent.

Also required on CPU, outside this module: `psutil` installed (without it a dist-checkpoint save hangs in
`count_queue.join()`) and the `gather_object` exchange algorithm for fully-parallel loads (see checkpoint.py).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from harness.core.errors import HarnessError

log = logging.getLogger(__name__)
_applied = False


def needed() -> bool:
    return not torch.cuda.is_available()


def apply(*, gpus_requested: int = 0) -> bool:
    """Patch megatron-core for CPU when CUDA is absent and the stage asked for no GPU (`gpus_requested`: its
    `gpus_per_node`); returns whether patches are active. Asked for GPUs without CUDA: HarnessError."""
    global _applied
    if not needed():
        return False
    if gpus_requested:
        raise HarnessError(f"{os.uname().nodename}: the stage asks for {gpus_requested} GPU(s) per node but "
                           f"torch.cuda.is_available() is false (CUDA_VISIBLE_DEVICES="
                           f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!r}); not falling back to the CPU")
    if _applied:
        return True
    _patch_cuda_calls()
    _patch_rng()
    _patch_memory_buffer()
    _patch_optimizer()
    _applied = True
    log.info("megatron-core CPU compatibility patches applied (no CUDA)")
    return True


def _patch_cuda_calls() -> None:
    # dist_checkpointing/strategies/torch.py and filesystem_async.py call torch.cuda.synchronize() around
    # saves and loads; optimizer/optimizer.py and distributed_data_parallel.py use torch.cuda.current_device()
    # as the device of new tensors (grad buffers, found-inf flags). On CPU both must be harmless.
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment,return-value]  # a device name, not an index
    # distributed/param_and_grad_buffer.py (0.19): start_grad_sync waits on torch.cuda.current_stream() for
    # CUDA-graph gradient events, which initialises CUDA ("No CUDA GPUs are available").
    torch.cuda.current_stream = lambda *a, **k: _HostStream()  # type: ignore[assignment]  # a host stand-in


class _HostStream:
    """What CPU code sees as the current stream: work is already complete when issued."""

    def wait_event(self, event: Any) -> None:
        return None

    def wait_stream(self, stream: Any) -> None:
        return None

    def synchronize(self) -> None:
        return None


def _seed_cpu(seed: int) -> None:
    torch.manual_seed(seed)


def _patch_rng() -> None:
    # tensor_parallel/random.py: CudaRNGStatesTracker.add() calls torch.cuda.get_rng_state()/manual_seed, and
    # fork()/CheckpointFunction go through _get_cuda_rng_state/_set_cuda_rng_state, which read
    # torch.cuda.default_generators. On CPU the tracked states are CPU generator states.
    # model_parallel_cuda_manual_seed seeds "the default state" with torch.cuda.manual_seed(seed): the same seed
    # on every rank of a data-parallel group, which is what keeps DP replicas identical. On CPU that default state
    # is the CPU generator, and it is also the one use_cpu_initialization (layers.py _initialize_affine_weight_cpu:
    # `init_method(master_weight)`) draws the initial weights from; a no-op here left every rank's weights to its
    # process's unseeded generator, so DP replicas started different and run.seed did not fix the init.
    from megatron.core.tensor_parallel import random as mr

    def get_state(device: Any = "cuda", clone: bool = False, graph_safe: bool = False) -> torch.Tensor:
        return torch.get_rng_state()

    def set_state(new_state: torch.Tensor, device: int = -1, graph_safe: bool = False) -> None:
        torch.set_rng_state(new_state)

    def add(self: Any, name: str, seed: int) -> None:
        if seed in self.seeds_:
            raise Exception(f"seed {seed} already exists")
        self.seeds_.add(seed)
        if name in self.states_:
            raise Exception(f"rng state {name} already exists")
        orig = torch.get_rng_state()
        torch.manual_seed(seed)
        self.states_[name] = torch.get_rng_state()
        torch.set_rng_state(orig)

    mr._get_cuda_rng_state = get_state
    mr._set_cuda_rng_state = set_state
    mr.CudaRNGStatesTracker.add = add
    torch.cuda.manual_seed = _seed_cpu
    torch.cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()
    torch.cuda.set_rng_state = lambda state, device="cuda": torch.set_rng_state(state)  # type: ignore[assignment]  # CPU state


def _patch_memory_buffer() -> None:
    # utils.py GlobalMemoryBuffer.get_tensor allocates its scratch buffer with
    # device=torch.cuda.current_device() (used by sequence-parallel all-gathers).
    from megatron.core import utils

    def get_tensor(self: Any, tensor_shape: Any, dtype: torch.dtype, name: str, mem_alloc_context: Any = None
                   ) -> torch.Tensor:
        n = 1
        for s in tensor_shape:
            n *= int(s)
        buf = self.buffer.get((name, dtype))
        if buf is None or buf.numel() < n:
            buf = torch.empty(n, dtype=dtype, device="cpu", requires_grad=False)
            self.buffer[(name, dtype)] = buf
        return buf[:n].view(*tensor_shape)

    utils.GlobalMemoryBuffer.get_tensor = get_tensor


def _patch_optimizer() -> None:
    # optimizer/clip_grads.py get_grad_norm_fp32 builds its norm with device=torch.cuda.current_device() and,
    # without Apex/TE, calls multi_tensor_applier on CUDA buffers; clip_grad_by_total_norm_fp32 asserts the
    # grads are CUDA tensors. optimizer/optimizer.py FP32Optimizer keeps its `_scale` on 'cuda'. On CPU: plain
    # torch norms and scaling. (The bf16 MixedPrecisionOptimizer also checks for 'torch.cuda.*Tensor' types,
    # so on CPU the harness trains in fp32; see harness.core.trainplan.precision.)
    from megatron.core.optimizer import clip_grads
    from megatron.core.optimizer import optimizer as opt

    def grad_norm(grads_for_norm: Any, norm_type: float = 2, grad_stats_parallel_group: Any = None) -> float:
        if isinstance(grads_for_norm, torch.Tensor):
            grads_for_norm = [grads_for_norm]
        norm_type = float(norm_type)
        if norm_type == float("inf"):
            total = max((g.abs().max().float() for g in grads_for_norm), default=torch.tensor(0.0))
            total = torch.as_tensor(total, dtype=torch.float32)
            if grad_stats_parallel_group is not None:
                torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.MAX, group=grad_stats_parallel_group)
            return float(total)
        total = torch.zeros((), dtype=torch.float32)
        for g in grads_for_norm:
            total += torch.norm(g.float(), norm_type) ** norm_type
        if grad_stats_parallel_group is not None:
            torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM, group=grad_stats_parallel_group)
        return float(total ** (1.0 / norm_type))

    def clip(parameters: Any, max_norm: float, total_norm: float, use_decoupled_grad: bool = False) -> None:
        if isinstance(parameters, torch.Tensor):
            parameters = [parameters]
        coeff = max_norm / (total_norm + 1.0e-6)
        if coeff < 1.0:
            for p in parameters:
                g = p.decoupled_grad if use_decoupled_grad else p.grad
                if g is not None:
                    g.detach().mul_(coeff)

    clip_grads.get_grad_norm_fp32 = grad_norm
    clip_grads.clip_grad_by_total_norm_fp32 = clip
    opt.get_grad_norm_fp32 = grad_norm
    opt.clip_grad_by_total_norm_fp32 = clip
    def fp32_init(self: Any, optimizer: Any, config: Any, init_state_fn: Any) -> None:
        # FP32Optimizer.__init__ sets self._scale = torch.tensor([1.0], device='cuda'); same state, on CPU.
        opt.MegatronOptimizer.__init__(self, optimizer, config, init_state_fn)
        self._scale = torch.tensor([1.0], dtype=torch.float)
        self.is_stub_optimizer = optimizer is None

    opt.FP32Optimizer.__init__ = fp32_init
    if hasattr(opt.MegatronOptimizer, "has_grad_norm_group"):
        opt.MegatronOptimizer.has_grad_norm_group = _has_grad_norm_group


def _has_grad_norm_group(self: Any, grad_norm_group: Any) -> bool:
    """optimizer/optimizer.py (0.19) MegatronOptimizer.has_grad_norm_group: whether any rank holds a parameter
    of a separate grad-norm group, agreed by an all-reduce of a flag it creates with device='cuda'; on CPU."""
    from megatron.core.optimizer import optimizer as opt

    opt._validate_grad_norm_group(grad_norm_group)
    cache = getattr(self, "_has_grad_norm_group_cache", None)
    if cache is None:
        cache = self._has_grad_norm_group_cache = {}
    if grad_norm_group not in cache:
        groups = (opt._get_param_grad_norm_group(p) for p in self.get_parameters())
        local = any(opt._is_separate_grad_norm_group(g) and g == grad_norm_group for g in groups)
        flag = torch.tensor([int(local)], dtype=torch.int)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX,
            group=self.get_grad_stats_parallel_group())
        cache[grad_norm_group] = bool(flag.item() > 0)
    return bool(cache[grad_norm_group])

