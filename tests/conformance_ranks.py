"""Per-rank shapes of the harness model for the conformance suite, from real tensor-parallel groups.

`python tests/conformance_ranks.py OUT.json` imports megatron-core once, then forks 8 processes that form one gloo
world of 8 (no CUDA, no memory: every model is built on the meta device). In that world megatron's parallel state
is initialised for TP 8, then TP 2 (DP 4), then TP 1 (DP 8): each rank's TP rank and group size are the real ones,
so the shapes are exactly what a rank of an 8-GPU job holds. The first and the last rank of the first TP group
build every preset and record its parameters; the others only take part in the group set-up.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import sys
from typing import Any

WORLD = 8
TPS = (8, 2, 1)
PRESETS = ("cosmos-4b", "cosmos-12b", "cosmos-5b-v2w", "cosmos-13b-v2w")


def record(model: Any, tp: int) -> dict[str, Any]:
    """Parameter names and this rank's shapes; at TP 1 also the checkpoint keys and global shapes the model
    saves and loads (layers stacked, as NeMo stores them)."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    attn = model.decoder.layers[0].self_attention
    out: dict[str, Any] = {
        "params": {k: list(v.shape) for k, v in model.named_parameters()},
        "head_dim": attn.hidden_size_per_attention_head,
        "softmax_scale": attn.core_attention.softmax_scale,
        "rope_dim": int(model.rope.angles.shape[-1]),
    }
    if tp == 1:
        saved: dict[str, list[int]] = {}
        for v in model.sharded_state_dict(prefix="module.").values():
            if isinstance(v, ShardedTensor):
                saved[v.key] = list(v.global_shape)
            elif isinstance(v, ShardedTensorFactory):  # SwiGLU fc1: whole at TP 1, stacked over the layers
                saved[v.key] = [len(model.decoder.layers), *v.data.shape]
        out["saved"] = saved
    return out


def rank_main(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    import torch

    from harness.core.models import PRESETS as ALL
    from harness.core.tokens import Grid
    from harness.cosmos import parallel
    from harness.cosmos.model import build_model

    result: dict[str, Any] = {}
    for tp in TPS:
        parallel.init(tp)
        if rank in (0, tp - 1):
            for name in PRESETS:
                with torch.device("meta"):
                    model = build_model(ALL[name], Grid(3, 4, 4), tp=tp, device="meta")
                result[f"{name}@{tp}"] = record(model, tp)
                del model
        parallel.barrier()
    with open(f"{out}.{rank}", "w", encoding="utf-8") as f:
        json.dump(result, f)
    parallel.shutdown()


def main(out: str) -> None:
    import harness.cosmos.model  # noqa: F401  (imported once here; the forked ranks share it)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=rank_main, args=(r, port, out)) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    bad = [r for r, p in enumerate(procs) if p.exitcode != 0]
    if bad:
        raise SystemExit(f"ranks {bad} failed")
    merged = {}
    for r in range(WORLD):
        with open(f"{out}.{r}", encoding="utf-8") as f:
            merged[str(r)] = json.load(f)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(merged, f)


if __name__ == "__main__":
    main(sys.argv[1])
