"""tokenize + merge end to end, in-process: token math, decode-back accuracy, broken inputs named,
resume after a SIGKILL mid-shard byte-identical to a clean run, and exact Video2World ids."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures_data import (
    SHAPE,
    dataset_bytes,
    make_run,
    make_spec,
    session_assets,
    session_base_run,
    session_videos,
    summary,
)
from harness.core import spec as spec_mod
from harness.core import tokens
from harness.core.errors import HarnessError
from harness.core.paths import RunPaths
from harness.launch.worker import load_run_spec, run_task, worker
from harness.lib import prompts, synth
from harness.lib.video import ClipShape, load_clip, write_mp4
from harness.stages import dataset
from harness.stages.dataset import open_dataset

os.environ["HF_HUB_OFFLINE"] = "1"
CLIP = ClipShape(SHAPE["num_frames"], SHAPE["height"], SHAPE["width"])


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> RunPaths:
    return session_base_run(tmp_path_factory)


def _coder(paths: RunPaths, name: str) -> torch.jit.ScriptModule:
    return torch.jit.load(str(Path(json.loads(paths.assets_json.read_text())[name]) / f"{name}.jit"))


@pytest.mark.timeout(240)
def test_tokens_match_token_math_and_decode_back_to_the_inputs(base_run: RunPaths) -> None:
    spec = load_run_spec(base_run)
    tm = spec.token_math
    ds = open_dataset(base_run)
    assert len(ds) == 40 and tm.video_tokens == 5 * 6 * 8
    enc, dec = _coder(base_run, "encoder"), _coder(base_run, "decoder")
    worst = np.inf
    for i in range(len(ds)):
        ids = ds.tokens(i)
        assert ids.dtype == np.int64 and ids.size == tm.video_tokens
        clip = load_clip(ds.document(i)["path"], CLIP)
        x = torch.from_numpy(clip).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
        assert np.array_equal(enc(x)[0].reshape(-1).numpy(), ids)  # exactly the encoder's ids, in T,H,W order
        grid = torch.from_numpy(ids).reshape(1, tm.grid.t, tm.grid.h, tm.grid.w)
        out = ((dec(grid)[0].permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).numpy()
        worst = min(worst, 10 * np.log10(255**2 / ((out - clip) ** 2).mean()))
    assert worst > 22, f"worst decode-back PSNR {worst:.1f} dB"
    s = summary(base_run)
    assert s["tokens"] == 40 * tm.video_tokens and s["tokens_per_video"] == tm.video_tokens
    assert s["videos_in"] == 44 and s["tokenized"] == 40 and s["splits"] == {"train": 32, "val": 4, "test": 4}
    assert sorted(d["index"] for d in s["documents"]) == list(range(40))


def test_every_broken_input_is_named_with_its_reason(base_run: RunPaths) -> None:
    s = summary(base_run)
    reasons = {x["name"]: x["reason"] for x in s["skipped"]}
    assert sorted(reasons) == sorted(synth.BAD_FILES)
    assert reasons["empty.mp4"] == "empty file: 0 bytes"
    for name in ("corrupt.mp4", "truncated.mp4", "notes.mp4"):
        assert reasons[name].startswith("cannot decode: "), reasons[name]
    assert sorted(n for names in s["skipped_by_kind"].values() for n in names) == sorted(synth.BAD_FILES)
    manifests = [json.loads(base_run.shard_manifest(k).read_text()) for k in range(4)]
    assert sum(len(m["videos"]) for m in manifests) == 40
    assert all(m["stats"]["clips"] == len(m["videos"]) and 0 < m["stats"]["encoder_busy"] <= 1 for m in manifests)


def _copy_run(src: RunPaths, dst: Path, **tokenize: int) -> RunPaths:
    spec = load_run_spec(src)
    spec = dataclasses.replace(spec, tokenize=dataclasses.replace(spec.tokenize, **tokenize))
    dst.mkdir(parents=True)
    (dst / "spec.json").write_text(json.dumps(spec_mod.to_dict(spec)))
    (dst / "inputs.jsonl").write_bytes((src.root / "inputs.jsonl").read_bytes())
    return RunPaths(dst)


@pytest.mark.timeout(240)
def test_sigkill_mid_shard_then_resume_is_byte_identical(base_run: RunPaths, tmp_path: Path) -> None:
    paths = _copy_run(base_run, tmp_path / "run", batch_size=1, decode_workers=0)
    run_task(str(paths.root), "stage-assets", 0)
    for s in (0, 2, 3):
        run_task(str(paths.root), "tokenize", s)
    code = f"from harness.launch.worker import run_task; run_task({str(paths.root)!r}, 'tokenize', 1)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    # Step the process in 5 ms slices and look while it is stopped, so the kill lands while its temp
    # shard exists however fast (or loaded) the machine is.
    tmp_bin = None
    deadline = time.monotonic() + 120
    while tmp_bin is None and proc.poll() is None and time.monotonic() < deadline:
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.005)
        proc.send_signal(signal.SIGSTOP)
        time.sleep(0.002)
        tmp_bin = next((paths.root / "tokens").glob(".*shard-00001.bin.*.tmp*"), None)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert tmp_bin is not None and proc.returncode == -signal.SIGKILL, "tokenize[1] finished before the kill"
    assert not paths.shard_manifest(1).exists() and not paths.marker("tokenize", 1).exists()
    with pytest.raises(HarnessError, match="shard 1: manifest shard-00001.manifest.json missing"):
        run_task(str(paths.root), "merge", 0)
    run_task(str(paths.root), "tokenize", 1)  # resubmit only that index
    assert not list((paths.root / "tokens").glob(".*.tmp*"))
    run_task(str(paths.root), "merge", 0)
    assert dataset_bytes(paths) == dataset_bytes(base_run)


@pytest.mark.timeout(240)
def test_verified_shards_are_skipped_and_tampered_ones_redone(base_run: RunPaths, tmp_path: Path) -> None:
    paths = _copy_run(base_run, tmp_path / "run", batch_size=1, decode_workers=0)
    run_task(str(paths.root), "stage-assets", 0)
    spec = load_run_spec(paths)
    tokenize = worker("tokenize")
    for s in range(4):
        tokenize(spec, s, paths)
    before = paths.shard_manifest(2).stat().st_mtime_ns
    tokenize(spec, 2, paths)
    assert paths.shard_manifest(2).stat().st_mtime_ns == before  # verified: not redone
    bin2 = Path(f"{paths.shard_prefix(2)}.bin")
    bin2.write_bytes(b"\xff" + bin2.read_bytes()[1:])
    assert "does not match its manifest checksum" in (dataset.verify_shard(paths, 2) or "")
    with pytest.raises(HarnessError, match="shard 2: bin file .* does not match"):
        worker("merge")(spec, 0, paths)
    paths.shard_manifest(3).unlink()  # as if killed between the renames and the manifest
    tokenize(spec, 2, paths)
    tokenize(spec, 3, paths)
    worker("merge")(spec, 0, paths)
    # batch size and decode workers change how the work is scheduled, never the bytes
    assert dataset_bytes(paths) == dataset_bytes(base_run)


def test_encoder_with_another_grid_fails_with_the_token_math(base_run: RunPaths, tmp_path: Path) -> None:
    other = synth.write_tokenizer(tmp_path / "tok-2x4x4", (2, 4, 4))
    paths = _copy_run(base_run, tmp_path / "run")
    (paths.root / "assets.json").write_text(json.dumps({"encoder": str(other), "decoder": str(other)}))
    with pytest.raises(HarnessError, match=r"grid .* the token math expects 5x6x8"):
        worker("tokenize")(load_run_spec(paths), 0, paths)


def _id_clip(path: Path) -> None:
    """Frame 0 in the colour the tiny tokenizer maps to code 12345, the rest white (code 63999)."""
    dec = synth.TinyDVDecoder(4, 8, 8)
    rgb = [((dec(torch.full((1, 1, 1, 1), c))[0, :, 0, 0, 0] + 1) * 127.5).round().numpy() for c in (12345, 63999)]
    frames = np.empty((CLIP.frames, CLIP.height, CLIP.width, 3), np.uint8)
    frames[0], frames[1:] = rgb[0], rgb[1]
    write_mp4(path, frames, fps=25)


@pytest.mark.timeout(240)
def test_video2world_ids_are_exact_and_prompts_embedded(tmp_path_factory: pytest.TempPathFactory,
                                                        tmp_path: Path) -> None:
    assets, videos = session_assets(tmp_path_factory), session_videos(tmp_path_factory)
    _id_clip(tmp_path / "ids.mp4")
    good = [(f"clip {i}", str(videos / f"clip_{i:03d}.mp4")) for i in range(3)]
    good += [("ids clip", str(tmp_path / "ids.mp4"))]
    good += [("", str(videos / "clip_003.mp4")), ("a robot arm moves " * 200, str(videos / "clip_004.mp4"))]
    lines = [json.dumps({"prompt": p, "visual_input": v}) for p, v in good]
    lines += ['{"prompt": "half a line"', json.dumps({"prompt": "no video"}),
              json.dumps({"prompt": "gone", "visual_input": "nowhere.mp4"}),
              json.dumps({"prompt": "dup", "visual_input": good[0][1]}),
              json.dumps({"prompt": "broken file", "visual_input": str(videos / "corrupt.mp4")})]
    (tmp_path / "v2w.jsonl").write_text("\n".join(lines) + "\n")
    paths = make_run(tmp_path / "run", make_spec(assets, jsonl=str(tmp_path / "v2w.jsonl"), shards=2))
    for stage, task in [("stage-assets", 0), ("tokenize", 0), ("tokenize", 1), ("merge", 0)]:
        run_task(str(paths.root), stage, task)
    ds = open_dataset(paths)
    tm = load_run_spec(paths).token_math
    assert len(ds) == 6 and ds.video2world and tm.sample_length == tm.video_tokens + 65
    docs = {Path(ds.document(i)["path"]).name: i for i in range(len(ds))}
    ids = ds.tokens(docs["ids.mp4"])
    cells = tm.grid.h * tm.grid.w
    assert ids[0] == tokens.BOV_ID and (ids[-64:] == tokens.PAD_ID).all()
    assert (ids[1:1 + cells] == 12345).all() and (ids[1 + cells:1 + tm.video_tokens] == 63999).all()
    enc = prompts.load(Path(assets["text_encoder_dir"]), torch.device("cpu"))
    for prompt, video in good:
        i = docs[Path(video).name]
        want, length = prompts.encode(enc, [prompt])
        assert np.allclose(ds.prompt_embedding(i), want[0], atol=1e-5) and ds.prompt_length(i) == length[0]
    reasons = {x["name"]: x["reason"] for x in summary(paths)["skipped"]}
    assert reasons == {
        "v2w.jsonl:7": reasons["v2w.jsonl:7"],
        "v2w.jsonl:8": "line 8: missing key: visual_input (each line needs prompt and visual_input)",
        "nowhere.mp4": "line 9: visual_input not found: no such file",
        "clip_000.mp4": "line 10: duplicate visual_input: first on line 1; this line and its prompt are left out",
        "corrupt.mp4": reasons["corrupt.mp4"],
    }
    assert reasons["corrupt.mp4"].startswith("cannot decode")
    assert reasons["v2w.jsonl:7"].startswith("line 7: not valid JSON: ")
    long_tokens = prompts.token_counts(enc, [good[5][0]])[0]
    assert long_tokens > prompts.MAX_LENGTH
    assert [(n["name"], n["note"]) for n in summary(paths)["prompt_notes"]] == [
        ("clip_003.mp4", "empty prompt: the video is conditioned on no text"),
        ("clip_004.mp4", f"prompt of {long_tokens:,} T5 tokens cut to the first 512")]


def test_bf16_saved_encoder_runs_in_fp32_on_cpu(tmp_path: Path) -> None:
    from harness.lib.dvtok import Encoder

    tok = synth.write_tokenizer(tmp_path)
    torch.jit.save(torch.jit.load(str(tok / "encoder.jit")).to(torch.bfloat16), str(tmp_path / "bf16.jit"))
    clips = torch.from_numpy(np.stack([load_clip(p, CLIP) for p in synth.make_clips(tmp_path / "v", 2)]))
    a, b = Encoder.load(tok / "encoder.jit", torch.device("cpu")), Encoder.load(
        tmp_path / "bf16.jit", torch.device("cpu"))
    assert np.array_equal(a.wait(a.submit(clips)), b.wait(b.submit(clips)))
    assert a.busy_s > 0
