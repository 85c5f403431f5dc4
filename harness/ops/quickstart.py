"""`harness quickstart`: the shipped quickstart spec, pointed at the assets folder the user chose.

configs/quickstart.toml names its synthetic clips, tokenizer and HF cache under `.quickstart/`; with
`--assets DIR` those paths must follow DIR, or the run would read (or miss) the default folder."""

from __future__ import annotations

import json
from pathlib import Path

DEFAULT_ASSETS = ".quickstart"


def spec_for(spec_path: Path, assets: Path) -> Path:
    """`spec_path` itself when `assets` is the default folder; otherwise a copy written into `assets` whose
    `.quickstart/...` values point into `assets` (absolute, so the copy does not depend on where it lives)."""
    if assets.resolve() == (Path.cwd() / DEFAULT_ASSETS).resolve():
        return spec_path
    text = spec_path.read_text(encoding="utf-8")
    target = json.dumps(str(assets.resolve()))[1:-1]  # a TOML basic string body: the same escapes as JSON's
    derived = text.replace(f'"{DEFAULT_ASSETS}/', f'"{target}/')
    out = assets / spec_path.name
    assets.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(derived, encoding="utf-8")
    tmp.replace(out)
    return out


def ensure_assets(assets: Path) -> bool:
    """Write the synthetic clips and tiny tokenizer into `assets` unless they are there; True when written."""
    from harness.lib import synth

    if (assets / "tokenizer" / "encoder.jit").exists():
        return False
    synth.make_quickstart(assets)
    return True
