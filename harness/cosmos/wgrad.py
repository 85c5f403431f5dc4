"""Weight-gradient accumulation fused into the weight-gradient GEMM, without Apex.

Megatron's DDP keeps an fp32 `main_grad` per parameter. Without Apex's `fused_weight_gradient_mlp_cuda`
extension, each linear's backward writes a bf16 weight gradient and a DDP hook then adds it into `main_grad`:
one more pass over every weight gradient per step (131 fp32 adds, 16 ms a step for Cosmos-4B at 12,800 tokens
on an H200). With the extension, the GEMM accumulates into `main_grad` itself (C = A B + C, fp32 C).
torch's `addmm` with `out_dtype` does the same on CUDA (bf16 inputs, fp32 accumulator and output), so this
module supplies the two functions megatron calls by the extension's names and turns megatron's check on.

`enabled` is read when a model's config is built (`harness.cosmos.config.transformer_config`). On by default:
`harness bench train` timed it against the unfused path (Cosmos-4B's widths at 8 layers, seq 12,800, one H100:
383.8 against 387.5 ms a step); its arithmetic is tested on CPU and CUDA.
"""

from __future__ import annotations

from typing import Any

import torch

enabled = True
"""Use the fused accumulation where it is available (CUDA, a torch whose addmm takes `out_dtype`)."""


class _Accumulate:
    """The extension's interface: `wgrad_gemm_accum_*(input [t, in], grad_output [t, out], main_grad [out, in])`
    adds grad_output^T @ input into main_grad in place."""

    @staticmethod
    def wgrad_gemm_accum_fp32(total_input: torch.Tensor, grad_output: torch.Tensor, main_grad: torch.Tensor
                              ) -> None:
        torch.addmm(main_grad, grad_output.t(), total_input, out_dtype=torch.float32, out=main_grad)

    @staticmethod
    def wgrad_gemm_accum_fp16(total_input: torch.Tensor, grad_output: torch.Tensor, main_grad: torch.Tensor
                              ) -> None:
        main_grad.addmm_(grad_output.t(), total_input)


def available() -> bool:
    """CUDA present and `torch.addmm(..., out_dtype=)` accumulates bf16 products into an fp32 buffer in place
    (probed once per config: an unsupported dispatch raises, a wrong one is caught by the value)."""
    if not (enabled and torch.cuda.is_available()):
        return False
    try:
        c = torch.ones((2, 2), dtype=torch.float32, device="cuda")
        a = torch.ones((2, 2), dtype=torch.bfloat16, device="cuda")
        _Accumulate.wgrad_gemm_accum_fp32(a, a, c)
        return bool((c == 3.0).all().item())  # accumulated into the fp32 buffer, not overwritten
    except (RuntimeError, TypeError):
        return False


def install() -> bool:
    """Point megatron's linears at the fused accumulation; False (nothing changed) where it is unavailable."""
    if not available():
        return False
    from megatron.core.tensor_parallel import layers  # noqa: PLC0415

    mod: Any = layers
    mod.fused_weight_gradient_mlp_cuda = _Accumulate
    mod._grad_accum_fusion_available = True
    return True
