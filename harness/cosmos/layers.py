"""The model's norms and tensor-parallel linears, shared by the decoder layers and the Video2World cross-attention.

Megatron-core's own local norms need Apex (or wrap torch's with other keys) and its linears' constructors differ
between versions in the keyword arguments layer builders pass, so these thin classes fix both in one place.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer.transformer_config import TransformerConfig

from harness.cosmos import config as cfg


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), weight.to(x.dtype), eps)


compiled_norm = True
"""Training on CUDA runs the norm through `torch.compile` (see `rms_norm`); `harness bench train` timed it
against aten's (Cosmos-4B's widths at 8 layers, seq 12,800, one H100: 381.9 against 387.5 ms a step)."""
_rms_norm_compiled: Any = None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """torch's RMSNorm (statistics in fp32 for bf16 inputs, like TE's); no explicit fp32 copy of x is kept for
    backward, which at 12,800 tokens would cost ~0.4 GB per layer. In training on CUDA it is compiled: aten's
    backward is two kernels (input and weight gradients, 13.9 ms a step for Cosmos-4B at 12,800 tokens on an
    H200, forward 8 ms), Inductor's one fused pass each way. Inference keeps aten's: decoding is compiled whole
    (`harness.cosmos.generate`), and eager decoding's shapes change every call."""
    global _rms_norm_compiled
    if not (compiled_norm and x.is_cuda and torch.is_grad_enabled() and x.requires_grad):
        return _rms_norm(x, weight, eps)
    if _rms_norm_compiled is None:
        _rms_norm_compiled = torch.compile(_rms_norm, dynamic=False)
    return _rms_norm_compiled(x, weight, eps)


class RMSNorm(torch.nn.Module):
    """RMSNorm for q/k and the final norm (`eps` from the config); mcore's local norms need Apex or wrap torch's."""

    on_residual = False
    """Whether it normalises the residual stream, which sequence parallelism splits over the TP ranks: then each
    rank sees different tokens and megatron's `finalize_model_grads` must sum the weight's grad over TP."""

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = cfg.LAYERNORM_EPS,
                 **_: Any) -> None:
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        setattr(self.weight, "sequence_parallel", self.on_residual and config.sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class ResidualRMSNorm(RMSNorm):
    """The final norm and Video2World's pre-cross-attention norm (q/k norms act on whole heads instead)."""

    on_residual = True


def _known(cls: type, kw: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments `cls.__init__` accepts: megatron-core versions differ in what layer builders pass to
    linears (0.16: tp_comm_buffer_name, tp_group; 0.20 adds pg_collection, name), so drop the ones it lacks."""
    params = inspect.signature(getattr(cls, "__init__")).parameters  # the constructor, own or inherited
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kw
    return {k: v for k, v in kw.items() if k in params}


class NormedColumnParallelLinear(tensor_parallel.ColumnParallelLinear):
    """RMSNorm then a column-parallel linear; the norm weight is `layer_norm_weight`, as in TE's
    `TELayerNormColumnParallelLinear`, so the state-dict keys equal those of NeMo's Cosmos checkpoints."""

    def __init__(self, input_size: int, output_size: int, *, config: TransformerConfig, **kw: Any) -> None:
        super().__init__(input_size, output_size, config=config, **_known(tensor_parallel.ColumnParallelLinear, kw))
        self.eps = config.layernorm_epsilon
        self.layer_norm_weight = torch.nn.Parameter(torch.ones(input_size, dtype=config.params_dtype))
        setattr(self.layer_norm_weight, "sequence_parallel", config.sequence_parallel)

    def forward(self, x: torch.Tensor, *args: Any, **kw: Any) -> Any:
        return super().forward(rms_norm(x, self.layer_norm_weight, self.eps), *args, **kw)


class TPLinear(tensor_parallel.ColumnParallelLinear):
    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **_known(tensor_parallel.ColumnParallelLinear, kw))


class TPRowLinear(tensor_parallel.RowParallelLinear):
    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **_known(tensor_parallel.RowParallelLinear, kw))
