"""Synthetic artifacts for the quickstart and the tests: a tiny FSQ video tokenizer with the Cosmos DV
interface, a tiny T5 prompt encoder, real mp4 clips (good and broken), and a local HF cache laid out like
the hub's, so the real loading code (`snapshot_download` with HF_HUB_OFFLINE=1, `torch.jit.load`,
`T5EncoderModel.from_pretrained`) runs unchanged where no model hub is reachable.

The tiny tokenizer is exact FSQ bookkeeping around a crude codec: the mean RGB colour of each t x h x w patch
is quantized to 40 levels per channel, written as a coarse (8 levels) and a fine (5 levels) FSQ digit, so
the 6 digits of a latent cell reach every one of the real 64,000 codes and decode(encode(x)) approximates
smooth clips.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from harness.core.atomic import atomic_write_bytes, atomic_write_json
from harness.lib.video import write_mp4

FSQ_LEVELS = (8, 8, 8, 5, 5, 5)
TOKENIZER_REPO = "harness-synth/tiny-dv4x8x8"
"""Repo id of the quickstart tokenizer in its local HF cache (other compressions: tokenizer_repo())."""
TEXT_ENCODER_REPO = "harness-synth/tiny-t5"


# ------------------------------------------------------------------------------------ tokenizer
class TinyDVEncoder(nn.Module):
    """[B,3,T,H,W] in [-1,1] -> (indices [B,T',H',W'] int64, codes [B,6,T',H',W']); causal in time."""
    if TYPE_CHECKING:  # buffers (register_buffer); TorchScript cannot read string class annotations
        basis: torch.Tensor
        levels: torch.Tensor

    def __init__(self, t: int, h: int, w: int) -> None:
        super().__init__()
        self.t, self.h, self.w = t, h, w
        self.register_buffer("basis", torch.tensor([1, 8, 64, 512, 2560, 12800], dtype=torch.int64))
        self.register_buffer("levels", torch.tensor(FSQ_LEVELS, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.float()  # FSQ digits and indices are computed in fp32 whatever the input dtype: exact
        first = F.avg_pool3d(x[:, :, :1], kernel_size=(1, self.h, self.w))
        k = (x.shape[2] - 1) // self.t
        if k > 0:
            rest = F.avg_pool3d(x[:, :, 1:1 + k * self.t], kernel_size=(self.t, self.h, self.w))
            z = torch.cat([first, rest], dim=2)
        else:
            z = first
        q = torch.round((z.clamp(-1.0, 1.0) + 1.0) * 19.5)  # 40 levels per colour channel: 8 coarse x 5 fine
        coarse = torch.div(q, 5.0, rounding_mode="floor")
        digits = torch.cat([coarse, q - 5.0 * coarse], dim=1)
        index = (digits.to(torch.int64) * self.basis.view(1, 6, 1, 1, 1)).sum(dim=1)
        codes = digits / (self.levels.view(1, 6, 1, 1, 1) - 1.0) * 2.0 - 1.0
        return index, codes


class TinyDVDecoder(nn.Module):
    """indices [B,T',H',W'] -> video [B,3,1+(T'-1)t,H'h,W'w] in [-1,1]."""
    if TYPE_CHECKING:  # buffers (register_buffer); TorchScript cannot read string class annotations
        basis: torch.Tensor
        levels_i: torch.Tensor

    def __init__(self, t: int, h: int, w: int) -> None:
        super().__init__()
        self.t, self.h, self.w = t, h, w
        self.register_buffer("basis", torch.tensor([1, 8, 64, 512, 2560, 12800], dtype=torch.int64))
        self.register_buffer("levels_i", torch.tensor(FSQ_LEVELS, dtype=torch.int64))

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        idx = indices.to(torch.int64).unsqueeze(1)
        digits = (idx // self.basis.view(1, 6, 1, 1, 1)) % self.levels_i.view(1, 6, 1, 1, 1)
        d = digits.float()
        z = (d[:, :3] * 5.0 + d[:, 3:]) / 19.5 - 1.0  # [B,3,T',H',W']
        b, c, tl, hl, wl = z.shape
        frames = torch.cat([z[:, :, :1], z[:, :, 1:].repeat_interleave(self.t, dim=2)], dim=2)
        tt = frames.shape[2]
        flat = frames.permute(0, 2, 1, 3, 4).reshape(b * tt, c, hl, wl)
        up = F.interpolate(flat, size=[hl * self.h, wl * self.w], mode="bilinear", align_corners=False)
        return up.reshape(b, tt, c, hl * self.h, wl * self.w).permute(0, 2, 1, 3, 4).clamp(-1.0, 1.0)


def write_tokenizer(out_dir: str | Path, compression: tuple[int, int, int] = (4, 8, 8)) -> Path:
    """encoder.jit, decoder.jit and config.json, as the Cosmos DV repos hold them."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t, h, w = compression
    for name, module in (("encoder.jit", TinyDVEncoder(t, h, w)), ("decoder.jit", TinyDVDecoder(t, h, w))):
        scripted = torch.jit.script(module.eval())
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            torch.jit.save(scripted, f"{tmp}/{name}")
            atomic_write_bytes(out / name, Path(f"{tmp}/{name}").read_bytes())
    atomic_write_json(out / "config.json", {"name": f"tiny-dv{t}x{h}x{w}", "compression": [t, h, w],
                                            "levels": list(FSQ_LEVELS), "vocab_size": int(np.prod(FSQ_LEVELS))})
    return out


