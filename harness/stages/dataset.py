"""The token dataset on disk: file names, checksums, and the reader the finetune and infer stages use.

Format (written by tokenize per shard, joined by merge; see harness.stages.merge for the full layout):
- `<prefix>.bin/.idx`: megatron-core indexed dataset, dtype uint16, one document (= one sequence) per video.
- `<prefix>.prompts.npy` float32 [N, 512, d] and `<prefix>.prompt_lengths.npy` int32 [N]: Video2World only,
  row i belongs to document i.
Token ids are exact integers end to end: int64 in memory, uint16 on disk, int64 again from `tokens(i)`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.atomic import read_json
from harness.core.errors import HarnessError
from harness.core.paths import RunPaths

UINT16_LIMIT = 65_536
SPLITS = ("train", "val", "test")


def prompts_path(prefix: Path) -> Path:
    return Path(f"{prefix}.prompts.npy")


def prompt_lengths_path(prefix: Path) -> Path:
    return Path(f"{prefix}.prompt_lengths.npy")


def shard_files(paths: RunPaths, shard: int, video2world: bool) -> dict[str, Path]:
    """Every data file of one shard, by role; the manifest checksums exactly these."""
    prefix = paths.shard_prefix(shard)
    files = {"bin": Path(f"{prefix}.bin"), "idx": Path(f"{prefix}.idx")}
    if video2world:
        files["prompts"] = prompts_path(prefix)
        files["prompt_lengths"] = prompt_lengths_path(prefix)
    return files


def to_uint16(tokens: np.ndarray) -> np.ndarray:
    """The only narrowing of token ids: integers in, checked against the uint16 range, never via a float."""
    if tokens.dtype.kind not in "iu":
        raise TypeError(f"token ids must be integers, got {tokens.dtype}")
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= UINT16_LIMIT):
        raise ValueError(f"token ids outside [0, {UINT16_LIMIT}): min {tokens.min()}, max {tokens.max()}")
    return tokens.astype(np.uint16)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_record(path: Path) -> dict[str, Any]:
    return {"name": path.name, "size": path.stat().st_size, "sha256": sha256_file(path)}


def verify_shard(paths: RunPaths, shard: int) -> str | None:
    """None when the shard's manifest exists and every file it lists matches; else why not."""
    manifest = paths.shard_manifest(shard)
    if not manifest.is_file():
        return f"shard {shard}: manifest {manifest.name} missing (tokenize[{shard}] did not finish)"
    try:
        data = read_json(manifest)
        records = data["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"shard {shard}: manifest {manifest} unreadable ({e.__class__.__name__})"
    for role, rec in records.items():
        path = manifest.parent / rec["name"]
        if not path.is_file():
            return f"shard {shard}: {role} file {path} missing"
        if path.stat().st_size != rec["size"] or sha256_file(path) != rec["sha256"]:
            return f"shard {shard}: {role} file {path} does not match its manifest checksum"
    return None


@dataclass
class TokenDataset:
    """Merged dataset of a run: document i = video i of summary["documents"]."""

    prefix: Path
    summary: dict[str, Any]
    splits: dict[str, list[int]]
    _index: Any = field(repr=False)
    _prompts: np.ndarray | None = field(default=None, repr=False)
    _prompt_lengths: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self._index)

    def tokens(self, i: int) -> np.ndarray:
        """The stored sample as int64: video tokens in T,H,W order; Video2World: [BOV] + video + [PAD] x 64."""
        return np.asarray(self._index.get(i), dtype=np.int64)

    def split(self, name: str) -> list[int]:
        if name not in self.splits:
            raise HarnessError(f"split {name!r} unknown; choose from {', '.join(SPLITS)}")
        return list(self.splits[name])

    def document(self, i: int) -> dict[str, Any]:
        """Where document i came from: input index, path, token count, sha256 of its uint16 bytes."""
        return dict(self.summary["documents"][i])

    @property
    def video2world(self) -> bool:
        return self._prompts is not None

    def prompt_embedding(self, i: int) -> np.ndarray:
        """float32 [512, d]; rows past prompt_length(i) are zero."""
        if self._prompts is None:
            raise HarnessError(f"{self.prefix}: not a Video2World dataset (no prompt embeddings)")
        return np.asarray(self._prompts[i], dtype=np.float32)

    def prompt_length(self, i: int) -> int:
        if self._prompt_lengths is None:
            raise HarnessError(f"{self.prefix}: not a Video2World dataset (no prompt embeddings)")
        return int(self._prompt_lengths[i])


def merged_files(paths: RunPaths) -> tuple[Path, ...]:
    prefix = paths.dataset_prefix
    return paths.dataset_summary, paths.dataset_split, Path(f"{prefix}.bin"), Path(f"{prefix}.idx")


def merged_problem(paths: RunPaths) -> str | None:
    """None when merge's outputs are all there and the token file holds the summary's token count (a cheap check,
    no checksums: what a token cache needs before it hands an entry to another run); else what is wrong."""
    missing = [p for p in merged_files(paths) if not p.is_file()]
    if missing:
        return f"{missing[0]} missing"
    try:
        summary = read_json(paths.dataset_summary)
        want = int(summary["tokens"]) * np.dtype(summary.get("dtype", "uint16")).itemsize
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{paths.dataset_summary} unreadable ({e.__class__.__name__})"
    got = Path(f"{paths.dataset_prefix}.bin").stat().st_size
    if got != want:
        return f"{paths.dataset_prefix}.bin holds {got} bytes, the summary's {summary['tokens']} tokens take {want}"
    if summary.get("recipe") == "video2world":
        gone = [p for p in (prompts_path(paths.dataset_prefix), prompt_lengths_path(paths.dataset_prefix))
                if not p.is_file()]
        if gone:
            return f"{gone[0]} missing"
    return None


def open_dataset(paths: RunPaths) -> TokenDataset:
    """The merged dataset of a run (after merge); memory-mapped, cheap to open in every rank."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    prefix = paths.dataset_prefix
    for p in merged_files(paths):
        if not p.is_file():
            raise HarnessError(f"{p}: missing; run the merge stage first (a token-cache entry: `harness cache rm` "
                               "it, and the next submit builds it again)")
    summary = read_json(paths.dataset_summary)
    split = json.loads(paths.dataset_split.read_text())
    index = IndexedDataset(str(prefix), mmap=True)
    prompts = lengths = None
    if summary.get("recipe") == "video2world":
        prompts = np.load(prompts_path(prefix), mmap_mode="r")
        lengths = np.load(prompt_lengths_path(prefix))
        if len(prompts) != len(index) or len(lengths) != len(index):
            raise HarnessError(f"{prompts_path(prefix)}: {len(prompts)} prompt rows for {len(index)} documents")
    return TokenDataset(prefix, summary, {k: list(split[k]) for k in SPLITS}, index, prompts, lengths)
