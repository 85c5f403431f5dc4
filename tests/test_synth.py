"""Synthetic artifacts: the tiny DV tokenizer's interface and accuracy, the tiny T5, the HF cache layout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.lib import prompts, synth
from harness.lib.video import ClipShape, load_clip


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth.write_tokenizer(tmp_path_factory.mktemp("tok"))


def _load(d: Path) -> tuple[torch.jit.ScriptModule, torch.jit.ScriptModule]:
    return torch.jit.load(str(d / "encoder.jit")), torch.jit.load(str(d / "decoder.jit"))


def test_interface_and_causal_latent_frames(tok: Path) -> None:
    enc, dec = _load(tok)
    for frames in (1, 5, 9, 17, 20):
        x = torch.rand(2, 3, frames, 32, 48) * 2 - 1
        idx, codes = enc(x)
        lt = (frames - 1) // 4 + 1
        assert idx.dtype == torch.int64 and idx.shape == (2, lt, 4, 6)
        assert codes.shape == (2, 6, lt, 4, 6) and codes.min() >= -1 and codes.max() <= 1
        assert 0 <= int(idx.min()) and int(idx.max()) < 64_000
        assert dec(idx).shape == (2, 3, 1 + (lt - 1) * 4, 32, 48)
    assert (Path(tok) / "config.json").is_file()


def test_every_code_of_the_vocabulary_round_trips(tok: Path) -> None:
    """decode -> uint8 -> encode returns each of the 64,000 FSQ indices: the whole vocabulary is reachable."""
    enc, dec = _load(tok)
    codes = torch.arange(64_000).reshape(64_000, 1, 1, 1)
    video = dec(codes)
    as_u8 = ((video + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1
    assert torch.equal(enc(as_u8)[0].reshape(-1), codes.reshape(-1))
    assert torch.equal(enc(as_u8.bfloat16())[0].reshape(-1)[:512], codes.reshape(-1)[:512])


def test_configurable_compression(tmp_path: Path) -> None:
    enc, dec = _load(synth.write_tokenizer(tmp_path, (2, 4, 4)))
    idx, _ = enc(torch.zeros(1, 3, 9, 16, 24))
    assert idx.shape == (1, 5, 4, 6) and dec(idx).shape == (1, 3, 9, 16, 24)


def test_reconstruction_of_smooth_clips(tok: Path, tmp_path: Path) -> None:
    enc, dec = _load(tok)
    for i, path in enumerate(synth.make_clips(tmp_path, 6)):
        clip = load_clip(path, ClipShape(17, 48, 64))
        x = torch.from_numpy(clip).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
        y = dec(enc(x)[0])[0].permute(1, 2, 3, 0)
        out = ((y + 1) * 127.5).round().clamp(0, 255).numpy()
        psnr = 10 * np.log10(255**2 / ((out - clip) ** 2).mean())
        assert psnr > 22, (path, psnr)
        noise = np.random.default_rng(i).integers(0, 256, clip.shape).astype(float)
        assert 10 * np.log10(255**2 / ((out - noise) ** 2).mean()) < 12


def test_clips_have_the_advertised_shapes(tmp_path: Path) -> None:
    import av

    for path, (frames, height, width) in zip(synth.make_clips(tmp_path, 6), synth.CLIP_SHAPES):
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            assert (s.codec_context.width, s.codec_context.height) == (width, height)
            assert sum(1 for _ in c.decode(s)) == frames


def test_text_encoder_loads_offline_and_zeroes_padding(tmp_path: Path) -> None:
    d = synth.write_text_encoder(tmp_path / "t5")
    enc = prompts.load(d, torch.device("cpu"))
    emb, lengths = prompts.encode(enc, ["a video of a robot arm", "the red car moving fast on the road today"])
    assert emb.shape == (2, prompts.MAX_LENGTH, 32) and emb.dtype == np.float32
    assert 0 < lengths[0] < lengths[1] < 40
    assert np.abs(emb[0, : lengths[0]]).sum() > 0 and not emb[0, lengths[0]:].any()
    again, _ = prompts.encode(enc, ["a video of a robot arm"])
    assert np.allclose(again[0], emb[0], atol=1e-5)


@pytest.mark.timeout(120)
def test_hf_snapshot_is_found_offline_by_the_hub_client(tmp_path: Path) -> None:
    snap = synth.write_hf_snapshot(tmp_path / "hf", "org/tiny", {"config.json": b"{}", "sub/w.bin": b"\x00\x01"})
    assert snap.parent.name == "snapshots" and len(snap.name) == 40
    code = ("import sys; from huggingface_hub import snapshot_download, hf_hub_download; "
            "p = snapshot_download('org/tiny', local_files_only=True); "
            "f = hf_hub_download('org/tiny', 'sub/w.bin'); print(p); print(f)")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=100)
    assert out.returncode == 0, out.stderr
    p, f = out.stdout.split()
    assert Path(p) == snap and Path(f).read_bytes() == b"\x00\x01"


def test_quickstart_writes_every_artifact(tmp_path: Path) -> None:
    out = synth.make_quickstart(tmp_path / "qs", clips=3)
    assert sorted(p.name for p in Path(out["videos"]).iterdir()) == sorted(
        ["clip_000.mp4", "clip_001.mp4", "clip_002.mp4", *synth.BAD_FILES])
    assert len(Path(out["jsonl"]).read_text().splitlines()) == 3
    assert (Path(out["tokenizer_dir"]) / "encoder.jit").is_file()
    repo = Path(out["hf_home"]) / "hub" / ("models--" + out["tokenizer_repo"].replace("/", "--"))
    assert (repo / "refs" / "main").is_file()
    assert (Path(out["text_encoder_dir"]) / "config.json").is_file()


def test_synth_never_overwrites_a_folder_of_other_files(tmp_path: Path) -> None:
    """`harness synth --out` rewrites its own folder (quickstart reruns) but refuses one holding other files."""
    from harness import cli

    mine = tmp_path / "mine"
    (mine / "videos").mkdir(parents=True)
    (mine / "videos" / "clip_000.mp4").write_bytes(b"a real video")
    assert cli.main(["synth", "--out", str(mine)]) == 2
    assert (mine / "videos" / "clip_000.mp4").read_bytes() == b"a real video"
    ours = tmp_path / "ours"
    assert cli.main(["synth", "--out", str(ours)]) == 0 and cli.main(["synth", "--out", str(ours)]) == 0