# ------------------------------------------------------------------------------------ text encoder
_WORDS = ("a video of robot arm car road moving camera red blue green ball the on in with and slowly "
          "fast left right up down scene light dark city street person walking").split()


def write_text_encoder(out_dir: str | Path, d_model: int = 32) -> Path:
    """A 2-layer T5EncoderModel and a unigram tokenizer saved with save_pretrained (offline-loadable)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    out = Path(out_dir)
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789.,'-!?:;()"))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -1.0) for w in _WORDS] + [(c, -5.0) for c in chars] + [("\u2581" + c, -4.0) for c in chars]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=512)
    fast.save_pretrained(out)
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(vocab), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2,
                      num_heads=4, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                      decoder_start_token_id=0)
    T5EncoderModel(config).eval().save_pretrained(out)
    return out


# ------------------------------------------------------------------------------------ clips
def smooth_clip(frames: int, height: int, width: int, seed: int) -> NDArray[Any]:
    """uint8 [T,H,W,3]: drifting low-frequency colour waves and a moving soft blob; tokenizer-friendly."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames, dtype=np.float32)[:, None, None, None]
    y = np.linspace(0, 1, height, dtype=np.float32)[None, :, None, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, None, :, None]
    fx, fy = rng.uniform(0.5, 1.5, 3), rng.uniform(0.5, 1.5, 3)
    phase, speed = rng.uniform(0, 2 * np.pi, 3), rng.uniform(0.05, 0.15, 3)
    img = 0.5 + 0.3 * np.sin(2 * np.pi * (fx * x + fy * y) + phase + speed * t)
    cx, cy = rng.uniform(0.3, 0.7, 2)
    vx, vy = rng.uniform(-0.02, 0.02, 2)
    blob = np.exp(-(((x - cx - vx * t) ** 2) + ((y - cy - vy * t) ** 2)) / 0.03)
    img = img + 0.2 * blob * rng.uniform(-1, 1, 3)
    frame: NDArray[np.uint8] = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    return frame


CLIP_SHAPES = ((17, 48, 64), (13, 64, 96), (21, 96, 48), (9, 40, 72), (17, 80, 80), (25, 56, 96))
"""(frames, height, width): several sizes and aspect ratios; some shorter than 17 frames (padded)."""


def make_clips(out_dir: str | Path, count: int, *, seed: int = 0, fps: int = 25) -> list[Path]:
    out = Path(out_dir)
    paths = []
    for i in range(count):
        frames, height, width = CLIP_SHAPES[i % len(CLIP_SHAPES)]
        path = out / f"clip_{i:03d}.mp4"
        write_mp4(path, smooth_clip(frames, height, width, seed * 100_003 + i), fps)
        paths.append(path)
    return paths


