"""Token sampling for generation: temperature (0 = greedy) and nucleus top-p in fp32, from a seeded
torch.Generator, so a run's outputs are reproducible; under tensor parallelism every rank sees the same
gathered logits and the same generator state, hence samples the same token without a broadcast.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    """0 = greedy (argmax)."""
    top_p: float = 1.0
    seed: int = 0


def sample(logits: torch.Tensor, s: Sampling, generator: torch.Generator | None) -> torch.Tensor:
    """[b, V] logits -> [b] token ids. Draws with the exponential-race trick (argmax of p / Exp(1) is a
    sample of p): no normalisation, no multinomial, and the same kernels every step."""
    if s.temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / s.temperature, dim=-1)
    if s.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(dim=-1) - sorted_p >= s.top_p  # keep the smallest prefix whose mass reaches top_p
        drop[:, 0] = False
        race = sorted_p.masked_fill_(drop, 0.0) / torch.empty_like(sorted_p).exponential_(generator=generator)
        return order.gather(-1, race.argmax(dim=-1, keepdim=True)).squeeze(-1)
    return (probs / torch.empty_like(probs).exponential_(generator=generator)).argmax(dim=-1)


def make_generator(device: torch.device | str, seed: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g
