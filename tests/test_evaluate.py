"""Evaluate stage: frame alignment, name matching, infinite PSNR, and the stage's JSON output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import specs
from harness.core.atomic import atomic_write_json
from harness.core.errors import HarnessError
from harness.core.evalrecords import Failure
from harness.core.paths import RunPaths
from harness.core.plan import checkpoint_steps
from harness.lib import media
from harness.lib.synth import smooth_clip
from harness.lib.video import write_mp4
from harness.stages import evaluate

H, W = 48, 64


def numbered_clip(frames: int, seed: int = 0) -> np.ndarray:
    """Frame k carries its index: a bar whose height and brightness grow with k, over a smooth background,
    so comparing frame g with any frame other than the aligned one costs many dB."""
    clip = smooth_clip(frames, H, W, seed).copy()
    for k in range(frames):
        clip[k, : 2 + 2 * k, : W // 2] = (k * 37) % 256
    return clip


def write_generated(path: Path, frames: np.ndarray, mapping: list[int | None] | None, context: int = 5) -> None:
    write_mp4(path, frames, 25, crf=4)
    if mapping is not None:
        side = media.Sidecar(reference="", reference_frames=tuple(mapping), context_frames=context)
        atomic_write_json(media.sidecar_path(path), side.to_json())


@pytest.fixture()
def dirs(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    ref, gen = tmp_path / "ref", tmp_path / "gen"
    ref.mkdir()
    gen.mkdir()
    clip = numbered_clip(25)
    write_mp4(ref / "clip.mp4", clip, 25, crf=4)
    return ref, gen, clip


def test_sidecar_alignment_beats_identity(dirs: tuple[Path, Path, np.ndarray]) -> None:
    ref, gen, clip = dirs
    mapping = list(range(8, 25))  # generation continued from frame 8: generated g shows reference 8 + g
    write_generated(gen / "clip.mp4", clip[8:25], mapping)
    aligned = evaluate.evaluate_dirs(ref, gen, "fast", device="cpu", workers=1)
    naive = evaluate.evaluate_dirs(ref, gen, "fast", device="cpu", workers=1, use_sidecars=False)
    (a,), (n,) = aligned["videos"], naive["videos"]
    assert a["alignment"] == "sidecar" and n["alignment"] == "identity"
    assert a["compared_frames"] == {"generated": list(range(17)), "reference": mapping}
    assert n["compared_frames"]["reference"] == list(range(17))
    assert a["psnr"] > 40 and a["ssim"] > 0.97
    assert a["psnr"] - n["psnr"] > 15
    assert a["predicted"]["frames"] == 12 and a["predicted"]["psnr"] > 40


def test_frames_past_the_reference_are_left_out(dirs: tuple[Path, Path, np.ndarray]) -> None:
    ref, gen, clip = dirs
    frames = np.concatenate([clip[20:25], clip[24:25].repeat(4, 0)])
    write_generated(gen / "clip.mp4", frames, [20, 21, 22, 23, 24, 25, 26, 27, None], context=5)
    (v,) = evaluate.evaluate_dirs(ref, gen, "fast", device="cpu", workers=1)["videos"]
    assert v["compared_frames"]["reference"] == [20, 21, 22, 23, 24]
    assert v["frames_without_reference"] == [5, 6, 7, 8]
    assert "predicted" not in v  # every predicted frame lies past the end of the reference
    assert v["psnr"] > 40


def test_identical_videos_report_infinite_psnr(dirs: tuple[Path, Path, np.ndarray]) -> None:
    ref, gen, _ = dirs
    shutil.copy(ref / "clip.mp4", gen / "clip.mp4")
    for backend in ("fast", "skimage"):
        out = evaluate.evaluate_dirs(ref, gen, backend, device="cpu", workers=1)
        (v,) = out["videos"]
        assert v["psnr"] is None and v["identical"] is True and v["ssim"] == pytest.approx(1.0, abs=1e-12)
        assert out["mean"]["identical_videos"] == ["clip"] and out["mean"]["psnr"] is None
        json.dumps(out, allow_nan=False)  # valid JSON: no Infinity


def test_missing_pairs_reported_by_name(dirs: tuple[Path, Path, np.ndarray]) -> None:
    ref, gen, clip = dirs
    write_mp4(ref / "only_ref.mov", clip[:9], 25)
    write_generated(gen / "clip.mp4", clip[:17], None)
    write_generated(gen / "only_gen.mp4", clip[:17], None)
    (gen / "broken.mp4").write_bytes(b"not a video")
    shutil.copy(gen / "broken.mp4", ref / "broken.mp4")
    out = evaluate.evaluate_dirs(ref, gen, "fast", device="cpu", workers=1)
    assert out["missing_reference"] == ["only_gen"]
    assert out["missing_generated"] == ["only_ref"]
    assert [f["name"] for f in out["failed"]] == ["broken"]
    assert [v["name"] for v in out["videos"]] == ["clip"] and out["videos"][0]["alignment"] == "identity"


def test_fast_and_skimage_agree_on_a_thread_pool(dirs: tuple[Path, Path, np.ndarray]) -> None:
    ref, gen, clip = dirs
    noisy = np.clip(clip.astype(int) + np.random.default_rng(0).integers(-20, 21, clip.shape), 0, 255)
    for i in range(3):
        shutil.copy(ref / "clip.mp4", ref / f"c{i}.mp4")
        write_generated(gen / f"c{i}.mp4", noisy[i:i + 17].astype(np.uint8), list(range(i, i + 17)))
    fast = evaluate.evaluate_dirs(ref, gen, "fast", device="cpu", workers=2)
    slow = evaluate.evaluate_dirs(ref, gen, "skimage", workers=1)
    assert fast["engine"] == "numba" and slow["engine"] == "skimage"
    for f, s in zip(fast["videos"], slow["videos"], strict=True):
        assert abs(f["psnr"] - s["psnr"]) < 1e-6 and abs(f["ssim"] - s["ssim"]) < 1e-5
        assert f["compared_frames"] == s["compared_frames"]


def test_stage_writes_eval_json(tmp_path: Path, dirs: tuple[Path, Path, np.ndarray]) -> None:
    ref, _, clip = dirs
    spec = specs.build({"data": {"videos": str(ref)}, "finetune": {"max_steps": 4, "save_every": 2},
                               "evaluate": {"backend": "skimage"}})
    paths = RunPaths(tmp_path / "run")
    step = checkpoint_steps(spec.finetune)[1]
    out_dir = paths.infer_dir(step)
    out_dir.mkdir(parents=True)
    write_generated(out_dir / "clip.mp4", clip[3:20], list(range(3, 20)))
    side = json.loads(media.sidecar_path(out_dir / "clip.mp4").read_text())
    side["reference"] = str(ref / "clip.mp4")
    media.sidecar_path(out_dir / "clip.mp4").write_text(json.dumps(side))
    write_generated(out_dir / "orphan.mp4", clip[:17], None)  # no sidecar, no reference anywhere
    evaluate.run(spec, 1, paths)
    out = json.loads(paths.eval_json(step).read_text())
    assert out["step"] == step and out["backend"] == "skimage"
    assert out["missing_reference"] == ["orphan"]
    (v,) = out["videos"]
    assert v["compared_frames"]["reference"] == list(range(3, 20)) and v["psnr"] > 40
    assert out["mean"]["psnr"] == v["psnr"]
    with pytest.raises(Exception, match="checkpoints"):
        evaluate.run(spec, 2, paths)


def test_a_shard_whose_every_pair_failed_fails_its_task(tmp_path: Path, dirs: tuple[Path, Path, np.ndarray]) -> None:
    """A pair that cannot be scored is a note while others score; when none scores, the task fails (its result
    still written for the report) instead of reading COMPLETED with no metric at all."""
    ref, _, clip = dirs
    spec = specs.build({"data": {"videos": str(ref)}, "finetune": {"max_steps": 4, "save_every": 2},
                        "evaluate": {"backend": "skimage", "reference": str(ref)}})
    paths = RunPaths(tmp_path / "run")
    step = checkpoint_steps(spec.finetune)[1]
    out_dir = paths.infer_dir(step)
    out_dir.mkdir(parents=True)
    (out_dir / "clip.mp4").write_bytes(b"not a video")
    with pytest.raises(HarnessError, match=r"evaluate\[1\]: no video compared under protocol 'aligned' \(1 failed"):
        evaluate.run(spec, 1, paths)
    out = json.loads(paths.eval_json(step).read_text())
    assert out["videos"] == [] and [f["name"] for f in out["failed"]] == ["clip"]


def test_thread_pool_equals_serial(dirs: tuple[Path, Path, np.ndarray]) -> None:
    ref, gen, clip = dirs
    for i in range(3):
        write_generated(gen / f"clip{i}.mp4", clip[i:i + 17], list(range(i, i + 17)))
        shutil.copy(ref / "clip.mp4", ref / f"clip{i}.mp4")
    (gen / "bad.mp4").write_bytes(b"x")
    shutil.copy(gen / "bad.mp4", ref / "bad.mp4")
    pairs = evaluate.stage_pairs(specs.build({"data": {"videos": str(ref)},
                                                     "evaluate": {"reference": str(ref)}}), gen)[0]
    a = evaluate.score_pairs(pairs, "fast", "cpu", workers=1)
    b = evaluate.score_pairs(pairs, "fast", "cpu", workers=2)
    assert a == b and [r.name for r in a if isinstance(r, Failure)] == ["bad"]
    assert [r.name for r in a] == ["bad", "clip0", "clip1", "clip2"]


def test_stage_computes_only_the_selected_metrics(tmp_path: Path, dirs: tuple[Path, Path, np.ndarray]) -> None:
    """evaluate.metrics selects what is computed and written: PSNR alone skips the SSIM kernel (same PSNR as the
    full run, from exact per-frame squared-error sums), SSIM alone writes no PSNR."""
    ref, _, clip = dirs
    noisy = np.clip(clip.astype(int) + np.random.default_rng(1).integers(-9, 10, clip.shape), 0, 255).astype(np.uint8)
    out: dict[str, dict] = {}
    once = tmp_path / "once"  # encoded once: x264 on threads may encode the same frames differently each time
    once.mkdir()
    write_generated(once / "clip.mp4", noisy[2:19], list(range(2, 19)))
    for chosen in (["psnr", "ssim"], ["psnr"], ["ssim"]):
        spec = specs.build({"data": {"videos": str(ref)}, "finetune": {"max_steps": 2, "save_every": 2},
                                   "evaluate": {"reference": str(ref), "metrics": chosen}})
        paths = RunPaths(tmp_path / "-".join(chosen))
        gen = paths.infer_dir(2)
        shutil.copytree(once, gen)
        evaluate.run(spec, 0, paths)
        out["-".join(chosen)] = json.loads(paths.eval_json(2).read_text())
    both, psnr, ssim = out["psnr-ssim"], out["psnr"], out["ssim"]
    assert both["metrics"] == ["psnr", "ssim"] and psnr["metrics"] == ["psnr"] and ssim["metrics"] == ["ssim"]
    (b,), (p,), (s,) = both["videos"], psnr["videos"], ssim["videos"]
    assert p["psnr"] == b["psnr"] and p["predicted"]["psnr"] == b["predicted"]["psnr"] and 20 < p["psnr"] < 60
    assert "ssim" not in p and "ssim_per_frame" not in p and "ssim" not in psnr["mean"]
    assert s["ssim"] == b["ssim"] and "psnr" not in s and "psnr" not in ssim["mean"] and "identical" not in s
    assert psnr["mean"]["psnr"] == both["mean"]["psnr"] and ssim["mean"]["ssim"] == both["mean"]["ssim"]


@pytest.mark.parametrize("value,needle", [("['lpips']", "item 0: must be one of 'psnr', 'ssim'"),
                                          ("[]", "name at least one of 'psnr', 'ssim'"),
                                          ("['psnr', 'psnr']", "'psnr' is listed twice")])
def test_validate_rejects_unknown_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str,
                                          needle: str) -> None:
    from harness import cli

    path = tmp_path / "run.toml"
    specs.write(path, {"data": {"videos": "v"}}, specs.TINY, f"[evaluate]\nmetrics = {value}\n")
    assert cli.main(["validate", str(path)]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{path}: evaluate.metrics = ") and needle in lines[0], lines


@pytest.mark.timeout(300)
def test_cli_start_up_imports_only_what_evaluate_needs(tmp_path: Path, dirs: tuple[Path, Path, np.ndarray]) -> None:
    """`harness evaluate` on a CPU node: no torch (the GPU probe looks for device nodes first), megatron or
    matplotlib, none of the run machinery (submitit, the launch backends), and not the scipy.linalg and cffi
    numba would load for features its kernel never uses (yet both import fine afterwards); the numba kernel
    comes from the cache in NUMBA_CACHE_DIR after the first process wrote it."""
    import os
    import subprocess
    import sys

    from harness.lib import metrics

    if metrics.gpu_device_nodes():
        pytest.skip("GPU device nodes present: torch is the metric engine here")
    ref, gen, clip = dirs
    write_generated(gen / "clip.mp4", clip[:17], list(range(17)))
    cache = tmp_path / "numba"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    code = ("import sys, json; from harness import cli; rc = cli.main(sys.argv[1:]); "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'megatron', 'matplotlib', 'nemo', 'submitit', 'cffi') "
            "or m.startswith(('scipy.linalg', 'harness.launch', 'harness.report.build'))); "
            "import scipy.linalg, cffi; print(json.dumps(heavy), file=sys.stderr); sys.exit(rc)")
    for _ in range(2):
        p = subprocess.run([sys.executable, "-c", code, "evaluate", "--reference", str(ref), "--generated", str(gen)],
                           capture_output=True, text=True, env=env, timeout=240)
        assert p.returncode == 0, p.stderr[-2000:]
        assert json.loads(p.stderr.strip().splitlines()[-1]) == []
        assert "PSNR" in p.stdout  # the table; the JSON goes to GENERATED/evaluate.json
        assert json.loads((gen / "evaluate.json").read_text())["mean"]["psnr"] is not None
    assert list(cache.rglob("*.nbi")), "numba wrote no cache index under NUMBA_CACHE_DIR"


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def _generated(gen: Path, name: str, source: Path) -> None:
    _touch(gen / f"{name}.mp4")
    side = media.Sidecar(reference=str(source), reference_frames=(0,), context_frames=0)
    atomic_write_json(media.sidecar_path(gen / f"{name}.mp4"), side.to_json())


def test_references_are_found_by_the_source_not_the_output_name(tmp_path: Path) -> None:
    """evaluate.reference is searched as inputs are (recursively): infer renames the second sub/b/same.mp4 to
    same-1 and dup.mov to dup-1, which no reference is named; their sources' paths under the inputs find
    them. A source outside the inputs' folder matches the only reference of its name; a name two references
    share matches neither."""
    inputs, ref, gen = tmp_path / "in", tmp_path / "ref", tmp_path / "gen"
    for rel in ("sub/a/same.mp4", "sub/b/same.mp4", "dup.mp4", "dup.mov"):
        _touch(inputs / rel)
        _touch(ref / rel)
    _touch(ref / "deep" / "solo.mp4")
    _touch(ref / "x" / "twice.mp4")
    _touch(ref / "y" / "twice.mp4")
    for name, source in (("same", inputs / "sub/a/same.mp4"), ("same-1", inputs / "sub/b/same.mp4"),
                         ("dup", inputs / "dup.mp4"), ("dup-1", inputs / "dup.mov"),
                         ("solo", tmp_path / "elsewhere" / "solo.mp4"), ("twice", tmp_path / "e" / "twice.mp4")):
        _generated(gen, name, source)
    spec = specs.build({"data": {"videos": str(inputs)}, "infer": {"inputs": str(inputs)},
                        "evaluate": {"reference": str(ref)}})
    (gen / "broken.mp4").write_bytes((gen / "solo.mp4").read_bytes())
    (gen / "broken.json").write_text('{"reference": ')  # a damaged sidecar: that video fails, not the shard
    pairs, missing_ref, missing_gen, damaged = evaluate.stage_pairs(
        spec, gen, ["dup", "dup-1", "same", "same-1", "solo", "twice", "never", "broken"])
    assert [(f.name, "not a valid alignment sidecar" in f.error) for f in damaged] == [("broken", True)]
    assert {p.name: Path(p.reference).relative_to(ref).as_posix() for p in pairs} == {
        "same": "sub/a/same.mp4", "same-1": "sub/b/same.mp4", "dup": "dup.mp4", "dup-1": "dup.mov",
        "solo": "deep/solo.mp4"}
    assert missing_ref == ["twice"] and missing_gen == ["never"]


def test_a_shard_that_compared_nothing_fails_and_names_why(tmp_path: Path, dirs: tuple[Path, Path, np.ndarray]
                                                           ) -> None:
    """No reference found for any generated video (or infer skipped every input) leaves no video in any mean:
    the task fails with the reason instead of reading COMPLETED; infer's skips are the result's failures."""
    ref, _, clip = dirs
    empty = tmp_path / "empty-ref"
    empty.mkdir()
    spec = specs.build({"data": {"videos": str(ref)}, "finetune": {"max_steps": 4, "save_every": 2},
                        "evaluate": {"backend": "skimage", "reference": str(empty)}})
    paths = RunPaths(tmp_path / "run")
    step = checkpoint_steps(spec.finetune)[1]
    write_generated(paths.infer_dir(step) / "clip.mp4", clip[:17], list(range(17)))
    atomic_write_json(paths.infer_manifest(step), {"names": ["clip", "bad"], "skipped": {"bad": "empty file"}})
    with pytest.raises(HarnessError, match=r"evaluate\[1\]: no video compared under protocol 'aligned' \(1 failed, "
                                           r"first bad: infer skipped this input: empty file; no reference for 1, "
                                           r"first clip\)"):
        evaluate.run(spec, 1, paths)
    out = json.loads(paths.eval_json(step).read_text())
    assert out["missing_reference"] == ["clip"] and out["missing_generated"] == []
    assert out["failed"] == [{"name": "bad", "error": "infer skipped this input: empty file"}]
