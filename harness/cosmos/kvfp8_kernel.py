"""The fp8 decode cache's attention kernel (Triton), apart from `kvfp8` so that only a launch imports Triton.

One program per (sequence, key/value head, split of the valid positions): it loads the group's query heads
(padded to 16 rows for `tl.dot`), walks its split's keys in blocks of fp8 codes, applies each key's scale to its
scores and each value's scale to its probabilities, and writes the split's output and log-sum-exp. The position
is read on the device (`POS`), so one compiled launch serves every decode step of a CUDA graph.
"""

import triton
import triton.language as tl


@triton.jit
def split_kernel(Q, K, KS, V, VS, POS, OUT, LSE, sm_scale,  # noqa: N803 - pointers in capitals, as kernels write them
                 sq_b, sq_h, sq_d, sk_b, sk_g, sk_n, ss_b, ss_g, so_b, so_h, so_s, sl_b, sl_h, G,
                 SPLITS, R: tl.constexpr, R_PAD: tl.constexpr, D: tl.constexpr,
                 BLOCK: tl.constexpr, IEEE: tl.constexpr, F16: tl.constexpr):
    bg = tl.program_id(0)
    split = tl.program_id(1)
    bi = bg // G
    g = bg % G
    r = tl.arange(0, R_PAD)
    d = tl.arange(0, D)
    heads = g * R + r
    q = tl.load(Q + bi * sq_b + heads[:, None] * sq_h + d[None, :] * sq_d, mask=(r < R)[:, None], other=0.0)
    if F16:  # e4m3 codes convert to fp16 in hardware, and exactly; bf16 queries lose nothing in fp16's range
        q = q.to(tl.float16)
    length = tl.load(POS).to(tl.int32) + 1
    chunk = tl.cdiv(tl.cdiv(length, SPLITS), BLOCK) * BLOCK
    start = split * chunk
    end = tl.minimum(start + chunk, length)
    m = tl.full([R_PAD], float("-inf"), tl.float32)
    den = tl.zeros([R_PAD], tl.float32)
    acc = tl.zeros([R_PAD, D], tl.float32)
    kv = bi * sk_b + g * sk_g
    sc = bi * ss_b + g * ss_g
    for n0 in range(start, end, BLOCK):
        n = n0 + tl.arange(0, BLOCK)
        valid = n < end
        k = tl.load(K + kv + n[:, None] * sk_n + d[None, :], mask=valid[:, None], other=0.0).to(q.dtype)
        kscale = tl.load(KS + sc + n, mask=valid, other=0.0)  # x sm_scale: fp64 from a compiled caller
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = tl.where(valid[None, :], s * (kscale * sm_scale).to(tl.float32)[None, :], float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new[:, None])
        den = den * alpha + tl.sum(p, 1)
        v = tl.load(V + kv + n[:, None] * sk_n + d[None, :], mask=valid[:, None], other=0.0).to(q.dtype)
        vscale = tl.load(VS + sc + n, mask=valid, other=0.0)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p * vscale[None, :], v, input_precision="ieee")
        elif F16:  # p x scale normalised to [0, 1] by the block's largest scale: no fp16 underflow
            vmax = tl.max(vscale, 0)  # > 0: the block holds a valid position
            acc = acc * alpha[:, None] + tl.dot((p * (vscale / vmax)[None, :]).to(q.dtype), v) * vmax
        else:
            acc = acc * alpha[:, None] + tl.dot((p * vscale[None, :]).to(q.dtype), v)
        m = m_new
    safe = tl.where(den > 0, den, 1.0)
    rows = (r < R)
    tl.store(OUT + bi * so_b + heads[:, None] * so_h + split * so_s + d[None, :], acc / safe[:, None],
             mask=rows[:, None])
    tl.store(LSE + bi * sl_b + heads * sl_h + split, tl.where(den > 0, m + tl.log(safe), float("-inf")),
             mask=rows)

