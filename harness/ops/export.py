"""`harness export RUN|CHECKPOINTS|CHECKPOINT --step S --to DIR --format F`: which checkpoint the user means, and
whether it may be exported; the export itself is `harness.cosmos.export`.

A source is a run (its id under --workdir, or its directory), a checkpoints folder (`step-XXXXXXXX` folders, a
run's or one copied out of it) with `--step`, or one checkpoint folder. A harness checkpoint (a `step-` folder,
or one with `trainer.json` or `context/harness.json`) is exported only when complete: its completion marker is
written last, so a save killed mid-write is refused, never half exported. A folder that is none of these but holds
a NeMo 2 checkpoint (a pretrained `nemo/` folder) is exported as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from harness.core.errors import HarnessError
from harness.core.paths import RunPaths, is_step_dir, step_dir, steps_in


@dataclass(frozen=True)
class Request:
    source: str
    step: int | None
    to: Path
    format: str
    dtype: str
    preset: str | None
    workdir: str


@dataclass(frozen=True)
class Chosen:
    checkpoint: Path
    run: RunPaths | None
    """The run it belongs to, when the source named one (its spec names the video tokenizer)."""


def _run(source: str, workdir: str) -> RunPaths | None:
    for cand in (Path(source), Path(workdir) / source):
        if RunPaths(cand).is_run:
            return RunPaths(cand.absolute())
    return None


def choose(req: Request) -> Chosen:
    """The one checkpoint folder `req` names; one line naming the source, the key and what exists otherwise."""
    from harness.cosmos.checkpoint import is_complete  # torch only for this command

    run = _run(req.source, req.workdir)
    folder = run.checkpoints_dir if run else Path(req.source)
    steps = steps_in(folder)
    if run is None and not steps:
        if not folder.is_dir():
            raise HarnessError(f"{req.source}: no run (under --workdir {req.workdir}), checkpoints folder or "
                               f"checkpoint folder")
        if req.step is not None and is_step_dir(folder) and step_dir(folder.parent, req.step) != folder:
            raise HarnessError(f"{folder}: --step {req.step}: this folder is another step's checkpoint")
        if _is_harness_checkpoint(folder) and not is_complete(folder):
            raise HarnessError(f"{folder}: incomplete checkpoint (no completion marker: its save did not finish); "
                               f"export a complete one")
        return Chosen(folder, None)
    complete = [s for s in steps if is_complete(step_dir(folder, s))]
    have = (f"steps there: {', '.join(map(str, steps)) or 'none'} "
            f"(complete: {', '.join(map(str, complete)) or 'none'})")
    if req.step is None:
        raise HarnessError(f"{folder}: --step: required for a run or checkpoints folder; {have}")
    if req.step not in steps:
        raise HarnessError(f"{folder}: --step {req.step}: no such checkpoint; {have}")
    if req.step not in complete:
        raise HarnessError(f"{step_dir(folder, req.step)}: --step {req.step}: incomplete checkpoint (no completion "
                           f"marker: its save did not finish); {have}")
    return Chosen(step_dir(folder, req.step), run)


def _is_harness_checkpoint(folder: Path) -> bool:
    from harness.cosmos.checkpoint import TRAINER_JSON, context_file

    return is_step_dir(folder) or (folder / TRAINER_JSON).is_file() or context_file(folder).is_file()


def _tokenizer(run: RunPaths | None) -> dict[str, Any] | None:
    """The run's video tokenizer (encoder and decoder repos) for config.json; a folder alone does not know it."""
    if run is None:
        return None
    from harness.core.rundir import read_spec

    tok = read_spec(run).tokenizer
    return {"encoder": tok.encoder, "decoder": tok.decoder}


def export(req: Request, console: Console) -> int:
    from harness.cosmos import export as ex

    if req.to.exists():
        raise HarnessError(f"{req.to}: --to exists; name a new folder (the export is renamed into place whole)")
    chosen = choose(req)
    done = ex.export(chosen.checkpoint, req.to, req.format, req.dtype,  # type: ignore[arg-type]  # argparse choices
                     tokenizer=_tokenizer(chosen.run), preset=req.preset)
    console.print(f"exported {chosen.checkpoint} ({done.preset}, {done.layers} layers) -> {done.out}: "
                  f"{done.format}, {done.dtype}, {done.tensors} tensors, {done.bytes / 1e9:.2f} GB",
                  markup=False, soft_wrap=True)
    return 0
