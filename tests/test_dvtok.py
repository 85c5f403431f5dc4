"""The DV tokenizer wrapper (harness.lib.dvtok) runs the TorchScript modules as upstream does: the tensor-expression
fuser off before every load (repeated encodes agree bit for bit), pixels scaled in fp32 and then cast once, and no
other place in harness/ loads a TorchScript module."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.lib import dvtok, synth
from harness.lib.video import ClipShape, load_clip

REPO = Path(__file__).resolve().parents[1]

_FRESH = r"""
import sys, numpy as np, torch
from harness.lib import dvtok
# A fresh interpreter: TorchScript's tensor-expression fuser is on. It fuses on a GPU by default; on a CPU only
# with this override, which makes the fuser live here as it is on the cluster's GPUs.
assert torch._C._jit_texpr_fuser_enabled(), "the fuser should be on in a fresh process"
torch._C._jit_override_can_fuse_on_cpu(True)
enc = dvtok.Encoder.load(sys.argv[1], torch.device("cpu"))
assert not torch._C._jit_texpr_fuser_enabled(), "dvtok.Encoder.load left the fuser on"
clip = np.load(sys.argv[2])
runs = [enc.encode(clip).numpy() for _ in range(4)]  # 1-2: profiling runs; 3-4: the optimised graph
graph = str(torch.jit.last_executed_optimized_graph())
assert "TensorExprGroup" not in graph, graph
np.save(sys.argv[3], np.stack(runs))
"""


def test_two_encodes_agree_bit_for_bit_in_a_fresh_process(tmp_path: Path) -> None:
    """With the fuser left on, the same script fails (the CPU wheel has no LLVM backend: "LLVM Backend not
    found"; a build with one compiles a TensorExprGroup, which the graph check rejects)."""
    tok = synth.write_tokenizer(tmp_path / "tok")
    clip = np.stack([load_clip(p, ClipShape(17, 48, 64)) for p in synth.make_clips(tmp_path / "v", 2)])
    np.save(tmp_path / "clip.npy", clip)
    p = subprocess.run([sys.executable, "-c", _FRESH, str(tok / "encoder.jit"), str(tmp_path / "clip.npy"),
                        str(tmp_path / "out.npy")], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert p.returncode == 0, p.stderr[-3000:]
    runs = np.load(tmp_path / "out.npy")
    assert runs.shape == (4, 2, 5, 6, 8) and runs.dtype == np.int64
    for r in runs[1:]:
        assert np.array_equal(r, runs[0])
    assert len(np.unique(runs[0])) > 10  # real tokens, not a constant


def test_pixels_are_scaled_in_fp32_then_cast() -> None:
    """All 256 pixel values against an independent fp32 computation (numpy, upstream's x / 255 * 2 - 1), cast
    once to bf16. Casting to bf16 first and scaling in bf16 (the harness before) differs for 128 of them."""
    values = np.arange(256, dtype=np.uint8)
    clips = torch.from_numpy(np.broadcast_to(values[None, None, :, None, None], (1, 1, 256, 1, 3)).copy())
    reference = np.arange(256, dtype=np.float32) / np.float32(255.0) * np.float32(2.0) - np.float32(1.0)
    got32 = dvtok.normalise(clips, torch.float32)
    got16 = dvtok.normalise(clips, torch.bfloat16)
    assert got16.shape == (1, 3, 1, 256, 1) and got16.is_contiguous() and got16.dtype == torch.bfloat16
    assert np.array_equal(got32[0, 1, 0, :, 0].numpy(), reference)
    want16 = torch.from_numpy(reference).to(torch.bfloat16)
    assert torch.equal(got16[0, 2, 0, :, 0], want16)
    two_roundings = torch.from_numpy(values).to(torch.bfloat16).div(127.5).sub(1.0)
    assert int((two_roundings != want16).sum()) == 128  # the test can tell the two orders apart
    assert float(got32.min()) == -1.0 and float(got32.max()) == 1.0


def test_bf16_weights_run_in_fp32_on_cpu_and_decode_round_trips(tmp_path: Path) -> None:
    tok = synth.write_tokenizer(tmp_path / "tok")
    torch.jit.save(torch.jit.load(str(tok / "encoder.jit")).to(torch.bfloat16), str(tmp_path / "bf16.jit"))
    cpu = torch.device("cpu")
    a, b = dvtok.Encoder.load(tok / "encoder.jit", cpu), dvtok.Encoder.load(tmp_path / "bf16.jit", cpu)
    assert a.dtype == b.dtype == torch.float32
    clip = np.stack([load_clip(p, ClipShape(9, 32, 32)) for p in synth.make_clips(tmp_path / "v", 1)])
    idx = a.encode(clip)
    assert torch.equal(idx, b.encode(clip)) and np.array_equal(a.wait(a.submit(torch.from_numpy(clip))), idx.numpy())
    flat = np.empty_like(clip)
    flat[...] = np.array([100, 150, 200], np.uint8)  # one colour: the tiny codec keeps it to 255 / 39 / 2 per channel
    video = dvtok.Decoder.load(tok / "decoder.jit", cpu).decode(a.encode(flat))
    assert video.shape == clip.shape and video.dtype == np.uint8
    assert np.abs(video.astype(int) - flat.astype(int)).max() <= 4


def test_a_broken_file_is_one_line_naming_it(tmp_path: Path) -> None:
    from harness.core.errors import HarnessError

    bad = tmp_path / "encoder.jit"
    bad.write_bytes(b"not a torchscript archive")
    with pytest.raises(HarnessError, match=re.escape(str(bad)) + ": cannot load TorchScript encoder"):
        dvtok.Encoder.load(bad, torch.device("cpu"))


def test_no_other_module_loads_torchscript() -> None:
    """Every TorchScript load in harness/ goes through dvtok.load_jit (the fuser switch sits there)."""
    loaders = [p.relative_to(REPO).as_posix() for p in (REPO / "harness").rglob("*.py")
               if "torch.jit.load(" in p.read_text(encoding="utf-8")]
    assert loaders == ["harness/lib/dvtok.py"]
