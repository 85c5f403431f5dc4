"""Shared helpers for the data-preparation tests: synthetic inputs, a run directory, stage runs in-process."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import specs
from harness.core import spec as spec_mod
from harness.core.atomic import atomic_write_json
from harness.core.paths import RunPaths
from harness.launch.worker import run_task
from harness.lib import synth
from harness.ops.inputs import discover
from harness.stages import inputs
from shared_util import file_lock, shared_root

SHAPE = {"num_frames": 17, "height": 48, "width": 64}


def make_assets(root: Path) -> dict[str, str]:
    """Tiny tokenizer + tiny T5 in a local HF cache under root (as the quickstart builds them)."""
    tok = synth.write_tokenizer(root / "tokenizer")
    t5 = synth.write_text_encoder(root / "text-encoder")
    hf = root / "hf"
    synth.write_hf_snapshot(hf, synth.TOKENIZER_REPO, {n: tok / n for n in ("encoder.jit", "decoder.jit",
        "config.json")})
    synth.write_hf_snapshot(hf, synth.TEXT_ENCODER_REPO, {f.name: f for f in t5.iterdir() if f.is_file()})
    return {"hf_home": str(hf), "tokenizer_dir": str(tok), "text_encoder_dir": str(t5)}


def make_spec(art: dict[str, str], /, *, videos: str = "", jsonl: str = "", shards: int = 4,
              **sections: dict[str, Any]) -> spec_mod.RunSpec:
    return specs.build(
        specs.TINY, specs.V2W if jsonl else None,
        {"run": {"name": "t", "seed": 7}, "model": {"text_encoder": synth.TEXT_ENCODER_REPO},
         "tokenizer": {"encoder": synth.TOKENIZER_REPO, "decoder": synth.TOKENIZER_REPO, "compression": [4, 8, 8]},
         "video": SHAPE, "data": {"videos": videos, "jsonl": jsonl, "split": [8, 1, 1]},
         "assets": {"hf_home": art["hf_home"]},
         "tokenize": {"shards": shards, "batch_size": 3, "decode_workers": 1, "device": "cpu"}},
        sections)


def make_run(root: Path, spec: spec_mod.RunSpec) -> RunPaths:
    """A submitted-looking run directory: spec.json and inputs.jsonl, as the launcher writes them."""
    paths = RunPaths(root)
    root.mkdir(parents=True, exist_ok=True)
    items = discover(spec)
    if spec.tokenize.shards == 0:
        spec = dataclasses.replace(spec, tokenize=dataclasses.replace(spec.tokenize, shards=len(items)))
    atomic_write_json(paths.spec_json, spec_mod.to_dict(spec))
    inputs.write_inputs(paths, items)
    return paths


def run_all(paths: RunPaths, shards: int) -> None:
    run_task(str(paths.root), "stage-assets", 0)
    for s in range(shards):
        run_task(str(paths.root), "tokenize", s)
    run_task(str(paths.root), "merge", 0)


def dataset_bytes(paths: RunPaths) -> dict[str, bytes]:
    """Every file of the merged dataset, by name (for byte-identity checks)."""
    d = paths.dataset_prefix.parent
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if not p.name.startswith(".")}


def summary(paths: RunPaths) -> dict[str, Any]:
    return json.loads(paths.dataset_summary.read_text())


def cached_dir(factory: Any, name: str, build: Any) -> Path:
    """A directory built once per pytest run, shared by test modules and by xdist workers (the first worker
    builds it under a lock, the others wait and reuse it); `.built` is written last."""
    root = shared_root(factory) / f"data-{name}"
    with file_lock(root.with_name(root.name + ".lock")):
        if not (root / ".built").is_file():
            if root.exists():
                shutil.rmtree(root)  # a build interrupted before its marker
            root.mkdir(parents=True)
            build(root)
            (root / ".built").write_text("ok")
    return root


def session_assets(factory: Any) -> dict[str, str]:
    root = cached_dir(factory, "assets", make_assets)
    return {"hf_home": str(root / "hf"), "tokenizer_dir": str(root / "tokenizer"),
            "text_encoder_dir": str(root / "text-encoder")}


def session_videos(factory: Any) -> Path:
    """40 good clips of several sizes and lengths plus the four broken files."""
    def build(root: Path) -> None:
        synth.make_clips(root, 40)
        synth.make_bad_files(root)
    return cached_dir(factory, "videos", build)


def session_base_run(factory: Any) -> RunPaths:
    """The clean reference run: 44 inputs (4 broken) over 4 shards, stage-assets -> tokenize[4] -> merge."""
    assets, videos = session_assets(factory), session_videos(factory)

    def build(root: Path) -> None:
        paths = make_run(root / "run", make_spec(assets, videos=str(videos)))
        run_all(paths, 4)
    return RunPaths(cached_dir(factory, "base-run", build) / "run")


def write_standins(root: Path, items: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, Path]:
    """Stand-in pretrained checkpoints (`harness.cosmos.pretrained.write_tiny_pretrained`), name -> (preset,
    keyword arguments; `replace` changes preset fields), written by one child process: the writer initialises
    torch.distributed, which the test process keeps out of."""
    import os
    import subprocess
    import sys

    lines = ["import dataclasses", "from harness.core.models import PRESETS",
             "from harness.cosmos.pretrained import write_tiny_pretrained", "if __name__ == '__main__':"]
    for name, (preset, kw) in items.items():
        kw = dict(kw)
        replace = kw.pop("replace", {})
        lines.append(f"    write_tiny_pretrained({str(root / name)!r}, "
                     f"dataclasses.replace(PRESETS[{preset!r}], **{replace!r}), **{kw!r})")
    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", "\n".join(lines)], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {name: root / name for name in items}


def session_standins(factory: Any) -> dict[str, Path]:
    """Tiny stand-in checkpoints: `weights` (NeMo's weights/ + context/), `flat` (weights in the folder itself,
    with metadata.json), `bad` (one wrong shape: a 64,064-row output layer), `extra` (the tiny tensors plus
    cross-attention ones the base model does not have)."""
    items = {"weights": ("tiny", {}), "flat": ("tiny", {"flat": True}),
             "bad": ("tiny", {"replace": {"output_vocab_size": 64_064}}),
             "extra": ("tiny", {"replace": {"video2world": True}})}
    root = cached_dir(factory, "standins", lambda r: write_standins(r, items))
    return {name: root / name for name in items}
