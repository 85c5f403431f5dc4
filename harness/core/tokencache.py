"""The token cache's pure half: which key a run's tokens have, and what a submit does with an entry of that key.

A key is the SHA-256 of everything that decides the tokens and the merged dataset (`key_inputs`): the input list
(each file's path, size and mtime, or the manifest's / jsonl's text), the encoder's identity (repo id and revision,
or a hash of a local `encoder.jit`), the compression, the video size and frames, the resize method, the recipe
(with the prompt encoder, its dtype and, for a local folder, its files for Video2World), the split weights, the
seed, the shard layout and `TOKENIZE_FORMAT`. The run's name, its training, generation and evaluation keys are not
in it: a sweep over the learning rate reuses one entry. Gathering the facts (stat, hashing) is `harness.ops.cache`'s.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from harness.core import spec as spec_mod

TOKENIZE_FORMAT = 1
"""Bump when tokenize or merge would write other files for the same inputs: every older entry stops matching."""

Mode = Literal["reuse", "build", "wait"]


def key_inputs(spec: spec_mod.RunSpec, inputs_digest: str, encoder_id: str, shards: int,
               text_encoder_id: str = "") -> dict[str, Any]:
    """The key's inputs in clear (entry.json keeps them): `inputs_digest` sums the input list's facts,
    `encoder_id` names the encoder's weights, `shards` is the planned tokenize task count (the entry's layout),
    `text_encoder_id` (Video2World) the prompt encoder's files where it is a local folder."""
    v = spec.video
    d: dict[str, Any] = {
        "format": TOKENIZE_FORMAT, "inputs": inputs_digest, "encoder": encoder_id,
        "compression": list(spec.tokenizer.compression), "video": [v.width, v.height, v.num_frames],
        "resize": v.resize, "recipe": spec.run.recipe, "split": list(spec.data.split), "seed": spec.run.seed,
        "shards": shards, "encoder_on": encoder_device(spec)}
    if spec.video2world:
        t5 = spec.model.text_encoder
        d["text_encoder"] = [t5, spec.model.text_encoder_dtype, spec.assets.revisions.get(t5, "main"),
                             *([text_encoder_id] if text_encoder_id else [])]
    return d


def encoder_device(spec: spec_mod.RunSpec) -> str:
    """Where tokenize encodes, as far as the spec says: the DV encoder runs in bf16 on a GPU and in fp32 on a
    CPU (upstream's dtypes), and the tokens may differ by a code here and there, so the two are different
    entries. `auto` encodes on the GPU a task is given."""
    t = spec.tokenize
    return "cuda" if t.device == "cuda" or (t.device == "auto" and t.gpus_per_node > 0) else "cpu"


def key_of(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class CacheUse:
    """What a run does with its cache entry: `reuse` a complete one, `build` it (claiming it), or `wait` on the
    submit that is building it (its finetune waits on that run's merge)."""

    key: str
    mode: Mode
    builder: str
    """Run id of the entry's builder: the complete entry's, the live claim's; '' where this run builds."""
    stale: str = ""
    """Why an earlier build was found dead and is redone ('' when there was none)."""

    @property
    def key16(self) -> str:
        return self.key[:16]

    def line(self) -> str:
        """`harness plan`'s line for tokenize and merge."""
        if self.mode == "reuse":
            return f"tokenize: reused {self.key16} (built by {self.builder or 'unknown run'})"
        if self.mode == "wait":
            return f"tokenize: waits on {self.builder}'s build of cache entry {self.key16}"
        return f"tokenize: building into cache {self.key16}" + (f" ({self.stale}: rebuilt)" if self.stale else "")


def decide(key: str, complete: bool, claimant: str, claim_live: bool, built_by: str) -> CacheUse:
    """A complete entry is reused; a live claim is waited on; anything else (no entry, a partial one, a claim
    whose builder is dead) is built afresh: a partial entry is never read."""
    if complete:
        return CacheUse(key, "reuse", built_by or claimant)
    if claimant and claim_live:
        return CacheUse(key, "wait", claimant)
    stale = f"the build by {claimant} died" if claimant else ""
    return CacheUse(key, "build", "", stale)
