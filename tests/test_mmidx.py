"""`harness.lib.mmidx` writes megatron-core's indexed dataset byte for byte as megatron-core's own builder does,
for shards (documents added one by one) and for a merge (shards appended whole), and megatron-core reads it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.lib import mmidx

SHARDS = [[np.arange(5), np.arange(7) * 9_000], [], [np.array([65_535, 0, 64_002])]]
"""Token documents per shard: an empty shard included, token ids up to uint16's top."""


def _ours(tmp: Path) -> Path:
    for s, docs in enumerate(SHARDS):
        b = mmidx.Builder(tmp / f"s{s}.bin", dtype=np.uint16)
        for d in docs:
            b.add_document(d, [d.size])
        b.finalize(tmp / f"s{s}.idx")
    merged = mmidx.Builder(tmp / "all.bin", dtype=np.uint16)
    for s in range(len(SHARDS)):
        merged.add_index(tmp / f"s{s}")
    merged.finalize(tmp / "all.idx")
    return tmp


def _megatron(tmp: Path) -> Path:
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    for s, docs in enumerate(SHARDS):
        b = IndexedDatasetBuilder(str(tmp / f"s{s}.bin"), dtype=np.uint16)
        for d in docs:
            b.add_document(torch.from_numpy(d), [d.size])
        b.finalize(str(tmp / f"s{s}.idx"))
    merged = IndexedDatasetBuilder(str(tmp / "all.bin"), dtype=np.uint16)
    for s in range(len(SHARDS)):
        merged.add_index(str(tmp / f"s{s}"))
    merged.finalize(str(tmp / "all.idx"))
    return tmp


def test_bytes_equal_megatron_cores_builder_and_it_reads_them(tmp_path: Path) -> None:
    for d in ("ours", "theirs"):
        (tmp_path / d).mkdir()
    ours, theirs = _ours(tmp_path / "ours"), _megatron(tmp_path / "theirs")
    names = sorted(p.name for p in theirs.iterdir())
    assert names == sorted(p.name for p in ours.iterdir()) and len(names) == 8
    for name in names:
        assert (ours / name).read_bytes() == (theirs / name).read_bytes(), name

    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(str(ours / "all"))
    want = [d for docs in SHARDS for d in docs]
    assert len(ds) == len(want) and all(np.array_equal(ds[i], w.astype(np.uint16)) for i, w in enumerate(want))
    dtype, lengths, bounds = mmidx.read_index(ours / "all.idx")
    assert dtype == np.uint16 and lengths.tolist() == [5, 7, 3] and bounds.tolist() == [0, 1, 2, 3]


def test_refusals(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="an indexed dataset holds one of"):
        mmidx.Builder(tmp_path / "x.bin", dtype=np.uint32)
    (tmp_path / "bad.idx").write_bytes(b"NOTANIDX" + bytes(40))
    with pytest.raises(ValueError, match="not an indexed-dataset index"):
        mmidx.read_index(tmp_path / "bad.idx")
    b = mmidx.Builder(tmp_path / "i32.bin", dtype=np.int32)
    b.finalize(tmp_path / "i32.idx")
    with pytest.raises(ValueError, match="tokens of int32"):
        mmidx.Builder(tmp_path / "u16.bin").add_index(tmp_path / "i32")
