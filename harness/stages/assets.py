"""stage-assets: download every model file the run needs into the shared HF cache, once, before any
compute node starts; write `assets.json` (role -> local directory). Later stages resolve assets only through
`resolve`, so compute nodes never touch the network (runtime hub downloads there are a known failure).

A spec value that names an existing local directory (or starts with '/', '.', '~') is used in place, after
checking the files its role needs; anything else is an HF repo id. A pretrained checkpoint is recorded as its
NeMo 2 folder and checked tensor by tensor against model.preset (metadata only; `harness.cosmos.layout`). The
token comes from HF_TOKEN only.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from harness.core.assets import Role, hub_offline, is_local, roles
from harness.core.atomic import atomic_write_json
from harness.core.errors import HarnessError
from harness.core.paths import RunPaths
from harness.core.spec import RunSpec

log = logging.getLogger("harness.assets")


def run(spec: RunSpec, task: int, paths: RunPaths) -> None:
    hf_home = Path(spec.assets.hf_home).expanduser()
    resolved: dict[str, str] = {}
    for role in roles(spec):
        directory = _stage(role, spec, hf_home)
        _verify(role, directory)
        if role.name == "checkpoint":
            directory = _check_checkpoint(role, spec, directory)
        resolved[role.name] = str(directory)
        log.info("asset %s: %s -> %s", role.name, role.source, directory)
    atomic_write_json(paths.assets_json, resolved)


def _stage(role: Role, spec: RunSpec, hf_home: Path) -> Path:
    if is_local(role.source):
        directory = Path(role.source).expanduser().absolute()
        if not directory.is_dir():
            raise HarnessError(f"{role.name} = {role.source!r}: local directory not found")
        return directory
    revision = spec.assets.revisions.get(role.source)
    snapshot = _download(role, role.patterns, revision, hf_home)
    if role.name == "text_encoder" and not list(snapshot.glob("*.safetensors")):
        snapshot = _download(role, role.patterns + ("pytorch_model*.bin", "pytorch_model*.bin.index.json"),
                             revision, hf_home)
    return snapshot


def _download(role: Role, patterns: tuple[str, ...], revision: str | None, hf_home: Path) -> Path:
    from huggingface_hub import snapshot_download

    offline = hub_offline()
    where = f"{role.name} = {role.source!r}" + (f" (revision {revision})" if revision else "")
    try:
        path = snapshot_download(role.source, revision=revision, cache_dir=hf_home / "hub",
                                 allow_patterns=list(patterns), token=os.environ.get("HF_TOKEN") or None,
                                 local_files_only=offline)
    except Exception as e:  # the hub client raises many types; the user needs one line naming the repo
        text = (str(e).strip().splitlines() or ["(no message)"])[0]
        mode = "offline cache lookup (HF_HUB_OFFLINE=1)" if offline else "download"
        raise HarnessError(f"{where}: {mode} into {hf_home} failed: {e.__class__.__name__}: {text}") from None
    return Path(path)


def _check_checkpoint(role: Role, spec: RunSpec, directory: Path) -> Path:
    """The NeMo 2 folder of the staged checkpoint (weights under `weights/` or in the folder itself), after
    comparing every tensor's name and shape in its metadata with model.preset: a checkpoint the model cannot load
    (a tensor missing or of another shape) fails here, on the login node, not after the finetune job has waited in
    the GPU queue; tensors the model does not have are only logged (the loader never reads them)."""
    from harness.cosmos import layout  # noqa: PLC0415 (torch only when a checkpoint is staged)

    where = f"{role.name} = {role.source!r}"
    try:
        root = layout.resolve_pretrained(directory)
        found = layout.inspect(root, spec.preset, spec.finetune.tensor_parallel)
    except HarnessError as e:
        raise HarnessError(f"{where}: {e}") from None
    if found.blocking:
        raise HarnessError(f"{where}: {len(found.blocking)} problem(s) against model.preset "
                           f"{spec.model.preset!r}, first: {found.blocking[0]}; list them with `harness "
                           f"inspect-checkpoint {root} --preset {spec.model.preset}`")
    for m in found.mismatches:  # only unexpected ones are left: never loaded, but worth a look
        log.warning("%s: %s", where, m.line())
    log.info("%s", found.summary())
    return root


def _verify(role: Role, directory: Path) -> None:
    for alternatives in role.required:
        if not any(next(directory.glob(p), None) is not None for p in alternatives):
            raise HarnessError(f"{role.name} = {role.source!r}: {directory} has no {' or '.join(alternatives)}")
