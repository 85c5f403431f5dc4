"""Multi-tensor fallbacks for megatron-core without Apex or Transformer Engine (the harness' GPU containers).

megatron-core then uses `megatron.core.utils.local_multi_tensor_l2_norm` (one `torch.norm` per tensor, gathered
through `torch.tensor(list)`: a device sync per parameter) and `local_multi_tensor_scale` (`dst.copy_(src * s)`
per tensor: a temporary and two extra passes), for the grad norm, grad clipping and the fp32 -> bf16 copy of the
master weights after every step. These replacements do the same arithmetic with torch's multi-tensor
(`_foreach_*`) kernels; they are installed only when megatron-core resolved the local fallbacks.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)


def l2_norm(chunk_size: int, noop_flag: Any, tensor_lists: list[list[torch.Tensor]], per_tensor: bool,
            *args: Any) -> tuple[torch.Tensor, None]:
    """Drop-in for amp_C.multi_tensor_l2norm: the 2-norm over all tensors of all lists, as a 1-element fp32."""
    tensors = [t for lst in tensor_lists for t in lst]
    if not tensors:
        return torch.zeros(1, dtype=torch.float32), None
    norms = torch._foreach_norm([t.float() if t.dtype != torch.float32 else t for t in tensors])
    return torch.linalg.vector_norm(torch.stack(norms)).reshape(1).float(), None


def scale(chunk_size: int, noop_flag: Any, tensor_lists: list[list[torch.Tensor]], factor: float) -> None:
    """Drop-in for amp_C.multi_tensor_scale: dst = src * factor (in place when src is dst; dtype converting)."""
    src, dst = tensor_lists[0], tensor_lists[1]
    if not src:
        return
    if all(s is d for s, d in zip(src, dst)):
        if factor != 1.0:
            torch._foreach_mul_(dst, factor)
        return
    torch._foreach_copy_(dst, src if factor == 1.0 else torch._foreach_mul(src, factor))


def apply() -> bool:
    """Install the replacements where megatron-core chose its local fallbacks; returns whether it did."""
    from megatron.core import utils
    from megatron.core.optimizer import clip_grads, optimizer

    done = False
    if getattr(clip_grads, "l2_norm_impl", None) is utils.local_multi_tensor_l2_norm:
        clip_grads.l2_norm_impl = l2_norm
        done = True
    for mod in (clip_grads, optimizer):
        if getattr(mod, "multi_tensor_scale_impl", None) is utils.local_multi_tensor_scale:
            mod.multi_tensor_scale_impl = scale
            done = True
    if done:
        log.info("megatron-core local multi-tensor fallbacks replaced by torch _foreach kernels")
    return done
