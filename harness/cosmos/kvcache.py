"""The static KV cache of generation: buffers allocated once per batch shape and reused across batches.

The model's own `LayerKV` grows its cache with `torch.cat`, which copies the whole cache every step (O(n^2)
memory traffic: the 21 tokens/s of the eager calibration). `StaticKVCache` duck-types the model's `KVCache`
(`layers[i].append(k, v)`, `length`), so a decode step writes one position and reads views: no per-step
allocation of cache memory. In device-position mode (`harness.cosmos.generate`'s graph path) the position is a
device tensor and attention is over the whole buffers, masked past it, so a step can be captured in a CUDA graph.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.cosmos.batching import BLOCK


class StaticLayerKV:
    """One layer's keys/values [b, heads_kv, cap, d]. Host-position mode (`not cache.on_device`): `append` writes
    at `n` and returns views of the first `n` positions (attention is the model's SDPA). Device-position mode: it
    writes at `cache.pos` with `index_copy_` and `attend` runs flex attention over the whole buffers, visiting
    only the key blocks that hold valid positions (flash-decoding: the keys are split across thread blocks, where
    a masked SDPA over the buffer gives one thread block per K/V head and reads every position). With the cache's
    `fp8`, the buffers hold e4m3 codes beside per-position scales (`harness.cosmos.kvfp8`), read dequantized by the
    host-position paths and by the fp8 decode kernel in device-position mode."""

    def __init__(self, cache: "StaticKVCache") -> None:
        self.cache = cache
        self.k_buf: torch.Tensor | None = None
        self.v_buf: torch.Tensor | None = None
        self.scales: tuple[torch.Tensor, torch.Tensor] | None = None
        """fp8 cache: the keys' and values' scales [b, heads_kv, cap] (the buffers then hold fp8 codes)."""
        self.dtype = torch.float32
        self.splits = 1
        """fp8 cache: the decode kernel's splits of the positions, fixed with the buffers (`kvfp8.splits`)."""
        self.n = 0

    def _buffers(self, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, h, _, d = k.shape
        dtype = torch.uint8 if self.cache.fp8 else k.dtype
        if self.k_buf is None or self.k_buf.shape != (b, h, self.cache.cap, d) or self.k_buf.dtype != dtype \
                or self.k_buf.device != k.device or self.dtype != k.dtype:
            self.k_buf = torch.zeros((b, h, self.cache.cap, d), dtype=dtype, device=k.device)
            self.v_buf = torch.zeros_like(self.k_buf)
            ones = (b, h, self.cache.cap)
            self.scales = (torch.ones(ones, device=k.device), torch.ones(ones, device=k.device)) \
                if self.cache.fp8 else None
            self.dtype = k.dtype
            if self.cache.fp8:
                from harness.cosmos.kvfp8 import device_splits  # noqa: PLC0415

                self.splits = device_splits(self.k_buf)
            self.cache.graphs.clear()  # captured graphs point at the old buffers
        assert self.v_buf is not None
        return self.k_buf, self.v_buf

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kb, vb = self._buffers(k)
        if self.scales is not None:
            return self._append_fp8(kb, vb, k, v)
        if self.cache.on_device:
            assert self.cache.idx is not None  # set by begin() in device-position mode
            kb.index_copy_(2, self.cache.idx, k)
            vb.index_copy_(2, self.cache.idx, v)
            return kb, vb
        s = self._grow(k.shape[2])
        kb[:, :, s].copy_(k)
        vb[:, :, s].copy_(v)
        return kb[:, :, :self.n], vb[:, :, :self.n]

    def _grow(self, s: int) -> slice:
        if self.n + s > self.cache.max_len:
            raise ValueError(f"KV cache of {self.cache.max_len} positions cannot take {self.n} + {s}")
        self.n += s
        return slice(self.n - s, self.n)

    def _append_fp8(self, kb: torch.Tensor, vb: torch.Tensor, k: torch.Tensor, v: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantize and write; host positions return the valid prefix dequantized (what every path attends to)."""
        from harness.cosmos.kvfp8 import dequantize, quantize  # noqa: PLC0415

        assert self.scales is not None
        at = None if self.cache.on_device else self._grow(k.shape[2])
        for buf, sbuf, x in ((kb, self.scales[0], k), (vb, self.scales[1], v)):
            codes, scale = quantize(x)
            if at is None:
                assert self.cache.idx is not None  # set by begin() in device-position mode
                buf.index_copy_(2, self.cache.idx, codes)
                sbuf.index_copy_(2, self.cache.idx, scale)
            else:
                buf[:, :, at].copy_(codes)
                sbuf[:, :, at].copy_(scale)
        if at is None:
            return kb, vb
        return (dequantize(kb[:, :, :self.n], self.scales[0][:, :, :self.n], self.dtype),
                dequantize(vb[:, :, :self.n], self.scales[1][:, :, :self.n], self.dtype))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> torch.Tensor | None:
        """q [b, h, s, d] over the whole buffers (device-position mode); None in host mode (the model's SDPA).
        An fp8 cache's one-token steps go through `kvfp8.decode_attention`, longer ones dequantize first."""
        if not self.cache.on_device:
            return None
        from torch.nn.attention.flex_attention import flex_attention  # noqa: PLC0415

        if self.scales is not None:
            from harness.cosmos import kvfp8  # noqa: PLC0415

            assert self.cache.pos is not None
            if q.shape[2] == 1:
                return kvfp8.decode_attention(q, k, self.scales[0], v, self.scales[1], self.cache.pos, scale,
                                              self.splits)
            k, v = kvfp8.dequantize(k, self.scales[0], q.dtype), kvfp8.dequantize(v, self.scales[1], q.dtype)
        return flex_attention(q, k, v, block_mask=self.cache.block_mask(q.shape[2]), scale=scale,
                              enable_gqa=q.shape[1] != k.shape[1])

    @property
    def k(self) -> torch.Tensor | None:
        return None if self.k_buf is None else self.k_buf[:, :, :self.n]


@dataclass
class StaticKVCache:
    """Drop-in for `harness.cosmos.model.KVCache`; `reset()` reuses the buffers for the next batch.

    Buffers hold `cap` = `max_len` rounded up to whole key blocks; positions past the valid ones are masked
    (and whole blocks of them skipped), never read as keys."""

    num_layers: int
    max_len: int
    fp8: bool = False
    """Keys and values as fp8 codes with a scale per position and head (`harness.cosmos.kvfp8`): about half
    the bytes of bf16, so decode steps read less and the auto batch is larger; attention is over the
    quantized values on every path (`infer.kv_cache`)."""
    layers: list[StaticLayerKV] = field(default_factory=list)
    on_device: bool = False
    """Device-position mode: the next position is `pos`, a 0-dim int64 tensor on the cache's device. `pos`,
    the block counts and the buffers persist across calls: captured graphs read them by address."""
    pos: torch.Tensor | None = None
    idx: torch.Tensor | None = None
    graphs: dict[Any, Any] = field(default_factory=dict)
    cross: Any = None
    """Video2World: the `harness.cosmos.video2world.CrossKVCache` of the current context (set by `generate`)."""
    _masks: dict[int, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.cap = -(-self.max_len // BLOCK) * BLOCK
        self.layers = [StaticLayerKV(self) for _ in range(self.num_layers)]

    @property
    def length(self) -> int | torch.Tensor:
        if self.on_device:
            assert self.pos is not None  # set by to_device_position()
            return self.pos
        return self.layers[0].n if self.layers else 0

    def reset(self) -> None:
        self.on_device = False
        for layer in self.layers:
            layer.n = 0

    def to_device_position(self, device: torch.device) -> None:
        """Switch to device-position mode at the current host position (after an eager prefill)."""
        n = self.layers[0].n
        if self.pos is None or self.pos.device != device:
            self.pos = torch.zeros((), dtype=torch.int64, device=device)
            self._masks.clear()
        self.pos.fill_(n)
        self.on_device = True

    def begin(self, s: int) -> None:
        """Positions of the next `s` tokens and the key blocks they attend to, computed on the device from
        `pos` (graph-capturable): token i of the step sees cache positions <= pos + i."""
        assert self.pos is not None
        self.idx = self.pos + torch.arange(s, device=self.pos.device)
        mask = self.block_mask(s)
        mask.kv_num_blocks.copy_(torch.div(self.pos + s - 1, BLOCK, rounding_mode="floor") + 1)

    def block_mask(self, s: int) -> Any:
        """The flex-attention block mask of an `s`-token step: one query block; its key blocks are the first
        `kv_num_blocks` (updated in place by `begin`), the causal rule applied inside them."""
        mask = self._masks.get(s)
        if mask is None:
            from torch.nn.attention.flex_attention import BlockMask  # noqa: PLC0415

            assert self.pos is not None
            pos, dev = self.pos, self.pos.device
            n_blocks = self.cap // BLOCK

            def causal(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
                return kv_idx <= pos + q_idx

            takes_lengths = takes(BlockMask.from_kv_blocks, "seq_lengths")
            extra: dict[str, Any] = {"seq_lengths": (s, self.cap)} if takes_lengths else {}
            mask = BlockMask.from_kv_blocks(torch.ones((1, 1, 1), dtype=torch.int32, device=dev),
                                            torch.arange(n_blocks, dtype=torch.int32, device=dev)[None, None, None],
                                            BLOCK_SIZE=(BLOCK, BLOCK), mask_mod=causal, **extra)
            self._masks[s] = mask
        return mask

    def advance(self, s: int) -> None:
        assert self.pos is not None
        self.pos.add_(s)

    def to_host_position(self, n: int) -> None:
        self.on_device = False
        for layer in self.layers:
            layer.n = n


def takes(fn: Any, name: str) -> bool:
    return name in inspect.signature(fn).parameters
