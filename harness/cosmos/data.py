"""Training samples from the merged token dataset: ONE SAMPLE = ONE WHOLE VIDEO.

Base recipe: a document is the video's T*H*W tokens; inputs are tokens[:-1], labels tokens[1:], so every label
belongs to the same video (upstream's seq+1 windows took the last label from the next video). Video2World: a
document is [BOV] + video + [PAD] x 64; the loss mask keeps only labels that are video tokens (no BOV, no PAD).
The order of samples is a pure function of (seed, step), so a resumed run sees exactly the batches it would have.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

import numpy as np
import torch

from harness.core.errors import HarnessError
from harness.core.tokens import BOV_ID, TokenMath


class TokenSource(Protocol):
    """What `harness.stages.dataset.TokenDataset` provides."""

    def __len__(self) -> int: ...
    def tokens(self, i: int) -> np.ndarray: ...
    def split(self, name: str) -> list[int]: ...
    def prompt_embedding(self, i: int) -> np.ndarray: ...


@dataclass(frozen=True)
class Sample:
    tokens: np.ndarray
    """int64 [S]: model inputs."""
    labels: np.ndarray
    """int64 [S]: next token of each input position, within the same video."""
    loss_mask: np.ndarray
    """float32 [S]: 1 where the label is a video token of this sample."""
    context: np.ndarray | None
    """Video2World: float32 [L, d] prompt embedding."""


class VideoSamples:
    """The samples of one split, checked against the spec's token math when read."""

    def __init__(self, ds: TokenSource, tm: TokenMath, split: str = "train", *, where: str = "dataset",
                 context_dim: int | None = None) -> None:
        self.ds, self.tm, self.where, self.context_dim = ds, tm, where, context_dim
        self.ids = ds.split(split)
        if not self.ids:
            raise HarnessError(f"{where}: split {split!r} is empty; check data.split and the number of videos")

    def __len__(self) -> int:
        return len(self.ids)

    def sample(self, k: int) -> Sample:
        doc = self.ids[k]
        toks = np.asarray(self.ds.tokens(doc), dtype=np.int64)
        tm = self.tm
        if len(toks) != tm.sample_length:
            raise HarnessError(f"{self.where}: document {doc} has {len(toks):,} tokens; grid {tm.grid} needs "
                               f"{tm.sample_length:,} (was it tokenized with another video/tokenizer setting?)")
        mask = np.ones(len(toks) - 1, dtype=np.float32)
        context = None
        if tm.video2world:
            if toks[0] != BOV_ID:
                raise HarnessError(f"{self.where}: document {doc} does not start with BOV ({BOV_ID})")
            mask[tm.video_tokens:] = 0.0  # labels 1..grid are the video; later labels are PAD
            context = np.asarray(self.ds.prompt_embedding(doc), dtype=np.float32)
            if self.context_dim is not None and (context.ndim != 2 or context.shape[1] != self.context_dim):
                raise HarnessError(f"{self.where}: prompt embedding of document {doc} has shape {context.shape}; "
                                   f"the model's cross-attention needs [tokens, {self.context_dim}] "
                                   f"(model.text_encoder must match model.preset)")
        return Sample(toks[:-1], toks[1:], mask, context)


@lru_cache(maxsize=4)
def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def global_batch(step: int, gbs: int, n: int, seed: int) -> list[int]:
    """Split positions of the `gbs` samples of optimizer step `step` (0-based): consecutive slices of per-epoch
    permutations, crossing epoch boundaries."""
    out = []
    for j in range(step * gbs, (step + 1) * gbs):
        epoch, pos = divmod(j, n)
        out.append(int(epoch_order(n, seed, epoch)[pos]))
    return out


def micro_batch(step: int, micro: int, *, gbs: int, mbs: int, dp: int, dp_rank: int, n: int, seed: int) -> list[int]:
    """The `mbs` split positions that DP rank `dp_rank` consumes in micro-batch `micro` of step `step`."""
    batch = global_batch(step, gbs, n, seed)
    start = (micro * dp + dp_rank) * mbs
    return batch[start:start + mbs]


def collate(samples: list[Sample], device: torch.device | str, dtype: torch.dtype) -> dict[str, Any]:
    out: dict[str, Any] = {
        "tokens": torch.from_numpy(np.stack([s.tokens for s in samples])).to(device),
        "labels": torch.from_numpy(np.stack([s.labels for s in samples])).to(device),
        "loss_mask": torch.from_numpy(np.stack([s.loss_mask for s in samples])).to(device),
    }
    if samples[0].context is not None:
        out["context"] = context_batch([s.context for s in samples], device, dtype)  # type: ignore[misc]  # all or none have one
    return out


def context_batch(embeddings: list[np.ndarray], device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """Video2World cross-attention context [b, L, d] for training and generation alike: every prompt-embedding
    row (L = 512, `harness.lib.prompts`), the padding rows zero, and no mask, as upstream (NVIDIA/Cosmos
    archived-ces2025, cosmos1/models/autoregressive/): NeMo training passes only `context`
    (nemo/cosmos_video2world.py:380-383), so the layer's `context_mask` stays None (:204) and reaches the
    cross-attention as its mask (:245-248), whose spec is `no_mask` (:309); NeMo inference likewise (nemo/inference/
    inference_controller.py:60); native inference sets an all-ones mask (inference/world_generation_pipeline.py:801).
    The padding rows are zeroed by the T5 wrapper (models/common/t5_text_encoder.py:105-106), here by
    `harness.lib.prompts.encode`."""
    return torch.from_numpy(np.stack([np.asarray(e, dtype=np.float32) for e in embeddings])).to(device, dtype)

