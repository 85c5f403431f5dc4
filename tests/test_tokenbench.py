"""evaluate.protocol = "tokenbench": on pairs written here, the evaluate records equal an independent computation of
TokenBench's protocol (PyAV decode, PIL Lanczos to the short side, an H.264 round trip through PyAV at the same
qp rule with the ffmpeg program's bicubic RGB-to-YUV conversion and x264 frame threads, scikit-image metrics on float32
as the upstream
tool scores them) within 1e-3 dB and 1e-4 SSIM."""

from __future__ import annotations

import json
import math
from pathlib import Path

import av
import numpy as np
import pytest

import specs
from harness.core.evalrecords import EvalResult, ShardRecord
from harness.core.paths import RunPaths
from harness.core.plan import checkpoint_steps
from harness.lib.synth import smooth_clip
from harness.lib.video import write_mp4
from harness.stages import evaluate


def _first_frames(path: Path, n: int) -> np.ndarray:
    with av.open(str(path)) as c:
        out = []
        for f in c.decode(video=0):
            out.append(f.to_ndarray(format="rgb24"))
            if len(out) == n:
                break
    return np.stack(out)


def _lanczos_short_side(frames: np.ndarray, short: int) -> np.ndarray:
    from PIL import Image

    h, w = frames.shape[1:3]
    size = (short, math.floor(w * short / h + 0.5)) if h <= w else (math.floor(h * short / w + 0.5), short)
    return np.stack([np.asarray(Image.fromarray(f).resize(size[::-1], Image.LANCZOS)) for f in frames])


def _h264_round_trip(frames: np.ndarray, path: Path) -> np.ndarray:
    h, w = frames.shape[1:3]
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=25)
        s.width, s.height = w, h
        s.pix_fmt = "yuv444p" if h % 2 or w % 2 else "yuv420p"
        s.options = {"qp": "28" if h * w > 640 * 480 else "20"}
        s.codec_context.thread_type, s.codec_context.thread_count = "FRAME", 0  # as the ffmpeg program runs x264
        for f in frames:
            yuv = av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format=s.pix_fmt, interpolation="BICUBIC")
            out.mux(s.encode(yuv))
        out.mux(s.encode(None))
    return _first_frames(path, len(frames))


def _tokenbench_by_hand(ref: Path, gen: Path, tmp: Path, frames: int, short: int) -> tuple[float, float]:
    from skimage.metrics import structural_similarity

    a, b = (_h264_round_trip(_lanczos_short_side(_first_frames(p, frames), short), tmp / f"{i}.mp4")
            .astype(np.float32) for i, p in enumerate((ref, gen)))
    mse = ((a - b) ** 2).mean()
    psnr = 20 * np.log10(255.0 / (np.sqrt(mse) + np.finfo(np.float32).eps))
    ssim = np.mean([structural_similarity(x, y, data_range=255.0, channel_axis=-1) for x, y in zip(a, b)])
    return float(psnr), float(ssim)


def _write_pair(ref_dir: Path, gen_dir: Path, name: str, t: int, h: int, w: int, seed: int) -> None:
    ref = smooth_clip(t, h, w, seed)
    noise = np.random.default_rng(seed).normal(0, 6, ref.shape)
    write_mp4(ref_dir / f"{name}.mp4", ref, 25)
    write_mp4(gen_dir / f"{name}.mp4", np.clip(ref + noise, 0, 255).astype(np.uint8), 25, crf=20)


@pytest.fixture()
def pairs(tmp_path: Path) -> tuple[Path, Path]:
    ref, gen = tmp_path / "ref", tmp_path / "gen"
    _write_pair(ref, gen, "small", 20, 96, 128, 1)     # 17 of 20 frames, up to 320x427: odd width, yuv444p, qp 20
    _write_pair(ref, gen, "large", 17, 272, 400, 2)    # up to 320x471: qp 20
    _write_pair(ref, gen, "big", 9, 480, 720, 3)       # a 9-frame file: 9 compared; down to 320x480: qp 20
    _write_pair(ref, gen, "wide", 5, 64, 224, 4)       # up to 320x1120, 358,400 pixels > 640x480: qp 28
    return ref, gen


def test_tokenbench_equals_an_independent_computation(tmp_path: Path, pairs: tuple[Path, Path]) -> None:
    ref, gen = pairs
    out = evaluate.evaluate_dirs(ref, gen, "fast", workers=2, protocol="tokenbench")
    assert out["protocol"] == "tokenbench" and "other_protocols" not in out
    assert "first 17 frames" in out["frames"]
    got = {v["name"]: v for v in out["videos"]}
    assert sorted(got) == ["big", "large", "small", "wide"] and not out["failed"]
    for name, v in got.items():
        psnr, ssim = _tokenbench_by_hand(ref / f"{name}.mp4", gen / f"{name}.mp4", tmp_path, 17, 320)
        assert abs(v["psnr"] - psnr) < 1e-3, name
        assert abs(v["ssim"] - ssim) < 1e-4, name
        assert v["alignment"] == "tokenbench" and "predicted" not in v
    assert got["big"]["frames"] == 9 and got["small"]["frames"] == 17


def test_both_protocols_in_one_evaluation(tmp_path: Path, pairs: tuple[Path, Path]) -> None:
    ref, gen = pairs
    both = evaluate.evaluate_dirs(ref, gen, "fast", workers=2, protocol="both")
    aligned = evaluate.evaluate_dirs(ref, gen, "fast", workers=2, protocol="aligned")
    main = EvalResult.from_json(both)
    (tb,) = EvalResult.others_from_json(both)
    assert (main.protocol, main.resize, tb.protocol, tb.resize) == ("aligned", "upstream", "tokenbench", "")
    assert main.protocol_label == "aligned, resize upstream" and tb.protocol_label == "tokenbench"
    assert both["mean"] == aligned["mean"]
    alone = evaluate.evaluate_dirs(ref, gen, "fast", workers=2, protocol="tokenbench")
    assert both["other_protocols"][0]["mean"] == alone["mean"]
    assert main.mean.value("psnr") != tb.mean.value("psnr")


