"""What a Cosmos NeMo 2 checkpoint holds, and where: the one home for the tensor names and global shapes a preset's
model stores, for finding the weights of a pretrained checkpoint folder, and for comparing a checkpoint's metadata
with a preset (`harness inspect-checkpoint`, stage-assets).

Names and shapes follow megatron-core's torch_dist layout as NeMo 2 writes it: keys `module.<mcore GPTModel key>`
with Transformer-Engine names (`linear_qkv.layer_norm_weight`), decoder layers stacked on a leading axis, global
(unsharded) shapes. They do not depend on the tensor-parallel size: Cosmos configs set `vocab_size` (64,000, or
64,064 for Video2World), and NeMo pads the vocabulary to `make_vocab_size_divisible_by` x TP only when the config
leaves `vocab_size` unset and takes it from a tokenizer (nemo/collections/llm/gpt/model/base.py, configure_model);
Cosmos passes no tokenizer. TP only has to divide the sharded dimensions (`tp_problems`).

No tensor is read and no model is built: a user checks a downloaded checkpoint on the login node before queueing
(the metadata pickle names megatron-core classes, so unpickling it imports megatron-core).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from harness.core.errors import HarnessError
from harness.core.models import MODEL_PREFIX, PRESETS, UPSTREAM_CONFIGS, ModelPreset, checkpoint_shapes, tp_problems


# ------------------------------------------------------------------------------------------ folders
def resolve_pretrained(directory: Path) -> Path:
    """The NeMo 2 checkpoint folder inside `directory`: `directory` itself or its `nemo/` folder (an HF snapshot of
    a Cosmos repo), holding the torch_dist weights either under `weights/` (with `context/`) or directly (next to
    their `metadata.json`); NeMo loads both. The one place that decides this layout."""
    for root in (directory / "nemo", directory):
        if (root / "weights" / "metadata.json").is_file() or (root / "metadata.json").is_file():
            return root
    raise HarnessError(f"{directory}: not a NeMo 2 checkpoint: expected weights/metadata.json, metadata.json, "
                       f"nemo/weights/metadata.json or nemo/metadata.json")


def weights_dir(root: Path) -> Path:
    """The torch_dist folder of a checkpoint folder (`weights/`, or the folder itself)."""
    return root / "weights" if (root / "weights").is_dir() else root


def stored_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """Global shape of every tensor in a torch_dist checkpoint, from its `.metadata` alone (no tensor is read);
    objects (TE's `_extra_state`) are left out: they hold no weights."""
    from torch.distributed.checkpoint import FileSystemReader  # noqa: PLC0415 (torch only when reading)
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata  # noqa: PLC0415

    if not (weights / ".metadata").is_file():
        raise HarnessError(f"{weights}: no .metadata (not a torch_dist checkpoint, or an unfinished save)")
    try:
        meta = FileSystemReader(str(weights)).read_metadata()
    except Exception as e:  # a truncated or foreign pickle raises many types; the user needs the file named
        raise HarnessError(f"{weights / '.metadata'}: unreadable ({e.__class__.__name__}: {e})") from None
    return {k: tuple(v.size) for k, v in meta.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}


def preset_name(root: Path, preset: str | None) -> str:
    """The preset a command reads `root` as: `--preset` when given, else the one the checkpoint names; one line
    naming the choices when neither gives a known preset."""
    name = preset or named_preset(root)
    if name is None:
        raise HarnessError(f"{root}: the checkpoint names no preset (no context/harness.json, no known upstream "
                           f"config in context/model.yaml); pass --preset, one of {', '.join(PRESETS)}")
    if name not in PRESETS:
        raise HarnessError(f"--preset {name!r}: unknown; allowed: {', '.join(PRESETS)}")
    return name


def context_file(ckpt_dir: Path) -> Path:
    """The harness' own record of a checkpoint (preset, grid, TP, step), beside NeMo's `context/model.yaml`."""
    return ckpt_dir / "context" / "harness.json"


def read_context(ckpt_dir: Path) -> dict[str, object]:
    """`context/harness.json` ({} where there is none: a foreign NeMo checkpoint); a damaged one is one line."""
    f = context_file(ckpt_dir)
    if not f.is_file():
        return {}
    try:
        raw = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise HarnessError(f"{f}: cannot read ({e.__class__.__name__}: {e}); restore it, or remove it and name "
                           "the model with --preset") from None
    if not isinstance(raw, dict):
        raise HarnessError(f"{f}: a JSON {type(raw).__name__}, expected an object; restore it, or remove it and "
                           "name the model with --preset")
    return raw


def named_preset(root: Path) -> str | None:
    """The preset a checkpoint names: the harness' `context/harness.json`, else an upstream config class in
    NeMo's `context/model.yaml`."""
    preset = read_context(root).get("preset")
    if preset:
        return str(preset)
    yaml = root / "context" / "model.yaml"
    if yaml.is_file():
        for cls in re.findall(r"_target_:\s*\S+\.(\w+)", yaml.read_text(encoding="utf-8")):
            if cls in UPSTREAM_CONFIGS:
                return UPSTREAM_CONFIGS[cls]
    return None


# ------------------------------------------------------------------------------------------ comparison
@dataclass(frozen=True)
class Mismatch:
    name: str
    kind: Literal["missing", "unexpected", "shape"]
    stored: tuple[int, ...] | None
    """Global shape in the checkpoint (None: missing there)."""
    expected: tuple[int, ...] | None
    """Global shape the preset's model needs (None: the model has no such tensor)."""

    def line(self) -> str:
        if self.kind == "missing":
            return f"{self.name} missing (model needs {list(self.expected or ())})"
        if self.kind == "unexpected":
            return f"{self.name} {list(self.stored or ())} is not a tensor of the model"
        return f"{self.name} is {list(self.stored or ())}, model needs {list(self.expected or ())}"


@dataclass(frozen=True)
class Inspection:
    preset: str
    tp: int
    layers: int
    weights: Path
    checked: int
    """Model tensors the preset expects."""
    ignored: int
    """Stored tensors outside the model (optimizer state)."""
    mismatches: tuple[Mismatch, ...]
    tp_problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.tp_problems

    @property
    def blocking(self) -> tuple[str, ...]:
        """What stops the model from loading: TP problems, missing and wrongly shaped tensors (an unexpected one
        is never read: the loader asks only for the model's tensors)."""
        return self.tp_problems + tuple(m.line() for m in self.mismatches if m.kind != "unexpected")

    def summary(self) -> str:
        head = (f"{self.weights}: {self.checked} model tensors of {self.preset} ({self.layers} layers) at TP "
                f"{self.tp}")
        if self.ok:
            return f"{head}: all names and shapes match" + (f" ({self.ignored} optimizer tensors not compared)"
                                                            if self.ignored else "")
        return f"{head}: {len(self.mismatches)} mismatched tensors, {len(self.tp_problems)} TP problems"


def compare(stored: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]]) -> list[Mismatch]:
    """Every missing, unexpected and wrongly shaped model tensor, sorted by name."""
    model = {k: v for k, v in stored.items() if k.startswith(MODEL_PREFIX)}
    out = [Mismatch(k, "missing", None, v) for k, v in expected.items() if k not in model]
    out += [Mismatch(k, "unexpected", v, None) for k, v in model.items() if k not in expected]
    out += [Mismatch(k, "shape", model[k], v) for k, v in expected.items() if k in model and model[k] != v]
    return sorted(out, key=lambda m: m.name)


def inspect(directory: Path, preset: ModelPreset, tp: int = 1, layers: int | None = None) -> Inspection:
    """Compare the checkpoint in `directory` (any layout `resolve_pretrained` accepts) with `preset` at `tp`."""
    weights = weights_dir(resolve_pretrained(directory))
    stored = stored_shapes(weights)
    n = preset.num_layers if layers is None else layers
    expected = checkpoint_shapes(preset, n)
    ignored = sum(1 for k in stored if not k.startswith(MODEL_PREFIX))
    return Inspection(preset.name, tp, n, weights, len(expected), ignored, tuple(compare(stored, expected)),
                      tuple(tp_problems(preset, tp)))
