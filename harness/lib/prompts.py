"""Video2World prompt embeddings: T5 encoder outputs padded to 512 tokens, as the public recipe feeds its
cross-attention. Shared by tokenize (training data) and infer (generation prompts) so both see the same
padding, truncation and zeroed pad positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from harness.core.models import PROMPT_ROWS

MAX_LENGTH = PROMPT_ROWS
"""Prompt tokens per embedding (T5 positions after padding/truncation)."""


@dataclass(frozen=True)
class TextEncoder:
    tokenizer: Any
    model: Any
    device: torch.device

    @property
    def dim(self) -> int:
        return int(self.model.config.d_model)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def load(directory: str | Path, device: torch.device, dtype_name: str = "fp32") -> TextEncoder:
    """T5 encoder + tokenizer from a local directory (never the network), in the dtype the spec names: fp32 by
    default because upstream encodes its training prompts and its inference prompts with T5-11B in fp32, and the
    model learnt cross-attention over those embeddings."""
    import transformers
    from transformers import AutoTokenizer, T5EncoderModel

    dtype = DTYPES[dtype_name]
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    key = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"  # renamed in 4.56; containers ship older
    tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    model = T5EncoderModel.from_pretrained(str(directory), local_files_only=True, **{key: dtype}).to(device).eval()
    return TextEncoder(tokenizer, model, device)


@torch.no_grad()
def encode(encoder: TextEncoder, prompts: list[str]) -> tuple[NDArray[Any], NDArray[Any]]:
    """(float32 [N, 512, d] with pad positions zeroed, int32 [N] prompt lengths in tokens)."""
    if not prompts:
        return np.zeros((0, MAX_LENGTH, encoder.dim), np.float32), np.zeros((0,), np.int32)
    batch = encoder.tokenizer(prompts, return_tensors="pt", truncation=True, padding="max_length",
                              max_length=MAX_LENGTH)
    ids = batch["input_ids"].to(encoder.device)
    mask = batch["attention_mask"].to(encoder.device)
    hidden = encoder.model(input_ids=ids, attention_mask=mask).last_hidden_state
    hidden = hidden.float() * mask.unsqueeze(-1).float()
    return hidden.cpu().numpy(), mask.sum(dim=1).to(torch.int32).cpu().numpy()


def token_counts(encoder: TextEncoder, prompts: list[str]) -> list[int]:
    """Each prompt's length in T5 tokens before the cut to MAX_LENGTH (end-of-sequence token included)."""
    if not prompts:
        return []
    return [len(ids) for ids in encoder.tokenizer(prompts, truncation=False)["input_ids"]]


def note(text: str, tokens: int) -> str:
    """What a user should know about a prompt the model will see: '' when nothing. Both cases are accepted, as
    upstream accepts them, but never silently: a cut prompt loses its end, an empty one conditions on nothing."""
    if not text.strip():
        return "empty prompt: the video is conditioned on no text"
    if tokens > MAX_LENGTH:
        return f"prompt of {tokens:,} T5 tokens cut to the first {MAX_LENGTH}"
    return ""
