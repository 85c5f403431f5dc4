"""fp8 keys and values for the decode cache (`infer.kv_cache = "fp8"`), and the decode attention that reads them.

Why: generation is bound by the bytes a decode step reads, and at the batch whole videos are generated with the
cache is most of them (Cosmos-4B, 5x40x64 videos, one H100 at batch 58: 34 of the 41.6 GB a step reads). Keys
and values as float8 e4m3 with one fp32 scale per position and key/value head (the amax of its channels over
448, e4m3's largest finite value) take 132 bytes where bf16 takes 256: the cache's traffic per step and its
memory per sequence nearly halve, so a step reads less and the auto batch roughly doubles.

SDPA and flex attention take one dtype for queries, keys and values, and dequantizing the cache before them
would write and read a bf16 copy: more traffic than the bf16 cache. `flash_decode` is a flash-decoding kernel
(Triton) that reads the fp8 tiles and applies the scales to the scores and probabilities rather than to the
tiles (the scale is one per key: q . (s_j k_j) = s_j (q . k_j), and likewise p_j (s_j v_j) = (p_j s_j) v_j).
Each program takes one sequence's key/value head with its query heads (GQA) and one split of the valid
positions, so that a batch-1 step still spreads over every SM; the splits are combined by their log-sum-exp.
Prefill and the host-position paths read the same quantized values dequantized (`dequantize`), so every path
attends to the same keys and values and greedy tokens agree across them.
"""

from __future__ import annotations

import importlib.util
import math

