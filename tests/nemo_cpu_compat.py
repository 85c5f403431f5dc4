"""CUDA -> CPU compatibility for running NeMo 2 `llm.api.train` on a machine without a GPU (tests only).

NeMo's MegatronStrategy and Lightning callbacks assume CUDA in many small places (`.to("cuda")`, pinned host
tensors, side streams). The product never runs NeMo on CPU (`engine = auto` picks NeMo only with CUDA); these
patches exist so that the NeMo engine's real code path can be tested here. Run as a script, it trains one run
directory with the NeMo engine: `python tests/nemo_cpu_compat.py RUN_DIR`; `--bench ARGS` runs the NeMo bench.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import torch

_applied = False


def apply() -> None:
    global _applied
    if _applied or torch.cuda.is_available():
        return
    from harness.cosmos import compat

    compat.apply()  # megatron-core's own CUDA assumptions (the mcore engine's CPU module)
    _patch_streams()
    _patch_device_moves()
    _patch_factories()
    _patch_checkpoint_io()
    _applied = True


class _Stream:
    """torch.cuda.Stream stand-in: megatron_parallel.init_model_parallel builds DDP inside
    `torch.cuda.stream(torch.cuda.Stream())`."""

    def __init__(self, *a: Any, **k: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def wait_stream(self, *a: Any) -> None:
        pass


def _patch_streams() -> None:
    torch.cuda.Stream = _Stream  # type: ignore[assignment,misc]
    torch.cuda.stream = lambda s=None: contextlib.nullcontext()  # type: ignore[assignment]
    torch.cuda.current_stream = lambda *a, **k: _Stream()  # type: ignore[assignment]


def _cpu(device: Any) -> Any:
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    if isinstance(device, str) and device.startswith("cuda"):
        return "cpu"
    if isinstance(device, int) and not isinstance(device, bool):
        return "cpu"
    return device


def _patch_device_moves() -> None:
    """MegatronStrategy.training_step/optimizer_step log scalars as `torch.tensor(x, pin_memory=True).to("cuda")`,
    gpt_data_step and callbacks call `.cuda()`: on CPU these become no-ops (pinning needs a CUDA context)."""
    orig_to, orig_tensor = torch.Tensor.to, torch.tensor

    def to(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args:
            args = (_cpu(args[0]),) + args[1:]
        if "device" in kwargs:
            kwargs["device"] = _cpu(kwargs["device"])
        return orig_to(self, *args, **kwargs)

    def tensor(*args: Any, **kwargs: Any) -> torch.Tensor:
        kwargs.pop("pin_memory", None)
        if "device" in kwargs:
            kwargs["device"] = _cpu(kwargs["device"])
        return orig_tensor(*args, **kwargs)

    torch.Tensor.to = to  # type: ignore[method-assign]
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    torch.tensor = tensor  # type: ignore[assignment]


def main(run_dir: str) -> None:
    """Train RUN_DIR with the NeMo engine; afterwards every rank runs the trained model on fixed probe tokens and
    rank 0 writes RUN_DIR/probe.pt ({"tokens", "logits"} and, for Video2World, "context"), for the reload-identity
    tests."""
    import logging

    from harness.lib.heap import quiet_imports

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with quiet_imports():  # NeMo here, before the stage imports it: as the finetune stage does
        apply()
        from nemo.collections.llm import api

        from harness.core.paths import RunPaths
        from harness.launch.worker import load_run_spec, run_task

    paths = RunPaths(Path(run_dir))
    spec = load_run_spec(paths)
    real_train = api.train

    def train_then_probe(**kw: Any) -> Any:
        out = real_train(**kw)
        _probe(kw["model"], spec, paths)
        return out

    api.train = train_then_probe
    assert spec.finetune.engine == "nemo", spec.finetune.engine
    run_task(str(paths.root), "finetune", 0)  # the stage worker: dispatch to nemo_engine.run, then the marker


def _probe(lightning_model: Any, spec: Any, paths: Any) -> None:
    from harness.cosmos.checkpoint import unwrap

    model = unwrap(lightning_model.module).eval()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, spec.preset.output_vocab_size, (2, spec.token_math.sample_length - 1), generator=g)
    probe: dict[str, Any] = {"tokens": tokens}
    if spec.preset.video2world:
        probe["context"] = torch.randn(2, 6, spec.preset.crossattn_dim, generator=g)
    with torch.no_grad():
        probe["logits"] = model(tokens, context=probe.get("context"))
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        torch.save(probe, paths.root / "probe.pt")


class _CpuTorch:
    """The `torch` a module sees, with tensor factories' device="cuda" mapped to the CPU."""

    FACTORIES = ("zeros", "ones", "empty", "full", "arange", "tensor", "as_tensor")

    def __init__(self) -> None:
        for name in self.FACTORIES:
            setattr(self, name, self._wrap(getattr(torch, name)))

    @staticmethod
    def _wrap(fn: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            kwargs.pop("pin_memory", None)
            if "device" in kwargs:
                kwargs["device"] = _cpu(kwargs["device"])
            return fn(*args, **kwargs)
        return call

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


def _patch_factories() -> None:
    """megatron.core.pipeline_parallel.schedules.forward_backward_no_pipelining allocates its token counter with
    `torch.zeros(..., device="cuda")`."""
    from megatron.core.pipeline_parallel import schedules

    schedules.torch = _CpuTorch()  # type: ignore[attr-defined]


def _patch_checkpoint_io() -> None:
    """nemo.lightning.io.pl.MegatronCheckpointIO.load_checkpoint ends with `_fix_tensors_device`, which asserts an
    initialised CUDA context before moving loaded tensors to the current GPU; CPU tensors need no move."""
    from nemo.lightning.io import pl as nemo_pl

    nemo_pl._fix_tensors_device = lambda ckpt: ckpt


def bench(argv: list[str]) -> None:
    """`harness.bench.train --engine nemo ARGV` on CPU (each rank of `torchrun ... nemo_cpu_compat.py --bench`):
    the CPU path of the NeMo bench script, to check it end to end with gloo before the GPU run."""
    from harness.lib.heap import quiet_imports

    with quiet_imports():
        apply()
        from harness.bench import train
    train.main(argv)


if __name__ == "__main__":
    if sys.argv[1] == "--bench":
        bench(sys.argv[2:])
    else:
        main(sys.argv[1])
