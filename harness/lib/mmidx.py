"""megatron-core's indexed dataset (`<prefix>.bin` + `<prefix>.idx`, what its `IndexedDataset` reads for
training), written with numpy alone. The tokenize and merge tasks write one per shard / per run: importing
megatron-core's own builder runs its package `__init__` (tensor_parallel, torch.distributed.tensor), ~1.6 s of
every such task (merge needs no torch otherwise), for a format of a few fields. Readers stay megatron-core's;
tests/test_mmidx.py checks the bytes against its builder.

`.bin`: each sequence's tokens back to back. `.idx`, little-endian: the magic b"MMIDIDX\\x00\\x00", version 1
(u64), the token dtype's code (u8), the sequence count (u64), the document count (u64; the boundaries below,
a leading 0 included), then the sequence lengths (int32), each sequence's byte offset in the `.bin` (int64) and
the document boundaries as sequence indices (int64). A multimodal dataset's per-sequence modes follow; the
harness writes none.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_CODES = {np.dtype(t): c for t, c in ((np.uint8, 1), (np.int8, 2), (np.int16, 3), (np.int32, 4), (np.int64, 5),
                                           (np.float64, 6), (np.float32, 7), (np.uint16, 8))}
_HEAD = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequence count, document count


def read_index(idx_path: str | Path) -> tuple[np.dtype[Any], npt.NDArray[np.int32], npt.NDArray[np.int64]]:
    """(token dtype, sequence lengths, document boundaries) of an `.idx` this module (or megatron-core) wrote."""
    raw = Path(idx_path).read_bytes()
    magic, version, code, sequences, documents = _HEAD.unpack_from(raw)
    dtypes = {c: t for t, c in DTYPE_CODES.items()}
    if magic != MAGIC or version != VERSION or code not in dtypes:
        raise ValueError(f"{idx_path}: not an indexed-dataset index (magic {magic!r}, version {version}, "
                         f"dtype code {code})")
    lengths = np.frombuffer(raw, np.int32, sequences, _HEAD.size)
    bounds = np.frombuffer(raw, np.int64, documents, _HEAD.size + sequences * 4 + sequences * 8)
    return dtypes[code], lengths, bounds


class Builder:
    """Appends documents (or whole datasets) to a `.bin`, then writes the `.idx` (`finalize`). Holds the open
    `.bin` and the growing index, so unlike the harness' records it is not a frozen dataclass."""

    def __init__(self, bin_path: str | Path, dtype: npt.DTypeLike = np.uint16) -> None:
        self.dtype = np.dtype(dtype)
        if self.dtype not in DTYPE_CODES:
            raise ValueError(f"dtype {self.dtype}: an indexed dataset holds one of {sorted(map(str, DTYPE_CODES))}")
        self.data = open(bin_path, "wb")  # noqa: SIM115 - closed by finalize
        self.lengths: list[int] = []
        self.bounds: list[int] = [0]

    def add_document(self, tokens: npt.ArrayLike, lengths: list[int]) -> None:
        """One document of `len(lengths)` sequences (their tokens concatenated in `tokens`)."""
        self.data.write(np.asarray(tokens, dtype=self.dtype).tobytes(order="C"))
        self.lengths.extend(int(n) for n in lengths)
        self.bounds.append(len(self.lengths))

    def add_index(self, prefix: str | Path) -> None:
        """Append the dataset at `prefix` (.bin/.idx) whole: its sequences, then its documents."""
        dtype, lengths, bounds = read_index(f"{prefix}.idx")
        if dtype != self.dtype:
            raise ValueError(f"{prefix}.idx: tokens of {dtype}, this dataset's are {self.dtype}")
        offset = len(self.lengths)
        self.lengths.extend(lengths.tolist())
        self.bounds.extend((offset + bounds[1:]).tolist())
        with open(f"{prefix}.bin", "rb") as f:
            shutil.copyfileobj(f, self.data)

    def finalize(self, idx_path: str | Path) -> None:
        self.data.close()
        lengths = np.asarray(self.lengths, dtype=np.int32)
        pointers = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        with open(idx_path, "wb") as f:
            f.write(_HEAD.pack(MAGIC, VERSION, DTYPE_CODES[self.dtype], len(lengths), len(self.bounds)))
            f.write(lengths.tobytes(order="C"))
            f.write(pointers.tobytes(order="C"))
            f.write(np.asarray(self.bounds, dtype=np.int64).tobytes(order="C"))
