"""Checkpoints of the mcore engine: megatron-core distributed checkpoints in a NeMo 2 layout.

A checkpoint directory holds `weights/` (an mcore `torch_dist` checkpoint of the model alone, keys `module.<mcore
key>`, as NeMo 2's MegatronStrategy writes them), `optimizer/` (a second torch_dist checkpoint: the optimizer's
`optimizer.*` state, fp32 master copy and Adam moments, ~6x the bf16 weights), `context/harness.json` (preset,
grid, TP, step) and `trainer.json` (step, samples consumed, `optimizer_state`: whether `optimizer/` is there),
then `done.json`: the completion marker, written last. A directory without it (a save killed mid-write) is
ignored by `latest_complete`. Optimizer state in its own folder can be removed from an older checkpoint without
rewriting its weights (`strip_optimizer`, `finetune.keep_optimizer`). Loading reshards across TP sizes (the
checkpoint stores global tensors). A pretrained Cosmos NeMo 2 `nemo/` folder (weights/ + context/) loads the same
way, and so does a checkpoint written before `optimizer/` existed (its optimizer state inside `weights/`).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedTensor
from torch.distributed.checkpoint.api import CheckpointException

from harness.core import failures
from harness.core.atomic import atomic_write_json, read_json
from harness.core.errors import HarnessError
from harness.core.models import Precision
from harness.cosmos import layout, parallel

if TYPE_CHECKING:
    from harness.core.models import ModelPreset
    from harness.core.tokens import Grid
    from harness.cosmos.model import CosmosModel

log = logging.getLogger(__name__)
MARKER = "done.json"
TRAINER_JSON = "trainer.json"
OPTIMIZER = "optimizer"


def weights_dir(ckpt_dir: Path) -> Path:
    """NeMo 2 keeps the distributed checkpoint in `weights/`; a bare mcore checkpoint dir also works."""
    return layout.weights_dir(ckpt_dir)


def unwrap(model: Any) -> "CosmosModel":
    while hasattr(model, "module") and not hasattr(model, "rope"):
        model = model.module
    return model


def model_sharded_state_dict(model: Any) -> dict[str, Any]:
    """`module.`-prefixed sharded state dict without `_extra_state` entries (TE's fp8 metadata in NeMo
    checkpoints; empty for the harness' linears), which carry no weights."""
    sd = unwrap(model).sharded_state_dict(prefix="module.")
    return {k: v for k, v in sd.items() if not k.endswith("_extra_state")}


context_file = layout.context_file


def is_complete(ckpt_dir: Path) -> bool:
    return (ckpt_dir / MARKER).is_file()


def optimizer_dir(ckpt_dir: Path) -> Path:
    return ckpt_dir / OPTIMIZER


def has_optimizer(ckpt_dir: Path) -> bool:
    """Whether a training run can resume from this checkpoint. trainer.json's `optimizer_state` is turned off
    before `optimizer/` is removed, so a removal cut short never leaves a checkpoint claiming state it lacks; a
    checkpoint without the key predates the split and holds its optimizer state inside `weights/`."""
    trainer = ckpt_dir / TRAINER_JSON
    try:
        record = read_json(trainer) if trainer.is_file() else {}
    except (OSError, ValueError) as e:
        raise HarnessError(f"{trainer}: cannot read ({e.__class__.__name__}: {e}): the checkpoint's training state "
                           "is damaged; to go on from an older checkpoint, delete this folder and resume") from None
    state = record.get("optimizer_state") if isinstance(record, dict) else None
    if state is None:
        return True
    return bool(state) and optimizer_dir(ckpt_dir).is_dir()


def strip_optimizer(ckpt_dir: Path) -> bool:
    """Make a complete checkpoint weights-only: mark it in trainer.json (atomic), then remove `optimizer/`.
    Returns whether there was a folder to remove (one whose optimizer state lives in `weights/`, from before the
    split, is left whole: removing it would mean rewriting the weights)."""
    odir = optimizer_dir(ckpt_dir)
    if not odir.is_dir():
        return False
    trainer = read_json(ckpt_dir / TRAINER_JSON)
    if trainer.get("optimizer_state") is not False:
        atomic_write_json(ckpt_dir / TRAINER_JSON, {**trainer, "optimizer_state": False})
    shutil.rmtree(odir)
    return True


def in_process_results_queue() -> None:
    """megatron-core's torch_dist writer hands each save's write results to the finalising code through a module
    global queue (`_results_queue` in 0.15-0.19), by default a `multiprocessing.Manager` queue served by a
    spawned process, which its asynchronous saves need (the writing happens in another process). The harness
    saves synchronously only (the mcore engine's `dist_checkpointing.save`, the NeMo engine's
    `ckpt_async_save=False`): the results are put and taken in the trainer itself, and a `queue.Queue` carries
    them. The served queue cost every trainer a second interpreter that imported torch (~290 MB, ~2 CPU-s) to
    unpickle the first result, and on preemption Slurm's signal killed that server, so the checkpoint written on
    the signal failed with BrokenPipeError (seen on the local cluster under `scontrol requeue`)."""
    import queue  # noqa: PLC0415

    from megatron.core.dist_checkpointing.strategies import filesystem_async as fa  # noqa: PLC0415

    if hasattr(fa, "_results_queue") and not isinstance(fa._results_queue, queue.Queue):
        fa._results_queue = queue.Queue()


def save(ckpt_dir: Path, model: Any, optimizer: Any, *, trainer: dict[str, Any], context: dict[str, Any],
         need_bytes: int = 0, device: torch.device | None = None) -> None:
    """Collective: every rank calls it. An older incomplete attempt at the same path is removed first. With
    `need_bytes` (footprint.checkpoint_bytes) every rank refuses alike, before writing a byte, when the smallest
    free space any rank sees is less; a full disk met anyway (the estimate is an estimate, a neighbour writes)
    removes this attempt, so the space it took is free again for logs and state, and raises the same one line."""
    if parallel.is_main() and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    parallel.barrier()
    if need_bytes:
        free = parallel.min_across_ranks(failures.free_bytes(ckpt_dir), device or torch.device("cpu"))
        failures.check_free(ckpt_dir, need_bytes, free)
    try:
        _write(ckpt_dir, model, optimizer, trainer=trainer, context=context)
    except BaseException as e:  # torch's CheckpointException (megatron's writer failures) is a BaseException
        if not failures.is_no_space(e):
            raise
        if parallel.is_main():
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        raise failures.as_no_space(e, ckpt_dir, need_bytes or None) from e


def _write(ckpt_dir: Path, model: Any, optimizer: Any, *, trainer: dict[str, Any], context: dict[str, Any]) -> None:
    """Two saves, the weights and then the optimizer state, each its own torch_dist checkpoint, so the optimizer
    part can later be deleted without touching the weights."""
    if parallel.is_main():
        (ckpt_dir / "weights").mkdir(parents=True)
    parallel.barrier()
    msd = model_sharded_state_dict(model)
    # before the weights' save, which expands msd's factories (SwiGLU fc1) in place: the optimizer maps its
    # parameters through them
    osd = None if optimizer is None else optimizer.sharded_state_dict(msd)
    in_process_results_queue()
    dist_checkpointing.save({"state_dict": msd}, str(ckpt_dir / "weights"))
    if osd is not None:
        if parallel.is_main():
            optimizer_dir(ckpt_dir).mkdir()
        parallel.barrier()
        dist_checkpointing.save({"optimizer": osd}, str(optimizer_dir(ckpt_dir)))
    parallel.barrier()
    if parallel.is_main():
        write_side_files(ckpt_dir, context=context, trainer=trainer)
    parallel.barrier()


def write_side_files(ckpt_dir: Path, *, context: dict[str, Any], trainer: dict[str, Any]) -> None:
    """The files beside a checkpoint's weights, once the weights (and optimizer state) are written:
    context/harness.json, trainer.json (with `optimizer_state`: whether `optimizer/` was written), then the
    completion marker, last, so a save killed midway has none. Both engines' checkpoints end this way."""
    atomic_write_json(context_file(ckpt_dir), context)
    atomic_write_json(ckpt_dir / TRAINER_JSON, {**trainer, "optimizer_state": optimizer_dir(ckpt_dir).is_dir()})
    atomic_write_json(ckpt_dir / MARKER, {"step": trainer.get("step")})


def _load(ckpt_dir: Path, state: dict[str, Any], folder: Path | None = None) -> dict[str, Any]:
    """`state` from `folder` (default: the weights); the model's shapes are checked first where it has them."""
    wdir = folder or weights_dir(ckpt_dir)
    if not (wdir / "metadata.json").is_file():
        raise HarnessError(f"{ckpt_dir}: not a megatron distributed checkpoint (no {wdir.name}/metadata.json)")
    if "state_dict" in state:
        _check_shapes(ckpt_dir, wdir, state["state_dict"])
    try:
        return dist_checkpointing.load(state, str(wdir))
    except (Exception, CheckpointException) as e:  # mcore: CheckpointingException/KeyError/RuntimeError for another
        # model; torch's reader: CheckpointException (a BaseException) for a file cut short or damaged
        lines = str(e).splitlines() or [""]
        raise HarnessError(f"{ckpt_dir}: cannot be loaded ({e.__class__.__name__}: {lines[0][:300]}): its files are "
                           "damaged or it was written for another model; to go on from an older checkpoint, delete "
                           "this folder and resume") from e


def _check_shapes(ckpt_dir: Path, wdir: Path, msd: dict[str, Any]) -> None:
    """mcore's loader reads a sub-block of a larger stored tensor without complaint (a 64,064-row Video2World
    embedding into a 64,000-row base model); compare global shapes first and name every mismatch."""
    stored = dist_checkpointing.load_tensors_metadata(str(wdir))
    problems = []
    for sh in msd.values():
        if not isinstance(sh, ShardedTensor):  # factories (SwiGLU fc1) and objects: mcore checks those itself
            continue
        want, name = tuple(sh.global_shape), sh.key
        if name not in stored:
            problems.append(f"{name} missing")
        elif tuple(stored[name].global_shape) != want:
            problems.append(f"{name} is {tuple(stored[name].global_shape)}, model needs {want}")
    if problems:
        raise HarnessError(f"{ckpt_dir}: weights do not match the model ({len(problems)} tensors): "
                           + "; ".join(sorted(set(problems))[:4]))


def load_model(model: Any, ckpt_dir: Path) -> None:
    """Weights only (a pretrained start, or inference); the checkpoint's TP size may differ from this one's."""
    loaded = _load(ckpt_dir, {"state_dict": model_sharded_state_dict(model)})
    sd = {k.removeprefix("module."): v for k, v in loaded["state_dict"].items()}
    missing, unexpected = unwrap(model).load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise HarnessError(f"{ckpt_dir}: weights do not match the model (missing {missing[:3]}, "
                           f"unexpected {list(unexpected)[:3]})")


def load_training(model: Any, optimizer: Any, ckpt_dir: Path) -> dict[str, Any]:
    """Model + optimizer state; returns trainer.json. A weights-only checkpoint is refused (`has_optimizer`)."""
    if not has_optimizer(ckpt_dir):
        raise HarnessError(f"{ckpt_dir}: weights only (its optimizer state was removed: finetune.keep_optimizer = "
                           "'last'), so training cannot resume from it")
    msd = model_sharded_state_dict(model)
    osd = optimizer.sharded_state_dict(msd, is_loading=True)
    if optimizer_dir(ckpt_dir).is_dir():
        loaded = _load(ckpt_dir, {"state_dict": msd})
        loaded_optimizer = _load(ckpt_dir, {"optimizer": osd}, optimizer_dir(ckpt_dir))["optimizer"]
    else:  # written before the optimizer state had its own folder: both in weights/
        loaded = _load(ckpt_dir, {"state_dict": msd, "optimizer": osd})
        loaded_optimizer = loaded["optimizer"]
    sd = {k.removeprefix("module."): v for k, v in loaded["state_dict"].items()}
    unwrap(model).load_state_dict(sd, strict=False)
    optimizer.load_state_dict(loaded_optimizer)
    return read_json(ckpt_dir / TRAINER_JSON)


def check_context(ckpt_dir: Path, preset: str) -> None:
    """A harness checkpoint names its preset; refuse another model shape with a clear message."""
    saved = layout.read_context(ckpt_dir).get("preset")
    if saved and saved != preset:
        raise HarnessError(f"{ckpt_dir}: checkpoint of preset {saved!r}, but model.preset is {preset!r}")


def load_for_inference(ckpt_dir: str | Path | None, preset: "ModelPreset", grid: "Grid", tp: int = 1, *,
                       seed: int = 0, gpus_requested: int = 0, seq_len: int | None = None) -> "CosmosModel":
    """A model in eval mode with the checkpoint's weights, tensor-parallel over `tp` ranks (every rank of the TP
    group calls this). Initialises torch.distributed/mcore if needed (single process when no launcher variables
    are set). bf16 on GPU, fp32 on CPU. `seq_len`: positions the RoPE tables must cover (default: one sample).
    `ckpt_dir` None: the random initialisation of `seed` (the baseline of a run without a pretrained
    checkpoint): the same weights for the same seed, whatever the process ran before."""
    from harness.cosmos.model import build_model

    if ckpt_dir is not None:
        check_context(Path(ckpt_dir), preset.name)
    parallel.init(tp, seed=seed, gpus_requested=gpus_requested)
    precision: Precision = "bf16-mixed" if torch.cuda.is_available() else "fp32"
    if ckpt_dir is None:
        parallel.reseed(seed)
    # with a checkpoint, `load_model` overwrites every weight (it refuses a missing one): no random init first
    model = build_model(preset, grid, tp=tp, precision=precision, seq_len=seq_len, initialize=ckpt_dir is None)
    if ckpt_dir is not None:
        load_model(model, Path(ckpt_dir))
    return model.eval()
