"""Which model files a run needs (its asset roles) and whether a spec value names a local directory or an HF
repo. Both the login node (`harness doctor`) and the stage-assets task ask, so the answer has one home here."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from harness.core.sections import RunSpec

CHECKPOINT_FILES = ("nemo/*", "*.json", "weights/*", "context/*", ".metadata", "*.distcp", "common.pt")
"""A Cosmos repo's NeMo 2 folder (`nemo/`), or a repo that is itself one (weights under `weights/` or at its top);
never the native `model.pt` next to it."""
T5_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model")


@dataclass(frozen=True)
class Role:
    name: str
    source: str
    """HF repo id or local directory, as written in the spec."""
    patterns: tuple[str, ...]
    """What to download from the repo (the DV repos also hold a large autoencoder.jit we never use)."""
    required: tuple[tuple[str, ...], ...]
    """Each entry: at least one of these glob patterns must match a file in the resolved directory."""


def roles(spec: RunSpec) -> list[Role]:
    """The encoder and decoder always; the pretrained checkpoint when one is named; T5 for Video2World."""
    out = [Role("encoder", spec.tokenizer.encoder, ("encoder.jit", "*.json"), (("encoder.jit",),)),
           Role("decoder", spec.tokenizer.decoder, ("decoder.jit", "*.json"), (("decoder.jit",),))]
    if spec.model.checkpoint:
        out.append(Role("checkpoint", spec.model.checkpoint, CHECKPOINT_FILES, ()))
    if spec.video2world:
        out.append(Role("text_encoder", spec.model.text_encoder,
                        T5_FILES + ("*.safetensors", "*.safetensors.index.json"),
                        (("config.json",), ("tokenizer.json", "spiece.model"),
                         ("*.safetensors", "pytorch_model*.bin"))))
    return out


REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9._-]+$")
"""A Hugging Face repo id as the hub accepts it: owner/name of letters, digits, '.', '_' and '-'."""


def source_problem(source: str) -> str:
    """Why a spec's asset value is neither a local directory nor a repo id ('' when it is one of them)."""
    if not source.strip():
        return "is empty: give an HF repo id (owner/name) or a local directory"
    if is_local(source) or REPO_ID.match(source):
        return ""
    return "is neither an HF repo id (owner/name: letters, digits, '.', '_', '-') nor a local directory"


def is_local(source: str) -> bool:
    """A path-looking value (or an existing directory of that name) is used in place; anything else is a repo id."""
    return source.startswith(("/", ".", "~")) or Path(source).expanduser().is_dir()


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as the hub client reads it: the cache is all there is."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
