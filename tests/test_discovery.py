"""Input discovery at scale: a scandir walk with no stat per file, data.manifest, and the
tokenize throttle that means what the spec reference says."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import specs
from fixtures_data import SHAPE, make_spec
from harness.core import plan
from harness.core import spec as spec_mod
from harness.core.paths import RunPaths
from harness.launch import slurm
from harness.lib import inputs as listing
from harness.ops import inputs

REPO = Path(__file__).resolve().parents[1]


def _spec(videos: str = "", manifest: str = "") -> spec_mod.RunSpec:
    return make_spec({"hf_home": "/nonexistent"}, videos=videos, data={"manifest": manifest})


def _touch(root: Path, rel: str) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    return p


def test_walk_follows_links_once_and_flags_broken_ones(tmp_path: Path) -> None:
    root = tmp_path / "v"
    for rel in ["a.mp4", "sub/b.MOV", "sub/deep/c.mkv", ".mp4", "x.mp4.bak", "notes.txt"]:
        _touch(root, rel)
    outside = _touch(tmp_path / "elsewhere", "o.mp4")
    _touch(tmp_path / "elsewhere", "d/inner.mp4")
    (root / "link.mp4").symlink_to(outside)                       # a link to a file is an input
    (root / "dirlink").symlink_to(tmp_path / "elsewhere" / "d")   # a linked directory is walked ...
    (root / "zlink").symlink_to(tmp_path / "elsewhere" / "d")     # ... once, links in path order: the later
                                                                  # one is reported
    (root / "loop").symlink_to(root)                              # a cycle is reported, cannot hang the walk
    (root / "a-sub").symlink_to(root / "sub")                     # a link into the tree: the real path wins
    (root / "gone.mp4").symlink_to(tmp_path / "missing.mp4")      # broken: listed with an error
    _touch(root, "folder.mp4/hidden.mp4")                         # a directory named like a video: reported,
    os.mkfifo(root / "pipe.webm")                                 # not searched; special file: an error
    (root / "loop.mp4").symlink_to(root / "loop.mp4")             # a symlink loop: an error, the rest listed
    (root / "dirlink.mp4").symlink_to(tmp_path / "elsewhere" / "d")
    items = inputs.discover(_spec(videos=str(root)))
    rels = [os.path.relpath(it.path, root) for it in items]
    assert rels == ["a-sub", "a.mp4", "dirlink.mp4", "dirlink/inner.mp4", "folder.mp4", "gone.mp4",
                    "link.mp4", "loop", "loop.mp4", "pipe.webm", "sub/b.MOV", "sub/deep/c.mkv", "zlink"]
    errors = {os.path.relpath(it.path, root): it.error for it in items if it.error}
    again = "a symlink to a directory already searched (not searched again)"
    assert errors == {"a-sub": again, "zlink": again, "loop": again,
                      "dirlink.mp4": "a directory named like a video: not an input, and not searched",
                      "folder.mp4": "a directory named like a video: not an input, and not searched",
                      "gone.mp4": "broken symlink",
                      "loop.mp4": "cannot read: Too many levels of symbolic links",
                      "pipe.webm": "not a regular file (a pipe, socket or device)"}
    assert [it.index for it in items] == list(range(13)) and all(os.path.isabs(it.path) for it in items)
    assert inputs.count(_spec(videos=str(root))) == 13


def test_walk_does_not_stat_each_file(tmp_path: Path) -> None:
    """Counts the stat-family system calls of the walk with strace: 0 files vs 3,000 files in 3 folders. The
    old rglob + is_dir + relative_to walk made two per file (6,000 more); the scandir walk reads d_type."""
    if shutil.which("strace") is None:
        pytest.skip("strace not installed (apt-get install strace)")
    empty, full = tmp_path / "empty", tmp_path / "full"
    empty.mkdir()
    for d in range(3):
        (full / f"d{d}").mkdir(parents=True)
        for i in range(1000):
            (full / f"d{d}" / f"c{i:04d}.mp4").touch()

    def stats(root: Path) -> int:
        code = (f"from harness.lib.media import walk\nimport sys\nsys.stderr.write('WALK-START\\n')\n"
                f"f, o = walk({str(root)!r}, frozenset(['.mp4']))\nsys.stderr.write(f'WALK-END {{len(f)}}\\n')")
        log = tmp_path / f"strace-{root.name}.txt"
        subprocess.run(["strace", "-f", "-e", "trace=stat,lstat,fstat,newfstatat,statx,write", "-o", str(log),
                        sys.executable, "-c", code], check=True, capture_output=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
        text = log.read_text()
        body = text[text.index("WALK-START"):text.index("WALK-END")]
        assert "WALK-END 3000" in text or root == empty
        return sum(1 for line in body.splitlines() if "stat" in line.split("(")[0])

    extra = stats(full) - stats(empty)
    assert extra < 30, f"{extra} stat calls for 3,000 files"


def test_manifest_text_and_jsonl(tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    text = tmp_path / "lists" / "videos.txt"
    text.write_text("# a comment\nclips/a.mp4\n\n/abs/b.mp4\n  clips/./a.mp4  \n../c.mp4\n")
    items = inputs.discover(_spec(manifest=str(text)))
    assert [it.path for it in items] == [str(tmp_path / "lists/clips/a.mp4"), "/abs/b.mp4",
                                         str(tmp_path / "lists/clips/a.mp4"), str(tmp_path / "c.mp4")]
    assert [it.error for it in items] == [None, None, "line 5: duplicate path: first on line 2", None]
    jl = tmp_path / "lists" / "videos.jsonl"
    jl.write_text(json.dumps({"path": "x.mp4", "caption": "ignored"}) + "\n{broken\n" + json.dumps({"p": 1}) + "\n"
                  + json.dumps({"path": 5}) + "\n[1]\n")
    items = inputs.discover(_spec(manifest=str(jl)))
    assert items[0].path == str(tmp_path / "lists" / "x.mp4") and items[0].error is None
    assert items[1].error.startswith("line 2: not valid JSON") and items[1].name == "videos.jsonl:2"
    assert items[2].error.startswith("line 3: missing key: path")
    assert items[3].error.startswith("line 4: bad value: path = 5, must be a non-empty string")
    assert items[4].error.startswith("line 5: not a JSON object")


def test_a_byte_order_mark_and_unnormalised_duplicates(tmp_path: Path) -> None:
    """Some editors start a UTF-8 file with a byte-order mark: it is not part of the first path or line. A
    Video2World jsonl naming one file as ./v/a.mp4 and v/../v/a.mp4 lists it once (else the same clip could
    land in the training and the test split)."""
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "a.mp4").write_bytes(b"x")
    text = tmp_path / "list.txt"
    text.write_bytes("\ufeffv/a.mp4\n".encode("utf-8"))
    (item,) = inputs.discover(_spec(manifest=str(text)))
    assert item.path == str(tmp_path / "v" / "a.mp4") and item.error is None
    jl = tmp_path / "prompts.jsonl"
    lines = [{"prompt": "p", "visual_input": "./v/a.mp4"}, {"prompt": "q", "visual_input": "v/../v/a.mp4"}]
    jl.write_bytes(("\ufeff" + "".join(json.dumps(x) + "\n" for x in lines)).encode("utf-8"))
    first, second = listing.from_jsonl(jl)
    assert first.path == str(tmp_path / "v" / "a.mp4") and first.error is None
    assert second.error == "line 2: duplicate visual_input: first on line 1; this line and its prompt are left out"


def test_manifest_that_cannot_be_read_is_one_error_naming_the_key(tmp_path: Path) -> None:
    from harness.core.errors import HarnessError

    with pytest.raises(HarnessError, match=r"data\.manifest = .*nope\.txt.*cannot read"):
        inputs.discover(_spec(manifest=str(tmp_path / "nope.txt")))


@pytest.mark.parametrize("data,key", [
    ('videos = "v"\nmanifest = "m.txt"', "data.manifest"),
    ('manifest = "m.txt"\njsonl = "j.jsonl"', "data.jsonl"),
    ('split = [1, 1, 1]', "data.videos"),
])
def test_exactly_one_input_source(tmp_path: Path, data: str, key: str) -> None:
    spec_path = tmp_path / "run.toml"
    specs.write(spec_path, specs.TINY, {"video": SHAPE}, f"[data]\n{data}\n")
    p = subprocess.run([sys.executable, "-m", "harness.cli", "validate", str(spec_path)], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{spec_path}: {key}: "), p.stderr


def _seed(throttle: int | None) -> spec_mod.RunSpec:
    text = (REPO / "configs" / "cosmos-4b-dv4x8x8.toml").read_text()
    if throttle is not None:
        text = text.replace("[tokenize]\n", f"[tokenize]\narray_throttle = {throttle}\n")
    return spec_mod.loads(text)


@pytest.mark.parametrize("throttle,want", [(None, "%100"), (0, "%100"), (7, "%7")])
def test_tokenize_throttle_zero_means_no_limit(throttle: int | None, want: str) -> None:
    """0 (the default) is no limit, whatever the node count; submitit would otherwise throttle to 256."""
    p = plan.build(_seed(throttle), plan.Facts(num_inputs=10_000, max_array_size=1001, nodes_available=3))
    s = p.stage("tokenize")
    assert s.resources.array_throttle == (throttle or 0)
    text = slurm.script(p, s, RunPaths(Path("/r")), {}, 0)
    assert f"#SBATCH --array=0-99{want}\n" in text


def test_count_matches_discover(tmp_path: Path) -> None:
    for rel in ["a.mp4", "s/b.mp4", "s/t/c.mp4", "x.txt"]:
        _touch(tmp_path / "v", rel)
    (tmp_path / "v" / "gone.mp4").symlink_to(tmp_path / "nowhere")
    (tmp_path / "m.txt").write_text("# c\nv/a.mp4\n\nv/a.mp4\nq.mp4\n")
    for s in (_spec(videos=str(tmp_path / "v")), _spec(manifest=str(tmp_path / "m.txt"))):
        assert inputs.count(s) == len(inputs.discover(s)) in (3, 4)


def test_plan_says_where_planned_values_came_from(tmp_path: Path, no_slurm: None) -> None:
    for i in range(5):
        _touch(tmp_path / "v", f"c{i}.mp4")
    spec_path = tmp_path / "run.toml"
    specs.write(spec_path, specs.TINY, {"video": SHAPE, "data": {"videos": "v"}, "tokenize": {"videos_per_shard": 2},
                                        "infer": {"array_throttle": 2}})
    p = subprocess.run([sys.executable, "-m", "harness.cli", "plan", str(spec_path)], capture_output=True, text=True,
                       cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}, timeout=120)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "inputs: 5 -> 3 shard(s)" in out
    assert "resolved: nodes_available = 1: assumed (no Slurm controller answers here)" in out
    assert "resolved: tokenize.shards = 3: max(ceil(5 inputs / videos_per_shard 2) = 3, nodes_available 1)" in out
    assert "resolved: tokenize.array_throttle = 0: no limit (the default)" in out
    assert "resolved: infer.array_throttle = 2: from the spec" in out