BAD_FILES = ("corrupt.mp4", "truncated.mp4", "empty.mp4", "notes.mp4")
"""Broken inputs make_bad_files writes: random bytes, a clip cut in half, zero bytes, a text file."""


def make_bad_files(out_dir: str | Path, *, seed: int = 0) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    (out / "corrupt.mp4").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with tempfile.TemporaryDirectory() as tmp:
        write_mp4(Path(tmp) / "c.mp4", smooth_clip(17, 48, 64, seed), 25)
        data = (Path(tmp) / "c.mp4").read_bytes()
    (out / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (out / "empty.mp4").write_bytes(b"")
    (out / "notes.mp4").write_text("this is not a video\n")
    return [out / n for n in BAD_FILES]


def write_jsonl(path: str | Path, videos: list[Path], *, relative: bool = True) -> Path:
    """A Video2World jsonl, one {"prompt", "visual_input"} line per video (paths relative to the file)."""
    path = Path(path)
    lines = []
    for i, v in enumerate(videos):
        ref = v.relative_to(path.parent) if relative else v
        prompt = f"a video of a {_WORDS[(3 * i) % len(_WORDS)]} {_WORDS[(5 * i + 1) % len(_WORDS)]} moving slowly"
        lines.append(json.dumps({"prompt": prompt, "visual_input": str(ref)}))
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


# ------------------------------------------------------------------------------------ HF cache
def write_hf_snapshot(hf_home: str | Path, repo_id: str, files: Mapping[str, bytes | Path]) -> Path:
    """Lay out `$HF_HOME/hub/models--org--name/snapshots/<sha>/...` + `refs/main` as the hub client does,
    so `snapshot_download(repo_id, local_files_only=True)` finds it. A Path value may be a directory."""
    repo_dir = Path(hf_home).expanduser() / "hub" / ("models--" + repo_id.replace("/", "--"))
    digest = hashlib.sha1(repo_id.encode())
    for name in sorted(files):
        value = files[name]
        digest.update(name.encode())
        digest.update(value if isinstance(value, bytes) else _path_digest(value))
    commit = digest.hexdigest()
    snap = repo_dir / "snapshots" / commit
    for name, value in files.items():
        dest = snap / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(value, bytes):
            dest.write_bytes(value)
        elif Path(value).is_dir():
            shutil.copytree(value, dest, dirs_exist_ok=True)
        else:
            shutil.copyfile(value, dest)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return snap


def _path_digest(p: Path) -> bytes:
    p = Path(p)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.digest()


# ------------------------------------------------------------------------------------ quickstart
def tokenizer_repo(compression: tuple[int, int, int]) -> str:
    return "harness-synth/tiny-dv{}x{}x{}".format(*compression)


SYNTH_MARKER = ".harness-synth"


def make_quickstart(out_dir: str | Path, *, clips: int = 12, bad_files: bool = True,
                    compression: tuple[int, int, int] = (4, 8, 8)) -> dict[str, str]:
    """Everything a CPU quickstart run needs, under out_dir; returns the paths/ids a spec refers to. The folder
    is marked (`SYNTH_MARKER`) as synth's own, so a later run may rewrite it and `harness synth` knows a folder
    of someone's real files from it."""
    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    (out / SYNTH_MARKER).touch()
    videos = make_clips(out / "videos", clips)
    if bad_files:
        make_bad_files(out / "videos")
    jsonl = write_jsonl(out / "video2world.jsonl", videos)
    tok_dir = write_tokenizer(out / "tokenizer", compression)
    t5_dir = write_text_encoder(out / "text-encoder")
    hf_home = out / "hf"
    tok_repo = tokenizer_repo(compression)
    write_hf_snapshot(hf_home, tok_repo, {n: tok_dir / n for n in ("encoder.jit", "decoder.jit", "config.json")})
    write_hf_snapshot(hf_home, TEXT_ENCODER_REPO, {f.name: f for f in t5_dir.iterdir() if f.is_file()})
    return {"videos": str(out / "videos"), "jsonl": str(jsonl), "tokenizer_dir": str(tok_dir),
            "tokenizer_repo": tok_repo, "text_encoder_dir": str(t5_dir),
            "text_encoder_repo": TEXT_ENCODER_REPO, "hf_home": str(hf_home)}
