"""Input discovery: deterministic order, every bad jsonl entry reported by name, never an exception; the run
directory's copy of the list; the shard assignment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures_data import make_spec
from harness.core.errors import HarnessError
from harness.core.paths import RunPaths
from harness.lib import inputs as listing
from harness.ops import inputs
from harness.stages import inputs as run_inputs


def _spec(**data: str):  # type: ignore[no-untyped-def]
    return make_spec({"hf_home": "/nonexistent"}, **data)


def test_directory_listing_is_recursive_sorted_and_case_insensitive(tmp_path: Path) -> None:
    for rel in ["b/z.MP4", "a.mp4", "b/a.mov", "c/d/e.webm", "notes.txt", "x.mp4.bak", "B.mkv"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    items = inputs.discover(_spec(videos=str(tmp_path)))
    rels = [Path(it.path).relative_to(tmp_path).as_posix() for it in items]
    assert rels == ["B.mkv", "a.mp4", "b/a.mov", "b/z.MP4", "c/d/e.webm"]
    assert [it.index for it in items] == list(range(5))
    assert all(it.error is None and it.prompt is None and Path(it.path).is_absolute() for it in items)


def test_missing_directory_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="data.videos.*not a directory"):
        inputs.discover(_spec(videos=str(tmp_path / "nope")))


def test_jsonl_problems_are_items_named_by_line(tmp_path: Path) -> None:
    (tmp_path / "clips").mkdir()
    for n in ("a.mp4", "b.mp4"):
        (tmp_path / "clips" / n).write_bytes(b"x")
    lines = [
        json.dumps({"prompt": "one", "visual_input": "clips/a.mp4"}),        # relative to the jsonl
        '{"prompt": "broken", "visual_input": ',                              # broken JSON
        json.dumps({"visual_input": "clips/b.mp4"}),                          # missing prompt
        json.dumps({"prompt": "gone", "visual_input": "clips/missing.mp4"}),  # missing file
        "",                                                                   # blank lines are ignored
        json.dumps({"prompt": "again", "visual_input": str(tmp_path / "clips/a.mp4")}),  # duplicate
        json.dumps(["not", "an", "object"]),
        json.dumps({"prompt": "two", "visual_input": "clips/b.mp4"}),
        json.dumps({"prompt": 3, "visual_input": "clips/b.mp4"}),
    ]
    jl = tmp_path / "data.jsonl"
    jl.write_text("\n".join(lines) + "\n")
    items = inputs.discover(_spec(jsonl=str(jl)))
    assert [it.index for it in items] == list(range(8))
    ok = [it for it in items if it.error is None]
    assert [(Path(it.path).name, it.prompt) for it in ok] == [("a.mp4", "one"), ("b.mp4", "two")]
    assert ok[0].path == str(tmp_path / "clips" / "a.mp4")
    errors = {it.name: it.error for it in items if it.error}
    assert errors["data.jsonl:2"].startswith("line 2: not valid JSON")
    assert errors["data.jsonl:3"] == "line 3: missing key: prompt (each line needs prompt and visual_input)"
    assert errors["missing.mp4"].startswith("line 4: visual_input not found")
    assert errors["a.mp4"] == "line 6: duplicate visual_input: first on line 1; this line and its prompt are left out"
    assert errors["data.jsonl:7"].startswith("line 7: not a JSON object")
    assert errors["data.jsonl:9"].startswith("line 9: bad value")
    kinds = sorted(listing.reason_kind(e) for e in errors.values())
    assert kinds == ["bad value", "duplicate visual_input", "missing key", "not a JSON object", "not valid JSON",
                     "visual_input not found"]


def test_inputs_round_trip_through_the_run_directory(tmp_path: Path) -> None:
    items = [listing.InputItem(0, "/v/a.mp4"), listing.InputItem(1, "/v/b.mp4", "a prompt", None),
             listing.InputItem(2, "x.jsonl:3", None, "line 3: not valid JSON: oops")]
    paths = RunPaths(tmp_path)
    run_inputs.write_inputs(paths, items)
    assert paths.inputs_jsonl == tmp_path / "inputs.jsonl"
    assert run_inputs.read_inputs(paths) == items


def test_reading_a_run_without_inputs_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="inputs.jsonl"):
        run_inputs.read_inputs(RunPaths(tmp_path))


@pytest.mark.parametrize("n,shards", [(0, 1), (1, 4), (40, 4), (41, 3), (7, 7), (5, 9)])
def test_shards_partition_the_inputs(n: int, shards: int) -> None:
    items = [listing.InputItem(i, f"/v/{i}.mp4") for i in range(n)]
    parts = [listing.items_of_shard(items, s, shards) for s in range(shards)]
    assert sorted(it.index for p in parts for it in p) == list(range(n))
    assert max((len(p) for p in parts), default=0) - min(len(p) for p in parts) <= 1
    assert all(listing.shard_of(it.index, shards) == s for s, p in enumerate(parts) for it in p)
    assert all([it.index for it in p] == sorted(it.index for it in p) for p in parts)


def test_a_jsonl_line_that_is_not_utf8_is_that_lines_problem(tmp_path: Path) -> None:
    """One Latin-1 prompt rejected the whole file (doctor and submit: a byte offset, no line); the other lines
    are good prompts."""
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "b.mp4").write_bytes(b"x")
    jl = tmp_path / "data.jsonl"
    jl.write_bytes(b'\xef\xbb\xbf{"prompt": "one", "visual_input": "a.mp4"}\n'
                   b'{"prompt": "caf\xe9", "visual_input": "b.mp4"}\n')
    items = inputs.discover(_spec(jsonl=str(jl)))
    assert [(it.prompt, it.error) for it in items] == [
        ("one", None), (None, "line 2: not UTF-8: byte 0xe9 at column 16")]


def test_a_prompt_with_a_lone_surrogate_is_that_lines_problem(tmp_path: Path) -> None:
    """JSON's "\\ud83d" alone passed plan and doctor, then failed the whole tokenize shard in the T5 tokenizer."""
    (tmp_path / "a.mp4").write_bytes(b"x")
    jl = tmp_path / "data.jsonl"
    jl.write_text('{"prompt": "a red ball \\ud83d", "visual_input": "a.mp4"}\n')
    (item,) = inputs.discover(_spec(jsonl=str(jl)))
    assert item.error == "line 1: bad value: prompt holds a lone surrogate '\\ud83d' at character 12"
