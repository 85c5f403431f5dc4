"""What the hardware a spec asks for must satisfy: GPU counts against the model (rules that `harness validate`
enforces), and the container images whose megatron-core the harness is tested with (a warning, not an error).

Pure: spec in, (key, message) problems or warning lines out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness.core.sections import data_parallel

if TYPE_CHECKING:
    from harness.core.models import ModelPreset
    from harness.core.sections import FinetuneSection, RunSpec

REPLICATED_BYTES = 6
"""Training state per parameter that only tensor parallelism divides: bf16 weights (2) + fp32 gradients (4)."""
OPTIMIZER_BYTES = 12
"""Per parameter: fp32 master weights (4) + Adam moments (8); the distributed optimizer also divides it over DP."""


def real(preset: ModelPreset) -> bool:
    """A released Cosmos model (4B, 12B, 5B/13B Video2World), as opposed to the CPU-sized tiny presets."""
    return bool(preset.hf_repo)


def state_bytes_per_param(tp: int, optimizer_shards: int) -> float:
    """Training state each GPU holds per model parameter: everything divided by TP, the optimizer part also by
    the number of optimizer shards (DP with the distributed optimizer, else 1)."""
    return REPLICATED_BYTES / tp + OPTIMIZER_BYTES / (tp * optimizer_shards)


ONE_GPU_MARGIN = 1.05
"""Headroom over a preset's measured one-GPU peak (allocator fragmentation, other kernels' workspaces)."""


def min_gpus(preset: ModelPreset, gpu_memory_gib: int) -> int:
    """The GPUs the model's training state must be spread over: one where a GPU holds the measured one-GPU peak
    with margin (cosmos-4b, 108 GiB, on a 139 GiB H200), else the count the 80 GB recipes use."""
    one = preset.one_gpu_train_gib
    return 1 if one is not None and one * ONE_GPU_MARGIN <= gpu_memory_gib else preset.min_gpus


def fits(preset: ModelPreset, f: FinetuneSection, dp: int) -> bool:
    """Whether a finetune layout holds the model: `min_gpus` is the GPU count the model's training state must be
    spread over because it does not fit in fewer GPUs' memory at TP = 1 (the released recipes run it with
    TP = min_gpus and one replica). A layout qualifies when no GPU holds more training state per parameter than
    that reference layout: TP divides all of it (and the activations), DP only the optimizer state, and only with
    the distributed optimizer, which the mcore engine uses for DP > 1 on GPUs (NeMo's engine, and so 'auto' inside
    the NeMo container, does not). So fewer than min_gpus GPUs never fit; min_gpus GPUs or more fit with
    TP = min_gpus, or with a smaller TP where engine 'mcore' shards the optimizer over enough DP ranks."""
    least = min_gpus(preset, f.gpu_memory_gib)
    shards = dp if f.engine == "mcore" else 1
    return state_bytes_per_param(f.tensor_parallel, shards) <= state_bytes_per_param(least, 1)


def gpu_problems(spec: RunSpec) -> list[tuple[str, str]]:
    """Rules on GPU counts the spec states (gpus_per_node > 0); part of every spec's cross checks."""
    out: list[tuple[str, str]] = []
    f, p = spec.finetune, spec.preset
    if f.gpus_per_node:
        total, dp, least = f.gpus_per_node * f.nodes, data_parallel(f), min_gpus(p, f.gpu_memory_gib)
        if total < least:
            out.append(("finetune.gpus_per_node",
                        f"= {f.gpus_per_node} x finetune.nodes = {total} GPU(s): model.preset {p.name!r} needs at "
                        f"least {least} of {f.gpu_memory_gib} GiB (its training state does not fit in fewer GPUs' "
                        f"memory; finetune.gpu_memory_gib states the GPUs' size)"))
        elif not fits(p, f, dp):
            need = state_bytes_per_param(least, 1)
            have = state_bytes_per_param(f.tensor_parallel, dp if f.engine == "mcore" else 1)
            out.append(("finetune.tensor_parallel",
                        f"= {f.tensor_parallel} (DP {dp}, engine {f.engine!r}): each GPU would hold {have:.3g} bytes "
                        f"of training state per parameter, more than the {need:.3g} of the {least}-GPU layout "
                        f"model.preset {p.name!r} is sized for on {f.gpu_memory_gib} GiB GPUs; use "
                        f"tensor_parallel = {least}"))
    return out


