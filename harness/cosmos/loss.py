"""The per-token cross-entropy of the model's logits, TP-exact, and a chunked form for one TP rank.

At one TP rank the unchunked loss is a log-softmax that reads the bf16 logits and writes fp32 log-probs, then a
gather; its backward keeps those fp32 log-probs ([12,800, 64,000]: 3.3 GB for a Cosmos sample) and makes
several passes over them. The chunked form (`chunked = True`) never holds fp32 rows beyond one chunk: forward
keeps only the row's log-sum-exp, backward recomputes softmax - one-hot from the bf16 logits chunk by chunk
(each chunk one compiled kernel on CUDA) and writes the bf16 gradient. Same values, same gradients.
On CUDA it is the default: `harness bench train` timed it against the unchunked form (Cosmos-4B's widths at 8
layers, seq 12,800, one H100: 377.4 against 387.5 ms a step, 56.7 against 64.1 GiB peak; `--fuse` without
`loss` times the unchunked form). CPU training keeps the unchunked form.
"""

from __future__ import annotations

from typing import Any

import torch
from megatron.core import parallel_state, tensor_parallel

chunked = True
"""The chunked form at one TP rank on CUDA (see the module's note)."""
CHUNK_ROWS = 2048
_compiled: dict[str, Any] = {}


def token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy [b, s] (float32) of logits [s, b, vocab/tp]. A label outside this rank's vocab
    (Video2World's PAD lies past the output vocab) is scored as megatron does: a logit of 0 after the row max
    is subtracted, i.e. logsumexp - max (max held constant). With TP > 1 megatron's own, which all-reduces the
    max and the sum across ranks."""
    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        loss = tensor_parallel.vocab_parallel_cross_entropy(logits.float(), labels.transpose(0, 1).contiguous())
        return loss.transpose(0, 1).contiguous()
    if chunked and logits.is_cuda:
        return chunked_loss(logits, labels)
    s, b, v = logits.shape
    lab2 = labels.transpose(0, 1).reshape(s, b, 1)
    inside = (lab2 >= 0) & (lab2 < v)
    idx = torch.where(inside, lab2, 0)
    logp = torch.log_softmax(logits, dim=-1, dtype=torch.float32).gather(-1, idx)
    lse = logits.gather(-1, idx).float() - logp - logits.detach().amax(-1, keepdim=True).float()
    return torch.where(inside, -logp, lse).squeeze(-1).transpose(0, 1).contiguous()


def chunked_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`token_loss` at one TP rank in chunks of rows, on any device (CUDA training's default form)."""
    s, b, v = logits.shape
    lab = labels.transpose(0, 1).reshape(s * b)
    return _ChunkedCE.apply(logits.reshape(s * b, v), lab).reshape(s, b).transpose(0, 1).contiguous()


def _rows_forward(x: torch.Tensor, idx: torch.Tensor, inside: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xf = x.float()
    lse = torch.logsumexp(xf, dim=-1)
    tgt = xf.gather(-1, idx[:, None]).squeeze(-1)
    return torch.where(inside, lse - tgt, lse - xf.amax(-1)), lse


def _rows_backward(x: torch.Tensor, lse: torch.Tensor, idx: torch.Tensor, inside: torch.Tensor, g: torch.Tensor
                   ) -> torch.Tensor:
    p = torch.exp(x.float() - lse[:, None])
    hot = (torch.arange(x.shape[-1], device=x.device)[None, :] == idx[:, None]) & inside[:, None]
    return ((p - hot.float()) * g[:, None]).to(x.dtype)


def _kernel(name: str, fn: Any, x: torch.Tensor) -> Any:
    if not x.is_cuda:
        return fn
    if name not in _compiled:
        _compiled[name] = torch.compile(fn, dynamic=False)
    return _compiled[name]


class _ChunkedCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        n, v = logits.shape
        inside = (labels >= 0) & (labels < v)
        idx = torch.where(inside, labels, 0)
        loss = torch.empty(n, dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(loss)
        fwd = _kernel("forward", _rows_forward, logits)
        for i in range(0, n, CHUNK_ROWS):
            loss[i:i + CHUNK_ROWS], lse[i:i + CHUNK_ROWS] = fwd(logits[i:i + CHUNK_ROWS], idx[i:i + CHUNK_ROWS],
                                                                inside[i:i + CHUNK_ROWS])
        ctx.save_for_backward(logits, lse, idx, inside)
        return loss

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits, lse, idx, inside = ctx.saved_tensors
        grad = torch.empty_like(logits)
        bwd = _kernel("backward", _rows_backward, logits)
        for i in range(0, logits.shape[0], CHUNK_ROWS):
            sl = slice(i, i + CHUNK_ROWS)
            grad[sl] = bwd(logits[sl], lse[sl], idx[sl], inside[sl], g[sl].float())
        return grad, None
