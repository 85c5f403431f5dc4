"""The fp8 KV cache's own checks, run by `harness bench generate --kv-cache fp8`: its decode kernel against the
torch reference at the timed preset's head layout and dtype, and what quantizing the keys and values does to
the model's next-token distributions at every prompt position.

The distributions are of the bench's random weights, whose logits are nearly flat: the KL divergence there
bounds little about a trained checkpoint's, whose sharper distributions are what sampling sees. The relative
error of the logits is the comparable figure; a checkpoint's own can be measured the same way (`quality`)."""

from __future__ import annotations

from typing import Any

import torch


def kernel_check(model: Any, device: str, batch: int, positions: int) -> dict[str, Any]:
    """`kvfp8.decode_attention` (the Triton kernel on CUDA) against `kvfp8.reference` on random keys/values of
    the model's local head counts and dtype, at the last and a middle position: the largest difference over the
    largest output magnitude."""
    from harness.cosmos import kvfp8

    c = model.config
    heads, groups = (n // c.tensor_model_parallel_size for n in (c.num_attention_heads, c.num_query_groups))
    dtype = next(model.parameters()).dtype
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn((batch, heads, 1, c.kv_channels), generator=g, device=device, dtype=dtype)
    k, ks = kvfp8.quantize(torch.randn((batch, groups, positions, c.kv_channels), generator=g, device=device) * 4)
    v, vs = kvfp8.quantize(torch.randn((batch, groups, positions, c.kv_channels), generator=g, device=device))
    worst = 0.0
    for pos in (positions - 1, positions // 2):
        p = torch.tensor(pos, device=device)
        ref = kvfp8.reference(q.float(), k, ks, v, vs, p, None)
        out = kvfp8.decode_attention(q, k, ks, v, vs, p, None, kvfp8.device_splits(k)).float()
        worst = max(worst, float((out - ref).abs().max() / ref.abs().max()))
    return {"check": "fp8 decode kernel vs reference", "dtype": str(dtype), "batch": batch, "positions": positions,
            "max_rel_diff": worst, "ok": worst < (1e-2 if dtype == torch.bfloat16 else 1e-4)}


@torch.inference_mode()
def quality(model: Any, prompt: torch.Tensor, extra: dict[str, Any]) -> dict[str, Any]:
    """Logits at every prompt position with the fp8 cache against the model-dtype forward: relative L2 error,
    mean KL(model || fp8) and top-1 agreement. One sequence at a time (the logits of all positions are large)."""
    from harness.cosmos.kvcache import StaticKVCache

    rel, kl, top1 = [], [], []
    for i in range(prompt.shape[0]):
        one = {k: v[i:i + 1] for k, v in extra.items()}
        exact = model(prompt[i:i + 1], **one).float()
        cache = StaticKVCache(len(model.decoder.layers), prompt.shape[1], fp8=True)
        fp8 = model(prompt[i:i + 1], kv_cache=cache, **one).float()
        rel.append(float((fp8 - exact).norm() / exact.norm()))
        lp, lq = exact.log_softmax(-1), fp8.log_softmax(-1)
        kl.append(float((lp.exp() * (lp - lq)).sum(-1).mean()))
        top1.append(float((exact.argmax(-1) == fp8.argmax(-1)).float().mean()))
    n = len(rel)
    return {"check": "fp8 cache quality (random weights)", "sequences": n, "positions": prompt.shape[1],
            "logits_rel_l2": sum(rel) / n, "kl_nats_mean": sum(kl) / n, "top1_agreement": sum(top1) / n}