def gpu_required_problems(spec: RunSpec) -> list[tuple[str, str]]:
    """A real model on a stage without GPUs: checked by `harness validate`, `plan` and `submit` (specs built in
    code for benchmarks or tests, which never reach Slurm, are not held to it)."""
    p, out = spec.preset, []
    if real(p):
        for stage, least in (("finetune", p.min_gpus), ("infer", 1)):
            if getattr(spec, stage).gpus_per_node == 0:
                out.append((f"{stage}.gpus_per_node",
                            f"= 0: model.preset {p.name!r} needs GPUs for {stage} (at least {least} in all; only the "
                            f"tiny presets run on CPU)"))
    return out


# ------------------------------------------------------------------------------------------- containers
TESTED_MCORE = ((0, 15, 3), (0, 20, 0))
"""[lowest, highest) megatron-core the harness runs on: CI installs 0.15.3 (the `nemo` extra: NeMo 2.7.3 needs
megatron-core 0.15.x); pyproject.toml allows < 0.20 (0.16.1 and 0.19.2 were also run: docs/design.md, "Environment")."""

RELEASE_TABLE = ("https://github.com/NVIDIA-NeMo/Megatron-Bridge/blob/2075a5b8aa562e45c441b55f079434b2e7baa027/"
                 "docs/releases/software-versions.md")


@dataclass(frozen=True)
class ContainerRelease:
    megatron_core: tuple[int, int, int]
    nemo: str
    torch: str
    source: str


KNOWN_CONTAINERS: dict[str, ContainerRelease] = {
    "24.09": ContainerRelease((0, 9, 0), "2.0.0", "2.4.0a0",
                              "https://docs.nvidia.com/nemo-framework/user-guide/24.09/softwarecomponentversions.html"),
    "25.02": ContainerRelease((0, 11, 0), "2.2", "",
                              "https://github.com/NVIDIA/NeMo/blob/main/README.md, Latest News: 'NeMo Framework 25.02 "
                              "and NVIDIA Megatron-Core 0.11.0'"),
    "25.09": ContainerRelease((0, 14, 0), "2.5.0", "2.8.0a0", RELEASE_TABLE + "#L74-L86"),
    "25.11": ContainerRelease((0, 15, 0), "2.6.0", "2.9.0a0", RELEASE_TABLE + "#L51-L62 (megatron-core 'dev:0.15.0')"),
    "26.02": ContainerRelease((0, 16, 0), "2.7.0", "2.10.0a0", RELEASE_TABLE + "#L27-L38 ('main:0.16.0')"),
    "26.04": ContainerRelease((0, 17, 0), "2.8.0", "2.11.0a0", RELEASE_TABLE + "#L3-L14"),
}
"""NeMo Framework container release -> its megatron-core (and NeMo, PyTorch), from NVIDIA's release tables.
Release candidates and patch builds (25.02.rc3, 25.09.01) are taken to ship their release's versions (the tables
list releases only)."""

_NEMO_TAG = re.compile(r"(?:^|[#/])nvidia/nemo:(\d\d\.\d\d)(?:[.-][\w.-]*)?$")


def _version(v: tuple[int, int, int]) -> str:
    return ".".join(map(str, v))


def container_warnings(image: str) -> list[str]:
    """Why a container.image may not run the harness: megatron-core outside TESTED_MCORE, or not known (any image
    that is not a NeMo Framework release of KNOWN_CONTAINERS). A local .sqsh file names no tag and is not judged."""
    if not image or image.endswith(".sqsh"):
        return []
    lo, hi = TESTED_MCORE
    tested = f"megatron-core >= {_version(lo)}, < {_version(hi)} (e.g. nvcr.io#nvidia/nemo:26.02)"
    m = _NEMO_TAG.search(image)
    release = KNOWN_CONTAINERS.get(m.group(1)) if m else None
    if release is None:
        return [f"= {image!r}: megatron-core version of this image unknown; the harness is tested with {tested}"]
    if lo <= release.megatron_core < hi:
        return []
    return [f"= {image!r}: ships megatron-core {_version(release.megatron_core)} (NeMo {release.nemo}; "
            f"{release.source}), outside the tested {tested}; container stages run the image's own packages"]
