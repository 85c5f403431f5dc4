"""`harness evaluate` on real mp4 files: a table per video and the mean in the terminal, the JSON in a file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from harness.lib.synth import smooth_clip
from harness.lib.video import write_mp4

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}, timeout=300)


def test_table_and_json_file(tmp_path: Path) -> None:
    ref, gen = tmp_path / "ref", tmp_path / "gen"
    ref.mkdir()
    gen.mkdir()
    rng = np.random.default_rng(0)
    for i, name in enumerate(["alpha", "beta"]):
        clip = smooth_clip(9, 48, 64, i)
        write_mp4(ref / f"{name}.mp4", clip, 25, crf=4)
        noisy = np.clip(clip.astype(np.int16) + rng.integers(-20, 21, clip.shape), 0, 255).astype(np.uint8)
        write_mp4(gen / f"{name}.mp4", noisy, 25, crf=4)
    write_mp4(ref / "gamma.mp4", smooth_clip(9, 48, 64, 5), 25, crf=4)  # never generated

    p = run_cli("evaluate", "--reference", str(ref), "--generated", str(gen), "--backend", "fast", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    data = json.loads((gen / "evaluate.json").read_text())
    assert [v["name"] for v in data["videos"]] == ["alpha", "beta"] and data["missing_generated"] == ["gamma"]
    out = p.stdout
    assert "{" not in out, "the JSON goes to the file, not the terminal"
    rows = {ln.split("│")[1].strip(): ln for ln in out.splitlines() if ln.count("│") >= 6}
    for v in data["videos"]:
        assert f"{v['psnr']:.2f}" in rows[v["name"]] and f"{v['ssim']:.4f}" in rows[v["name"]]
        assert "9 (0-8 vs 0-8)" in rows[v["name"]]
    mean = rows["mean of 2"]
    assert f"{data['mean']['psnr']:.2f}" in mean and f"{data['mean']['ssim']:.4f}" in mean
    assert "not generated: gamma" in out
    assert f"wrote {gen / 'evaluate.json'}" in out.replace("\n", "")

    custom = tmp_path / "out" / "scores.json"
    p = run_cli("evaluate", "--reference", str(ref), "--generated", str(gen), "--out", str(custom), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert json.loads(custom.read_text())["mean"]["videos"] == 2

    p = run_cli("evaluate", "--reference", str(ref), "--generated", str(gen), "--protocol", "both", "--out",
                str(custom), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    both = json.loads(custom.read_text())
    (tb,) = both["other_protocols"]
    assert (both["protocol"], tb["protocol"]) == ("aligned", "tokenbench")
    assert both["mean"] == data["mean"] and tb["mean"]["psnr"] != data["mean"]["psnr"]
    assert "protocol aligned, resize upstream" in p.stdout and "protocol tokenbench" in p.stdout
    assert f"{tb['mean']['psnr']:.2f}" in p.stdout


def test_nothing_to_compare_and_an_unwritable_out_are_refused_before_any_work(tmp_path: Path) -> None:
    """No generated video with a reference namesake is an error, not a table of nothing; an `--out` that is a
    directory (or under a file) is refused before the videos are read, and a JSON already there is kept."""
    from harness import cli

    ref, gen, other = tmp_path / "ref", tmp_path / "gen", tmp_path / "other"
    for d in (ref, gen, other):
        d.mkdir()
    write_mp4(ref / "alpha.mp4", smooth_clip(9, 48, 64, 0), 25, crf=4)
    write_mp4(other / "beta.mp4", smooth_clip(9, 48, 64, 1), 25, crf=4)
    keep = gen / "evaluate.json"
    keep.write_text('{"kept": true}')
    for generated, out, needle in ((gen, None, "nothing to compare"), (other, str(ref), "is a directory"),
                                   (other, str(keep / "x.json"), "cannot be written into")):
        argv = ["evaluate", "--reference", str(ref), "--generated", str(generated)] + (["--out", out] if out else [])
        p = run_cli(*argv, cwd=tmp_path)
        assert p.returncode == 2 and needle in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert keep.read_text() == '{"kept": true}' and not (other / "evaluate.json").exists()
    assert cli.main(["synth", "--out", str(keep)]) == 2
    assert cli.main(["plan", str(REPO / "configs" / "quickstart.toml"), "--out", str(keep)]) == 2
    assert cli.main(["bench", "eval", "--startup-only", "--out", str(keep)]) == 2  # before its ~12 s of work
    assert keep.read_text() == '{"kept": true}'


def test_every_pair_failing_is_an_error_with_the_reasons(tmp_path: Path) -> None:
    """Pairs that match by name but none can be compared (here a reference that is no video) end in exit 2,
    after a note per pair, and a JSON already at --out is kept."""
    ref, gen = tmp_path / "ref", tmp_path / "gen"
    ref.mkdir()
    gen.mkdir()
    write_mp4(gen / "alpha.mp4", smooth_clip(9, 48, 64, 0), 25, crf=4)
    (ref / "alpha.mp4").write_bytes(b"not a video")
    keep = gen / "evaluate.json"
    keep.write_text('{"kept": true}')
    p = run_cli("evaluate", "--reference", str(ref), "--generated", str(gen), cwd=tmp_path)
    assert p.returncode == 2 and "no pair could be compared: all 1 failed" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "note: failed: alpha:" in p.stdout
    assert keep.read_text() == '{"kept": true}'


def test_inputs_are_never_written_over_and_missing_folders_are_named(tmp_path: Path) -> None:
    """`--out` (or the default `evaluate.json`) that is a video, or a video's alignment sidecar, is refused before
    any work, the files untouched; a missing folder is named by its own option, not by `--out`."""
    ref, gen = tmp_path / "ref", tmp_path / "gen"
    ref.mkdir()
    gen.mkdir()
    write_mp4(ref / "evaluate.mp4", smooth_clip(9, 48, 64, 0), 25, crf=4)
    write_mp4(gen / "evaluate.mp4", smooth_clip(9, 48, 64, 0), 25, crf=4)
    sidecar = gen / "evaluate.json"
    sidecar.write_text('{"source": "sidecar"}')
    (ref / "pic.png").write_bytes(b"an image reference")
    before = {p: p.read_bytes() for p in (ref / "evaluate.mp4", sidecar, ref / "pic.png")}
    cases = ((gen, None, "--out: would replace the alignment sidecar of evaluate.mp4"),
             (gen, str(ref / "evaluate.mp4"), "--out: is a video's or image's name"),
             (gen, str(ref / "pic.png"), "--out: is a video's or image's name"),
             (tmp_path / "nope", None, "--generated: no such directory"),
             (gen / "evaluate.mp4", None, "--generated: not a directory"))
    for generated, out, needle in cases:
        argv = ["evaluate", "--reference", str(ref), "--generated", str(generated)] + (["--out", out] if out else [])
        p = run_cli(*argv, cwd=tmp_path)
        assert p.returncode == 2 and needle in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert {p: p.read_bytes() for p in before} == before


def test_the_reference_of_the_same_name_wins_and_ambiguity_is_said(tmp_path: Path) -> None:
    """References `dup.mp4` and `dup.mov`: generated `dup.mp4` is scored against `dup.mp4`; generated `two.mp4`
    over references `two.mov` and `two.mkv` is a failed pair naming both; a broken link is a failed pair too."""
    from harness.stages.evaluate import evaluate_dirs

    ref, gen = tmp_path / "ref", tmp_path / "gen"
    ref.mkdir()
    gen.mkdir()
    clip = smooth_clip(9, 48, 64, 0)
    write_mp4(ref / "dup.mp4", clip, 25, crf=4)
    write_mp4(ref / "dup.mov", smooth_clip(9, 48, 64, 3), 25, crf=4)
    write_mp4(gen / "dup.mp4", clip, 25, crf=4)
    for suffix in (".mov", ".mkv"):
        write_mp4(ref / f"two{suffix}", clip, 25, crf=4)
    write_mp4(gen / "two.mp4", clip, 25, crf=4)
    write_mp4(ref / "gone.mp4", clip, 25, crf=4)
    (gen / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
    got = evaluate_dirs(ref, gen, backend="fast", workers=1)
    (dup,) = got["videos"]
    assert dup["name"] == "dup" and dup["reference"].endswith("dup.mp4")
    assert dup["identical"] or dup["psnr"] > 40, dup["psnr"]  # the same clip, not dup.mov's other one
    failed = {f["name"]: f["error"] for f in got["failed"]}
    assert failed["two"] == "ambiguous reference: two.mkv, two.mov share the stem 'two'; keep one"
    assert "No such file" in failed["gone"] or "nowhere" in failed["gone"], failed


def test_generated_frames_past_the_references_end_are_said(tmp_path: Path) -> None:
    """9 generated frames against a 3-frame reference: the table compares 3, and a note says 6 were left out."""
    ref, gen = tmp_path / "ref", tmp_path / "gen"
    ref.mkdir()
    gen.mkdir()
    write_mp4(ref / "short.mp4", smooth_clip(3, 48, 64, 0), 25, crf=4)
    write_mp4(gen / "short.mp4", smooth_clip(9, 48, 64, 0), 25, crf=4)
    p = run_cli("evaluate", "--reference", str(ref), "--generated", str(gen), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "short: 6 generated frame(s) without a reference frame, not compared (generated 3-8" in \
        " ".join(p.stdout.split()), p.stdout


def test_a_second_generation_of_one_source_pairs_by_its_sidecar(tmp_path: Path) -> None:
    """infer names the second generation of clip `x` (another prompt) `x-1` and its sidecar names x's file: the
    evaluate stage scored it, standalone evaluate reported "no reference for: x-1"."""
    from harness.core.atomic import atomic_write_json
    from harness.lib import media
    from harness.stages.evaluate import evaluate_dirs

    ref, gen = tmp_path / "ref", tmp_path / "gen"
    ref.mkdir()
    gen.mkdir()
    clip = smooth_clip(9, 48, 64, 0)
    write_mp4(ref / "x.mp4", clip, 25, crf=4)
    for name in ("x", "x-1"):
        write_mp4(gen / f"{name}.mp4", clip, 25, crf=4)
        atomic_write_json(gen / f"{name}.json", media.Sidecar(str(ref / "x.mp4"), tuple(range(9)), 2).to_json())
    got = evaluate_dirs(ref, gen, backend="fast", workers=1)
    assert sorted(v["name"] for v in got["videos"]) == ["x", "x-1"]
    assert got["missing_reference"] == [] and got["missing_generated"] == []
    # generations of different sources of one stem (sub1/x.mp4, sub2/x.mp4, x.png) are not scored against one x.mp4
    for name, source in (("x", "in/x.png"), ("x-1", "in/sub1/x.mp4"), ("x-2", "in/sub2/x.mp4")):
        write_mp4(gen / f"{name}.mp4", clip, 25, crf=4)
        atomic_write_json(gen / f"{name}.json", media.Sidecar(str(tmp_path / source), tuple(range(9)), 2).to_json())
    got = evaluate_dirs(ref, gen, backend="fast", workers=1)
    why = {f["name"]: f["error"] for f in got["failed"]}
    assert got["videos"] == [] and why["x"].startswith("its sidecar names source x.png, not the reference x.mp4")
    assert why["x-1"] == why["x-2"] == ("generations of 2 different sources pair with the one reference x.mp4: "
                                        "which is its own is unknown")
