"""`harness doctor`'s asset checks: each asset in its local folder or the HF cache (looked up without the
network), model.checkpoint's tensors against the preset, and for Video2World the prompt encoder against the preset
and the GPU. Rows of (status, key, what, detail), as `harness.ops.doctor.Check` takes them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.core import footprint
from harness.core.assets import Role, hub_offline, is_local, roles
from harness.core.errors import HarnessError
from harness.core.spec import RunSpec
from harness.ops.image_cache import Row

_ROLE_KEY = {"encoder": "tokenizer.encoder", "decoder": "tokenizer.decoder", "checkpoint": "model.checkpoint",
             "text_encoder": "model.text_encoder"}


def asset_checks(spec: RunSpec) -> list[Row]:
    """Each asset here (or where stage-assets would fetch it), the checkpoint's tensors, and for Video2World
    the prompt encoder's width and weights against the preset and the GPU."""
    return _present(spec) + [checkpoint_shapes_check(spec)] + _prompt_encoder(spec)


def _present(spec: RunSpec) -> list[Row]:
    offline = hub_offline()
    out: list[Row] = []
    for role in roles(spec):
        k, what = _ROLE_KEY.get(role.name, role.name), f"{role.name} {role.source!r} present"
        if is_local(role.source):
            where, missing = Path(role.source).expanduser(), _missing(role, Path(role.source).expanduser())
            out.append(("fail" if missing else "pass", k, what, missing or f"local directory {where}"))
            continue
        snap = _cached(role, spec)
        if snap is not None:
            missing = _missing(role, snap)
            out.append(("fail" if missing else "pass", k, what, missing or f"in the HF cache: {snap}"))
        elif offline:
            out.append(("fail", k, what, f"not in the HF cache {spec.assets.hf_home} and HF_HUB_OFFLINE=1: "
                                         f"download it where there is internet (HF_HOME={spec.assets.hf_home} "
                                         f"huggingface-cli download {role.source})"))
        else:
            out.append(("skip", k, what, "not in the HF cache yet: stage-assets downloads it (compute nodes "
                                         "without internet: download it on the login node first)"))
    return out


def checkpoint_shapes_check(spec: RunSpec) -> Row:
    """model.checkpoint's tensors against model.preset at finetune.tensor_parallel, from the checkpoint's metadata
    (what stage-assets checks, and `harness inspect-checkpoint` lists), where the checkpoint is already here."""
    k, what, source = "model.checkpoint", "checkpoint tensors fit model.preset", spec.model.checkpoint
    if not source:
        return ("skip", k, what, "no checkpoint (model.checkpoint = '': random init)")
    role = next(r for r in roles(spec) if r.name == "checkpoint")
    where = Path(source).expanduser() if is_local(source) else _cached(role, spec)
    if where is None or not where.is_dir():
        return ("skip", k, what, f"{where}: no such directory" if where else
                "not in the HF cache yet: stage-assets checks it after downloading")
    from harness.cosmos import layout  # noqa: PLC0415 (torch only where there is a checkpoint)

    try:
        found = layout.inspect(where, spec.preset, spec.finetune.tensor_parallel)
    except (HarnessError, OSError, ValueError, RuntimeError) as e:
        return ("fail", k, what, f"{where}: {str(e).splitlines()[0] if str(e) else e.__class__.__name__}")
    if found.blocking:
        return ("fail", k, what, f"{len(found.blocking)} problem(s) against {spec.model.preset!r}, first: "
                                 f"{found.blocking[0]}; list them with `harness inspect-checkpoint {where} "
                                 f"--preset {spec.model.preset}`")
    return ("pass", k, what, found.summary())


def _cached(role: Role, spec: RunSpec) -> Path | None:
    """The role's snapshot in the HF cache, looked up without the network; None when it is not there."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(role.source, revision=spec.assets.revisions.get(role.source),
                                      cache_dir=Path(spec.assets.hf_home).expanduser() / "hub",
                                      allow_patterns=list(role.patterns), local_files_only=True))
    except Exception:  # the hub client raises several "not cached" types; any of them means: not here
        return None


def _missing(role: Role, directory: Path) -> str:
    """'' when every file the role needs is in `directory`, else which are missing (as stage-assets verifies)."""
    if not directory.is_dir():
        return f"{directory}: no such directory"
    if role.name == "checkpoint" and (directory / "nemo").is_dir():
        directory = directory / "nemo"
    gaps = [" or ".join(alts) for alts in role.required
            if not any(next(directory.glob(p), None) is not None for p in alts)]
    return f"{directory} has no {', '.join(gaps)}" if gaps else ""


def _prompt_encoder(spec: RunSpec) -> list[Row]:
    """The prompt encoder where its config.json is here: its width against the preset's cross-attention (a wrong
    one failed only at finetune, after tokenize had embedded every prompt), and its weights against the GPU
    (from its own shape: a small encoder is not T5-11B)."""
    if not spec.video2world:
        return []
    config = _t5_config(spec)
    shape = _shape(config)
    out: list[Row] = []
    want = spec.preset.crossattn_dim
    if config is not None and config.get("d_model") != want:
        out.append(("fail", "model.text_encoder", "prompt encoder width fits model.preset",
                    f"its config.json has d_model {config.get('d_model')}; {spec.model.preset!r}'s cross-attention "
                    f"takes {want}"))
    dtype, gpu = spec.model.text_encoder_dtype, spec.finetune.gpu_memory_gib
    ok, detail = footprint.text_encoder_fits(dtype, gpu, shape)
    out.append(("pass" if ok else "fail", "model.text_encoder_dtype", "prompt encoder fits a GPU", detail))
    return out


def prompt_encoder_line(spec: RunSpec) -> str:
    """What the prompt encoder holds on each tokenize / infer GPU, from its own config.json where it is here."""
    return footprint.text_encoder_line(spec.model.text_encoder_dtype, _shape(_t5_config(spec)))


def _shape(config: dict[str, Any] | None) -> dict[str, int]:
    """The encoder's shape from its config.json; T5-11B's (upstream's encoder) where that is not here."""
    shape = footprint.t5_shape(config) if config is not None else None
    return shape or footprint.T5_11B_ENCODER


def _t5_config(spec: RunSpec) -> dict[str, Any] | None:
    role = next((r for r in roles(spec) if r.name == "text_encoder"), None)
    if role is None:
        return None
    where = Path(role.source).expanduser() if is_local(role.source) else _cached(role, spec)
    try:
        raw = json.loads((where / "config.json").read_text(encoding="utf-8")) if where is not None else None
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None