import torch
import torch.nn.functional as F

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
BLOCK_N = 128
"""Keys a kernel iteration reads: 16 KiB of fp8 at 128 channels."""
WARPS, STAGES = 4, 3
"""The kernel's launch: warps per program and software-pipelined key blocks in flight."""
PROGRAMS_PER_SM = 16
"""`splits` aims at this many programs per SM: several waves, so the part-filled last one costs little."""
F16 = True
"""bf16 models: the kernel's dot products in fp16 (e4m3 codes convert to fp16 in one instruction, to bf16 not;
fp16 also keeps more of the query's bits). It assumes queries within fp16's range (|q| < 65,504).

Both chosen by one H100's sweep of 192 launches, one layer of Cosmos-4B over 9,001 positions, each timed as the op
(`harness bench fp8kernel --bare`, results/bench/h100/fp8-kv/fp8kernel-bare.json): batch 107 798.6 us (76.0% of
the card's bandwidth) against 1,124.7 us with bf16 dot products and four programs per SM, batch 58 490.9 against
702.3 us; flex attention over the bf16 cache, compiled, 1,388.2 and 770.7 us. Largest difference from the torch
reference over its largest output: 0.24% against 0.30%."""
HAS_TRITON = importlib.util.find_spec("triton") is not None
"""The kernel's module (`kvfp8_kernel`) imports Triton; on installs without it `decode_attention` runs the
reference."""


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., d] -> (fp8 codes as uint8 [..., d], fp32 scales [...]). uint8 because the cache's writes
    (`index_copy_`, slice copies) are not implemented for float8 on every device."""
    amax = x.detach().float().abs().amax(-1)
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    codes = (x.float() / scale.unsqueeze(-1)).to(FP8)
    return codes.view(torch.uint8), scale


def dequantize(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (codes.view(FP8).float() * scale.unsqueeze(-1)).to(dtype)


def reference(q: torch.Tensor, k: torch.Tensor, ks: torch.Tensor, v: torch.Tensor, vs: torch.Tensor,
              pos: torch.Tensor, scale: float | None) -> torch.Tensor:
    """`flash_decode` written with torch ops: dequantize, then SDPA over positions <= pos (one query each)."""
    kd, vd = dequantize(k, ks, q.dtype), dequantize(v, vs, q.dtype)
    valid = (torch.arange(k.shape[2], device=q.device) <= pos)[None, None, None, :]
    return F.scaled_dot_product_attention(q, kd, vd, attn_mask=valid, scale=scale, enable_gqa=q.shape[1] != k.shape[1])


def decode_attention(q: torch.Tensor, k: torch.Tensor, ks: torch.Tensor, v: torch.Tensor, vs: torch.Tensor,
                     pos: torch.Tensor, scale: float | None, n_splits: int = 1) -> torch.Tensor:
    """One decode step's attention, q [b, heads, 1, d], over fp8 caches [b, groups, cap, d] (uint8) with scales
    [b, groups, cap], keys at positions <= pos (a 0-dim device tensor): the kernel on CUDA (`n_splits` from
    `splits`, decided outside the compiled step), else `reference`."""
    if q.is_cuda and HAS_TRITON:
        return flash_decode(q, k, ks, v, vs, pos, scale, n_splits)
    return reference(q, k, ks, v, vs, pos, scale)


def device_splits(k: torch.Tensor) -> int:
    """`splits` for a cache buffer [b, groups, cap, d] on its device (one on CPU, where the reference runs)."""
    if not k.is_cuda:
        return 1
    sms = torch.cuda.get_device_properties(k.device).multi_processor_count
    return splits(k.shape[0] * k.shape[1], k.shape[2], sms)


def splits(programs: int, cap: int, sms: int) -> int:
    """Splits of the positions per (sequence, key/value head): about `PROGRAMS_PER_SM` programs per SM, none
    shorter than a block, at most 64. Cosmos-4B (8 key/value heads) on an H100 (132 SMs): batch 1 64 splits,
    batch 58 five, batch 107 three."""
    return max(1, min(-(-PROGRAMS_PER_SM * sms // programs), -(-cap // BLOCK_N), 64))


def flash_decode(q: torch.Tensor, k: torch.Tensor, ks: torch.Tensor, v: torch.Tensor, vs: torch.Tensor,
                 pos: torch.Tensor, scale: float | None, n_splits: int) -> torch.Tensor:
    """The Triton kernel on q's device (also Triton's interpreter on CPU tensors: `TRITON_INTERPRET=1`), then
    the splits merged by their log-sum-exp (torch ops: Inductor fuses them into the compiled step)."""
    b, h, _, d = q.shape
    o, lse = _split_attention(q, k, ks, v, vs, pos, scale if scale is not None else 1 / math.sqrt(d), n_splits)
    w = torch.softmax(lse, dim=-1)  # split 0 always holds position 0: never all -inf
    return (w.unsqueeze(-1) * o).sum(2, keepdim=True).to(q.dtype).view(b, h, 1, d)


@torch.library.custom_op("harness::fp8_split_attention", mutates_args=())
def _split_attention(q: torch.Tensor, k: torch.Tensor, ks: torch.Tensor, v: torch.Tensor, vs: torch.Tensor,
                     pos: torch.Tensor, scale: float, n_splits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each split's attention output [b, heads, splits, d] and log-sum-exp [b, heads, splits] (fp32). A custom
    op, not a bare kernel call, so that `torch.compile` knows it writes only its outputs (Inductor guards a kernel
    whose writes it cannot tell with copies; called bare, one H100 ran Cosmos-4B's batch 1 at 281 tokens/s
    against 320.7 as this op)."""
    from harness.cosmos.kvfp8_kernel import split_kernel  # noqa: PLC0415 - imports Triton

    b, h, _, d = q.shape
    g = k.shape[1]
    o = torch.empty((b, h, n_splits, d), dtype=torch.float32, device=q.device)
    lse = torch.empty((b, h, n_splits), dtype=torch.float32, device=q.device)
    r = h // g
    split_kernel[(b * g, n_splits)](
        q, k.view(FP8), ks, v.view(FP8), vs, pos, o, lse, scale,
        q.stride(0), q.stride(1), q.stride(3), k.stride(0), k.stride(1), k.stride(2), ks.stride(0), ks.stride(1),
        o.stride(0), o.stride(1), o.stride(2), lse.stride(0), lse.stride(1), g,
        SPLITS=n_splits, R=r, R_PAD=max(16, 1 << (r - 1).bit_length()), D=d, BLOCK=BLOCK_N,
        IEEE=q.dtype == torch.float32, F16=F16 and q.dtype != torch.float32, num_warps=WARPS,
        num_stages=STAGES)
    return o, lse


@_split_attention.register_fake
def _(q: torch.Tensor, k: torch.Tensor, ks: torch.Tensor, v: torch.Tensor, vs: torch.Tensor, pos: torch.Tensor,
      scale: float, n_splits: int) -> tuple[torch.Tensor, torch.Tensor]:
    b, h, _, d = q.shape
    return q.new_empty((b, h, n_splits, d), dtype=torch.float32), q.new_empty((b, h, n_splits), dtype=torch.float32)
