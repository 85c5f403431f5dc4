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
    context: str | None = None
    """A NeMo checkpoint (or its context folder) whose io context a nemo export carries."""


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
    """A training save (its completion marker written last); a NeMo export or a pretrained folder, which carry a
    context but no trainer state, is complete as it is."""
    from harness.cosmos.checkpoint import TRAINER_JSON

    return is_step_dir(folder) or (folder / TRAINER_JSON).is_file()


def _tokenizer(run: RunPaths | None) -> dict[str, Any] | None:
    """The run's video tokenizer (encoder and decoder repos) for config.json; a folder alone does not know it."""
    if run is None:
        return None
    from harness.core.rundir import read_spec

    tok = read_spec(run).tokenizer
    return {"encoder": tok.encoder, "decoder": tok.decoder}


def _pretrained_context(run: RunPaths | None) -> Path | None:
    """The io context of the run's `model.checkpoint` (a local folder or its HF snapshot, looked up without the
    network), where it has one: upstream's NeMo checkpoints do."""
    from harness.core.rundir import read_spec
    from harness.cosmos.layout import resolve_pretrained

    spec = read_spec(run) if run is not None else None
    if spec is None or not (source := spec.model.checkpoint):
        return None
    local = Path(source).expanduser()
    if not local.is_dir():
        from huggingface_hub import snapshot_download

        try:
            local = Path(snapshot_download(source, revision=spec.assets.revisions.get(source), local_files_only=True,
                                           cache_dir=Path(spec.assets.hf_home).expanduser() / "hub"))
        except (OSError, ValueError):  # the hub client's "not cached" errors: no context to carry from here
            return None
    try:
        ctx = resolve_pretrained(local) / "context"
    except HarnessError:
        return None
    return ctx if (ctx / "io.json").is_file() else None


def _context(req: Request, chosen: Chosen) -> Path | None:
    """--context, else the run's pretrained checkpoint's, else the source's own io context (a NeMo checkpoint's)."""
    from harness.cosmos.export import nemo_context

    if req.context is not None:
        if req.format != "nemo":
            raise HarnessError(f"--context {req.context}: only for --format nemo (the other formats hold no NeMo "
                               f"context)")
        return nemo_context(Path(req.context))
    if req.format != "nemo":
        return None
    own = chosen.checkpoint / "context"
    return _pretrained_context(chosen.run) or (own if (own / "io.json").is_file() else None)


def check_to(to: Path) -> None:
    """`--to` before any weights are read: a new folder, in a writable place that is no checkpoints folder (the
    harness would take a `step-N` there for a checkpoint of its run)."""
    from harness.core.atomic import output_dir

    if to.exists() or to.is_symlink():
        raise HarnessError(f"{to}: --to exists; name a new folder (the export is renamed into place whole)")
    here = to.parent.resolve()  # a checkpoint's folders are removed with it (retention, a resave)
    if is_step_dir(to) or steps_in(to.parent) or any(is_step_dir(a) for a in (here, *here.parents)):
        raise HarnessError(f"{to}: --to is inside a checkpoints folder or a checkpoint (or named like a checkpoint "
                           "step-N), which the harness reads as checkpoints of a run and deletes: export elsewhere")
    output_dir(to.parent, "--to")


def export(req: Request, console: Console) -> int:
    check_to(req.to)
    chosen = choose(req)
    context = _context(req, chosen)
    from harness.cosmos import export as ex  # megatron-core: after the source is known to be there

    extra = ex.Extras(tokenizer=_tokenizer(chosen.run), context=context, preset=req.preset)
    fmt = next((f for f in ex.FORMATS if f == req.format), None)
    if fmt is None:
        raise HarnessError(f"--format {req.format!r}: unknown; allowed: {', '.join(ex.FORMATS)}")
    done = ex.export(chosen.checkpoint, req.to, fmt, req.dtype, extra)
    console.print(f"exported {chosen.checkpoint} ({done.preset}, {done.layers} layers) -> {done.out}: "
                  f"{done.format}, {done.dtype}, {done.tensors} tensors, {done.bytes / 1e9:.2f} GB",
                  markup=False, soft_wrap=True)
    if req.format == "nemo":
        console.print(f"context/io.json from {context}" if context else
                      "note: no NeMo io context carried (context/io.json, which upstream's NeMo inference loads the "
                      "model from): pass --context with the NeMo checkpoint these weights were trained from",
                      markup=False, soft_wrap=True)
    return 0
