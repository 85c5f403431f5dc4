"""`harness inspect-checkpoint DIR`: a downloaded or staged checkpoint against a preset, from its metadata only, on
the login node, before a finetune job spends queue time on it. The comparison lives in `harness.cosmos.layout`."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from harness.core.errors import HarnessError
from harness.core.models import PRESETS


def inspect_checkpoint(directory: Path, preset: str | None, tp: int, layers: int | None, console: Console) -> int:
    """0 with a one-line summary when every tensor matches; 2 with a table of the mismatches otherwise."""
    from harness.cosmos import layout  # noqa: PLC0415 (torch only for this command)

    if not directory.is_dir():
        raise HarnessError(f"{directory}: no such directory")
    if tp < 1 or (layers is not None and layers < 1):
        raise HarnessError(f"--tp {tp} / --layers {layers}: must be positive")
    root = layout.resolve_pretrained(directory)
    name = layout.preset_name(root, preset)
    found = layout.inspect(root, PRESETS[name], tp, layers)
    if found.ok:
        console.print(found.summary(), markup=False, soft_wrap=True)
        return 0
    rows: list[tuple[str, str, str, str]] = [(m.name, m.kind, _shape(m.stored), _shape(m.expected))
                                             for m in found.mismatches]
    rows += [("-", "tensor parallel", problem, "-") for problem in found.tp_problems]
    headers = ("tensor", "problem", "in checkpoint", "model needs")
    table = Table(*headers)
    for row in rows:
        table.add_row(*row)
    # whole tensor names and shapes, never an ellipsis: wider than the terminal if need be
    width = sum(max(len(r[i]) for r in [headers, *rows]) for i in range(4)) + 3 * len(headers) + 1
    console.print(found.summary(), markup=False, soft_wrap=True)
    Console(highlight=False, width=max(console.width, width), file=console.file).print(table, markup=False)
    return 2


def _shape(shape: tuple[int, ...] | None) -> str:
    return "-" if shape is None else str(list(shape))
