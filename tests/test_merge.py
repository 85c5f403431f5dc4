"""merge: shard verification, deterministic split, summary, and the dataset reader finetune uses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from fixtures_data import dataset_bytes, session_base_run, summary
from harness.core.errors import HarnessError
from harness.core.paths import RunPaths
from harness.launch.worker import load_run_spec, worker
from harness.lib.inputs import InputItem
from harness.stages import dataset
from harness.stages.inputs import read_inputs, write_inputs
from harness.stages.merge import make_split


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> RunPaths:
    return session_base_run(tmp_path_factory)


@pytest.fixture()
def copy(base_run: RunPaths, tmp_path: Path) -> RunPaths:
    """A private copy of the clean run (shards, assets.json, inputs) to break things in."""
    shutil.copytree(base_run.root, tmp_path / "run", ignore=shutil.ignore_patterns("dataset", "done"))
    return RunPaths(tmp_path / "run")


@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 12, 40, 1001])
@pytest.mark.parametrize("weights", [(10, 1, 1), (8, 1, 3), (1, 0, 0), (1, 1, 0), (3, 0, 1)])
def test_split_is_a_seeded_partition_by_weights(n: int, weights: tuple[int, int, int]) -> None:
    split = make_split(n, weights, seed=5)
    assert split == make_split(n, weights, seed=5)
    flat = sorted(i for k in dataset.SPLITS for i in split[k])
    assert flat == list(range(n)) and all(split[k] == sorted(split[k]) for k in dataset.SPLITS)
    if n:
        assert split["train"], "train is never empty when there are videos"
    for k, w in zip(("val", "test"), weights[1:]):
        if w == 0:
            assert not split[k]
        elif n >= 3:
            assert split[k], f"a positive {k} weight gets at least one video"
    if n >= 1000:
        total = sum(weights)
        assert all(abs(len(split[k]) - n * w / total) <= 1 for k, w in zip(dataset.SPLITS, weights))


def test_split_depends_on_the_seed() -> None:
    assert make_split(100, (8, 1, 1), 1) != make_split(100, (8, 1, 1), 2)


def test_merged_dataset_is_one_indexed_dataset_of_all_shards(base_run: RunPaths) -> None:
    merged = IndexedDataset(str(base_run.dataset_prefix))
    shards = [IndexedDataset(str(base_run.shard_prefix(s))) for s in range(4)]
    assert merged.index.dtype == np.uint16
    flat = [sh[i] for sh in shards for i in range(len(sh))]
    assert len(merged) == len(flat) == 40
    assert all(np.array_equal(merged[i], flat[i]) for i in range(40))
    split = json.loads(base_run.dataset_split.read_text())
    assert split["seed"] == 7 and split["weights"] == [8, 1, 1]
    s = summary(base_run)
    for i, doc in enumerate(s["documents"]):
        assert doc["doc"] == i and doc["sha256"] == __import__("hashlib").sha256(merged[i].tobytes()).hexdigest()


def test_reader_api(base_run: RunPaths) -> None:
    ds = dataset.open_dataset(base_run)
    assert len(ds) == 40 and not ds.video2world
    assert sorted(ds.split("train") + ds.split("val") + ds.split("test")) == list(range(40))
    assert ds.tokens(3).dtype == np.int64 and ds.document(3)["path"].endswith(".mp4")
    with pytest.raises(HarnessError, match="split 'dev' unknown"):
        ds.split("dev")
    with pytest.raises(HarnessError, match="not a Video2World dataset"):
        ds.prompt_embedding(0)


def test_reader_on_an_unmerged_run_names_the_missing_file(copy: RunPaths) -> None:
    with pytest.raises(HarnessError, match="summary.json: missing; run the merge stage first"):
        dataset.open_dataset(copy)


def test_merge_is_repeatable(copy: RunPaths, base_run: RunPaths) -> None:
    merge = worker("merge")
    spec = load_run_spec(copy)
    merge(spec, 0, copy)
    first = dataset_bytes(copy)
    merge(spec, 0, copy)
    assert dataset_bytes(copy) == first == dataset_bytes(base_run)
    assert not [p for p in copy.dataset_prefix.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("damage,message", [
    ("manifest", r"shard 2: manifest shard-00002.manifest.json missing"),
    ("idx", r"shard 2: idx file .*shard-00002.idx missing"),
    ("bin", r"shard 2: bin file .*shard-00002.bin does not match its manifest checksum"),
])
def test_merge_names_the_unusable_shard(copy: RunPaths, damage: str, message: str) -> None:
    if damage == "manifest":
        copy.shard_manifest(2).unlink()
    elif damage == "idx":
        Path(f"{copy.shard_prefix(2)}.idx").unlink()
    else:
        with open(f"{copy.shard_prefix(2)}.bin", "r+b") as f:
            f.seek(7)
            f.write(b"\x01")
    with pytest.raises(HarnessError, match=message):
        worker("merge")(load_run_spec(copy), 0, copy)
    assert not copy.dataset_summary.exists()


def test_merge_refuses_inputs_no_shard_accounts_for(copy: RunPaths) -> None:
    items = read_inputs(copy)
    write_inputs(copy, items + [InputItem(len(items), "/late/arrival.mp4")])
    with pytest.raises(HarnessError, match="1 inputs are in no shard manifest.*arrival.mp4"):
        worker("merge")(load_run_spec(copy), 0, copy)


@pytest.mark.timeout(240)
def test_more_shards_than_inputs(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Shards with nothing to do still write a (empty) verified shard, and the merge joins them."""
    from fixtures_data import make_run, make_spec, run_all, session_assets, session_videos

    assets, videos = session_assets(tmp_path_factory), session_videos(tmp_path_factory)
    lines = [json.dumps({"prompt": f"clip {i}", "visual_input": str(videos / f"clip_{i:03d}.mp4")}) for i in (0, 1)]
    (tmp_path / "two.jsonl").write_text("\n".join(lines) + "\n")
    paths = make_run(tmp_path / "run", make_spec(assets, jsonl=str(tmp_path / "two.jsonl"), shards=3))
    run_all(paths, 3)
    assert json.loads(paths.shard_manifest(2).read_text())["videos"] == []
    ds = dataset.open_dataset(paths)
    assert len(ds) == 2 and ds.prompt_embedding(1).shape == (512, 32)
    assert summary(paths)["splits"]["train"] >= 1


def test_merge_fails_when_no_input_tokenized(copy: RunPaths) -> None:
    """Every input skipped (undecodable, empty): merge once completed with an empty dataset, and finetune then
    failed in megatron's reader with "cannot mmap an empty file" naming nothing."""
    from harness.core.atomic import atomic_write_json

    for s in range(load_run_spec(copy).tokenize.shards):
        m = json.loads(copy.shard_manifest(s).read_text())
        m["skipped"] = [dict(v, kind="unreadable", reason="no video stream") for v in m["videos"]]
        m["videos"] = []
        atomic_write_json(copy.shard_manifest(s), m)
    with pytest.raises(HarnessError, match=r"merge: none of the inputs tokenized \(\d+ unreadable\)"):
        worker("merge")(load_run_spec(copy), 0, copy)
    assert not copy.dataset_summary.exists()
