"""The one spec builder of the test suite: a spec is a dict of sections, built from layers (section dicts or TOML
text) merged in order, so the tiny-artifact defaults live here once and each test states only what it changes.
A layer value of None removes that key. `build` gives the frozen RunSpec, `text`/`write` the TOML a user would
write (what `harness submit` reads)."""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path
from typing import Any, Mapping, Union

from harness.core import spec as spec_mod
from harness.lib import synth

Layer = Union[Mapping[str, Mapping[str, Any]], str, None]

TINY_VIDEO = {"width": 32, "height": 32, "num_frames": 9}
"""9 x 32 x 32 @ 4x8x8 -> grid 3x4x4 = 48 tokens: a whole video per sample, cheap on CPU."""

TINY: dict[str, dict[str, Any]] = {"model": {"preset": "tiny"}, "video": dict(TINY_VIDEO)}
"""The smallest valid model shape; add [data] for a spec that validates."""

V2W: dict[str, dict[str, Any]] = {"run": {"recipe": "video2world"},
                                  "model": {"preset": "tiny-v2w", "text_encoder": synth.TEXT_ENCODER_REPO}}
"""Video2World on the tiny model: also give [data] jsonl (and drop videos)."""

QUICK_JOBS: dict[str, dict[str, Any]] = {
    "assets": {"time_min": 5}, "tokenize": {"decode_workers": 0, "time_min": 5}, "merge": {"time_min": 5},
    "finetune": {"engine": "mcore", "max_epochs": 1000, "time_min": 10}, "infer": {"time_min": 10},
    "evaluate": {"time_min": 10}, "report": {"time_min": 5}}
"""Slurm jobs of a tiny run: minutes of wall time each, one decode worker, the CPU engine."""


def tiny_run(tmp: Path, *, name: str, videos: Path | str = "", hf: Path | str = "",
             tokenizer: str = synth.TOKENIZER_REPO) -> dict[str, dict[str, Any]]:
    """A tiny run writing under tmp (runs/, results/): the tiny model, tokenizer repo and HF cache, the inputs."""
    return merge(TINY, {
        "run": {"name": name, "workdir": str(tmp / "runs"), "results_dir": str(tmp / "results")},
        "tokenizer": {"encoder": tokenizer, "decoder": tokenizer},
        "data": {"videos": str(videos)} if videos else {},
        "assets": {"hf_home": str(hf)} if hf else {}})


def merge(*layers: Layer) -> dict[str, dict[str, Any]]:
    """Sections of all layers, later keys winning; TOML text layers are parsed first."""
    out: dict[str, dict[str, Any]] = {}
    for layer in layers:
        if layer is None:
            continue
        for name, table in (tomllib.loads(layer) if isinstance(layer, str) else layer).items():
            section = out.setdefault(name, {})
            for key, value in table.items():
                if value is None:
                    section.pop(key, None)
                else:
                    section[key] = value
    return out


def build(*layers: Layer) -> spec_mod.RunSpec:
    return spec_mod.from_dict(merge(*layers))


def text(*layers: Layer) -> str:
    return "".join(f"[{name}]\n" + "".join(f"{_key(k)} = {_value(v)}\n" for k, v in table.items())
                   for name, table in merge(*layers).items())


def write(path: Path, *layers: Layer) -> Path:
    path.write_text(text(*layers), encoding="utf-8")
    return path


_BARE = re.compile(r"[A-Za-z0-9_-]+")


def _key(key: str) -> str:
    return key if _BARE.fullmatch(key) else _string(key)


def _string(s: str) -> str:
    """A TOML basic string: quote, backslash and control characters escaped, everything else kept as is."""
    def esc(m: re.Match[str]) -> str:
        c = m.group()
        return "\\" + c if c in '"\\' else f"\\u{ord(c):04x}"
    return '"' + re.sub(r'["\\\x00-\x1f\x7f]', esc, s) + '"'


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")) if not math.isfinite(v) else repr(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, Path):
        return _string(str(v))
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML form for {type(v).__name__}: {v!r}")
