"""What stage-assets left for the later stages: `assets.json`, role -> local directory. The one way a stage finds
a tokenizer, text encoder or checkpoint, so compute nodes never touch the network (runtime hub downloads there are
a known failure). A helper the stages share, not a stage."""

from __future__ import annotations

from pathlib import Path

from harness.core.atomic import read_json
from harness.core.errors import HarnessError
from harness.core.paths import RunPaths


def resolve(paths: RunPaths, role: str) -> Path:
    """The local directory of an asset staged by stage-assets; never downloads."""
    try:
        table = read_json(paths.assets_json)
    except (OSError, ValueError) as e:
        raise HarnessError(f"{paths.assets_json}: cannot read ({e.__class__.__name__}); run stage-assets first") \
            from None
    if role not in table:
        raise HarnessError(f"{paths.assets_json}: no asset '{role}' (staged: {', '.join(sorted(table)) or 'none'})")
    directory = Path(table[role])
    if not directory.is_dir():
        raise HarnessError(f"{paths.assets_json}: asset '{role}' directory {directory} is missing on this node "
                           f"(is assets.hf_home on a filesystem every node sees?)")
    return directory