def test_tokenbench_pair_of_other_aspects_fails_with_its_reason(tmp_path: Path) -> None:
    ref, gen = tmp_path / "ref", tmp_path / "gen"
    write_mp4(ref / "a.mp4", smooth_clip(5, 48, 64, 1), 25)
    write_mp4(gen / "a.mp4", smooth_clip(5, 48, 96, 1), 25)
    out = evaluate.evaluate_dirs(ref, gen, "fast", workers=1, protocol="tokenbench")
    (f,) = out["failed"]
    assert "prepares to 5 frames of 640x320 but its reference" in f["error"] and "427x320" in f["error"]


def test_stage_writes_the_protocols_of_the_spec(tmp_path: Path) -> None:
    """evaluate.protocol = "both": the shard file is the aligned result plus the tokenbench one, each named,
    at the spec's tokenbench width and frames; it reads back as written."""
    ref = tmp_path / "videos"
    _write_pair(ref, tmp_path / "unused", "clip", 8, 48, 64, 5)
    spec = specs.build({"data": {"videos": str(ref)}, "finetune": {"max_steps": 4, "save_every": 2},
                        "evaluate": {"protocol": "both", "tokenbench_width": 32, "tokenbench_frames": 5,
                                     "reference": str(ref)}})
    assert [(p.name, p.resize, p.tokenbench_width, p.tokenbench_frames) for p in evaluate.spec_protocols(spec)] \
        == [("aligned", "upstream", 32, 5), ("tokenbench", "upstream", 32, 5)]
    paths = RunPaths(tmp_path / "run")
    step = checkpoint_steps(spec.finetune)[1]
    paths.infer_dir(step).mkdir(parents=True)
    (tmp_path / "unused" / "clip.mp4").rename(paths.infer_dir(step) / "clip.mp4")
    evaluate.run(spec, 1, paths)
    raw = json.loads(paths.eval_json(step).read_text())
    rec = ShardRecord.from_json(raw)
    assert rec.protocols() == ("aligned", "tokenbench") and rec.result.resize == "upstream"
    aligned, tb = rec.result.videos[0], rec.under("tokenbench").videos[0]  # type: ignore[union-attr]  # both there
    assert len(aligned.generated_frames) == 8 and len(tb.generated_frames) == 5
    assert "short side resized to 32" in raw["other_protocols"][0]["frames"]
    psnr, ssim = _tokenbench_by_hand(ref / "clip.mp4", paths.infer_dir(step) / "clip.mp4", tmp_path, 5, 32)
    assert abs(tb.value("psnr") - psnr) < 1e-3 and abs(tb.value("ssim") - ssim) < 1e-4  # type: ignore[operator]  # scored
    assert ShardRecord.from_json(json.loads(json.dumps(rec.to_json()))) == rec


def test_merged_shards_keep_the_tokenbench_note() -> None:
    """A checkpoint's note over several shards is rebuilt from the videos: TokenBench's are named as such."""
    from harness.core.evalrecords import Scores, VideoRecord
    from harness.core.evalstats import merge_shards

    def shard(k: int) -> ShardRecord:
        v = VideoRecord(f"v{k}", "g", "r", "tokenbench", (0, 1), (0, 1), (), 0, {}, Scores(2, {"psnr": 30.0 + k}))
        return ShardRecord(10, 0, k, 2, "gen", EvalResult("", "fast", "numba", "cpu", ("psnr",), (v,),
                                                          evaluate.video_means([v], ("psnr",)), protocol="tokenbench"))

    merged = merge_shards([shard(0), shard(1)], ("psnr",))
    assert merged.frames == ("2 video(s) under the tokenbench protocol: TokenBench's preprocessing of both files, "
                             "frame i compared with frame i")
    assert merged.mean.value("psnr") == 30.5


def test_a_second_protocol_that_compares_nothing_does_not_fail_the_task(tmp_path: Path) -> None:
    """protocol "both" over an image input, which TokenBench's preprocessing cannot take: the aligned result
    scores it, so the task completes (resume would rerun it forever), and the tokenbench result keeps the
    failure for the report."""
    from PIL import Image

    ref = tmp_path / "videos"
    _write_pair(ref, tmp_path / "unused", "clip", 5, 48, 64, 5)  # generated: 5 frames, as infer makes of an image
    Image.fromarray(smooth_clip(1, 48, 64, 5)[0]).save(ref / "clip.png")
    (ref / "clip.mp4").unlink()
    spec = specs.build({"data": {"videos": str(ref)}, "finetune": {"max_steps": 4, "save_every": 2},
                        "evaluate": {"protocol": "both", "tokenbench_width": 32, "tokenbench_frames": 9,
                                     "reference": str(ref)}})
    paths = RunPaths(tmp_path / "run")
    step = checkpoint_steps(spec.finetune)[1]
    paths.infer_dir(step).mkdir(parents=True)
    (tmp_path / "unused" / "clip.mp4").rename(paths.infer_dir(step) / "clip.mp4")
    evaluate.run(spec, 1, paths)
    rec = ShardRecord.from_json(json.loads(paths.eval_json(step).read_text()))
    tb = rec.under("tokenbench")
    assert len(rec.result.videos) == 1 and tb is not None and not tb.videos and [f.name for f in tb.failed] == ["clip"]
