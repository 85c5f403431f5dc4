"""Relations between a spec's fields that no single field's bounds express (TP divides the GPUs, the batch divides
over data parallelism, one data source, paths Slurm and Pyxis can carry), and the further checks a spec about to
be planned or submitted must pass. Each problem names the key the user should change.

Pure apart from one question to this Python environment (is wandb importable), asked only before submitting.
"""

from __future__ import annotations

import difflib
import importlib.util
import re

from harness.core import assets, hardware, metrics_table, models, sbatch_options, tokens
from harness.core.errors import Problem
from harness.core.fields import key_token, show
from harness.core.secretenv import is_secret
from harness.core.sections import MIN_TEMPERATURE, RunSpec, data_parallel
from harness.core.stages import IN_CONTAINER, SIGNAL_DELAY_S, SIGNAL_EARLY_S
from harness.core.stages import STAGES as STAGE_ROWS


def cross_check(spec: RunSpec) -> list[Problem]:
    """Relations between fields; each check names the key the user should change."""
    out: list[tuple[str, str]] = []
    out += _check_model(spec)
    out += _check_data(spec)
    out += _check_finetune(spec)
    out += _check_gpus(spec)
    out += _check_evaluate(spec)
    out += _check_container(spec)
    out += _check_paths(spec)
    out += _check_sbatch_extra(spec)
    out += _check_stage_fit(spec)
    return [Problem(spec.source, k, m) for k, m in out]


def resolved_path_problems(spec: RunSpec, member: str = "") -> list[Problem]:
    """The path checks again once relative paths are resolved (`spec.absolutize`): `runs` passes as text, yet
    under a directory named `a%x` it becomes a log path Slurm rewrites."""
    where = f"{spec.source}: {member}" if member else spec.source
    return [Problem(where, k, f"{m}; resolved against the current directory") for k, m in _check_paths(spec)]


def _check_paths(spec: RunSpec) -> list[tuple[str, str]]:
    """Paths may hold spaces, quotes, '$(...)', ';' or '#' (every script quotes them), but the run directory
    also appears in #SBATCH --output/--error, where sbatch reads '\\' as an escape even inside quotes and
    Slurm expands '%' patterns; and Pyxis splits --container-mounts at ',' and ':'."""
    out = []
    w = spec.run.workdir
    if "\\" in w or "%" in w:
        out.append(("run.workdir", f"= {show(w)}: must not contain '\\' or '%' (sbatch and Slurm's log file "
                                   f"names give them a meaning)"))
    c = spec.container
    if c.image:
        mounted = (("run.workdir", w), ("assets.hf_home", spec.assets.hf_home), ("data.cache_dir", spec.data.cache_dir),
                   ("container.harness_mount", c.harness_mount), ("container.workdir", c.workdir))
        for key, value in mounted:
            if "," in value or ":" in value:
                out.append((key, f"= {show(value)}: must not contain ',' or ':' when container.image is set "
                                 f"(Pyxis splits --container-mounts there, PYTHONPATH at ':')"))
        for key, value in (("container.harness_mount", c.harness_mount), ("container.workdir", c.workdir or "/")):
            if not value.startswith("/"):
                out.append((key, f"= {show(value)}: must be an absolute path inside the container"))
    return out


def _check_sbatch_extra(spec: RunSpec) -> list[tuple[str, str]]:
    """Each stage's extra sbatch options: sbatch's own names, none that the harness renders itself."""
    out = []
    for section in (row.section for row in STAGE_ROWS):
        for option in getattr(spec, section).sbatch_extra:
            message = sbatch_options.check(option)
            if message:
                out.append((f"{section}.sbatch_extra", message))
    return out


ROLE_KEYS = {"encoder": "tokenizer.encoder", "decoder": "tokenizer.decoder", "checkpoint": "model.checkpoint",
             "text_encoder": "model.text_encoder"}


def _check_model(spec: RunSpec) -> list[tuple[str, str]]:
    m, out = spec.model, []
    if m.preset not in models.PRESETS:
        close = difflib.get_close_matches(m.preset, list(models.PRESETS), n=1, cutoff=0.4)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return [("model.preset", f"= {m.preset!r}: must be one of {', '.join(models.PRESETS)}{hint}")]
    if len(spec.tokenizer.compression) != 3:
        return [("tokenizer.compression", f"= {list(spec.tokenizer.compression)}: must be 3 integers [t, h, w]")]
    if spec.preset.video2world != spec.video2world:
        want = "a Video2World preset (cosmos-5b-v2w, cosmos-13b-v2w, tiny-v2w)" if spec.video2world else \
            "a base preset (cosmos-4b, cosmos-12b, tiny)"
        out.append(("model.preset", f"= {m.preset!r}: recipe {spec.run.recipe!r} needs {want}"))
    out += tokens.problems(spec.token_math)
    other = next((p for p in models.PRESETS.values() if p.hf_repo and p.hf_repo == m.checkpoint), None)
    if other is not None and other.name != m.preset:  # known before any download, unlike a local folder's shapes
        out.append(("model.preset", f"= {m.preset!r}, but model.checkpoint = {m.checkpoint!r} is {other.name!r}'s "
                                    "checkpoint: name that preset, or that preset's checkpoint"))
    for role in assets.roles(spec):
        why = assets.source_problem(role.source)
        if why:
            out.append((ROLE_KEYS[role.name], f"= {role.source!r}: {why}"))
    return out


def _check_data(spec: RunSpec) -> list[tuple[str, str]]:
    d, out = spec.data, []
    if spec.video2world:
        if not d.jsonl:
            out.append(("data.jsonl", "is required for recipe 'video2world'"))
        for key, value in (("data.videos", d.videos), ("data.manifest", d.manifest)):
            if value:
                out.append((key, "is not used by recipe 'video2world'; list videos in data.jsonl"))
    else:
        given = [k for k, v in (("data.videos", d.videos), ("data.manifest", d.manifest), ("data.jsonl", d.jsonl))
                 if v]
        if not given:
            out.append(("data.videos", "is required: a directory of videos (or data.manifest, a file listing them)"))
        elif len(given) > 1:
            out.append((given[-1], f"set exactly one of data.videos, data.manifest, data.jsonl "
                                   f"(found {' and '.join(given)})"))
    if len(d.split) != 3 or sum(d.split) <= 0:
        out.append(("data.split", f"= {list(d.split)}: must be 3 weights [train, val, test] with a positive sum"))
    elif d.split[0] <= 0:
        out.append(("data.split", f"= {list(d.split)}: the train weight must be positive"))
    bad = [e for e in d.extensions if not re.match(r"^\.[A-Za-z0-9]+$", e)]
    if bad:
        out.append(("data.extensions", f"= {list(d.extensions)}: {bad[0]!r} is not a file suffix; write it with its "
                                       f"dot, e.g. '.mp4'"))
    return out


def _tp_split(spec: RunSpec, stage: str, tp: int) -> list[tuple[str, str]]:
    """The model's dimensions a stage's tensor parallelism splits must divide evenly (heads, query groups, FFN
    width, vocabulary rows): megatron-core refuses otherwise, on the GPUs, after the queue."""
    if spec.model.preset not in models.PRESETS or tp == 1:
        return []
    bad = models.tp_problems(spec.preset, tp)
    return [(f"{stage}.tensor_parallel", f"= {tp}: the model {spec.model.preset!r} cannot be split so: "
                                         f"{'; '.join(bad)}")] if bad else []


def _check_finetune(spec: RunSpec) -> list[tuple[str, str]]:
    f, out = spec.finetune, []
    gpus = f.gpus_per_node
    if gpus and gpus % f.tensor_parallel:
        out.append(("finetune.tensor_parallel", f"= {f.tensor_parallel}: must divide finetune.gpus_per_node ({gpus})"))
    out += _tp_split(spec, "finetune", f.tensor_parallel)
    if f.sequence_parallel == "on" and f.tensor_parallel == 1:
        out.append(("finetune.sequence_parallel", "= 'on': needs finetune.tensor_parallel > 1 (is 1)"))
    elif f.sequence_parallel == "on" and f.engine == "nemo":
        out.append(("finetune.sequence_parallel", "= 'on': needs finetune.engine 'mcore' or 'auto' (is 'nemo', "
                                                  "which trains without it)"))
    dp = data_parallel(f)
    if f.global_batch_size % (f.micro_batch_size * dp):
        out.append(("finetune.global_batch_size",
                    f"= {f.global_batch_size}: must be a multiple of micro_batch_size x data-parallel size "
                    f"({f.micro_batch_size} x {dp})"))
    if f.save_every > f.max_steps:
        out.append(("finetune.save_every", f"= {f.save_every}: must be <= finetune.max_steps ({f.max_steps})"))
    if f.warmup_steps > f.max_steps:
        out.append(("finetune.warmup_steps", f"= {f.warmup_steps}: must be <= finetune.max_steps ({f.max_steps}); "
                                             f"the learning rate would never reach finetune.lr"))
    if f.min_lr > f.lr:
        out.append(("finetune.min_lr", f"= {f.min_lr}: must be <= finetune.lr ({f.lr})"))
    if f.val_every and len(spec.data.split) == 3 and spec.data.split[1] == 0:
        out.append(("data.split", f"= {list(spec.data.split)}: the validation weight is 0, but finetune.val_every = "
                                  f"{f.val_every} (omitted = save_every) computes a validation loss; give the "
                                  f"validation split a positive weight or set finetune.val_every = 0"))
    i = spec.infer
    if i.gpus_per_node and i.tensor_parallel > i.gpus_per_node:
        out.append(("infer.tensor_parallel", f"= {i.tensor_parallel}: infer runs one rank per GPU, so at most "
                                             f"infer.gpus_per_node ({i.gpus_per_node})"))
    elif i.tensor_parallel > 1 and i.gpus_per_node and i.gpus_per_node % i.tensor_parallel:
        out.append(("infer.tensor_parallel",
            f"= {i.tensor_parallel}: must divide infer.gpus_per_node ({i.gpus_per_node})"))
    out += _tp_split(spec, "infer", i.tensor_parallel)
    if 0 < i.temperature < MIN_TEMPERATURE:
        out.append(("infer.temperature", f"= {i.temperature:g}: 0 (greedy) or at least {MIN_TEMPERATURE:g}; a "
                                         "smaller one overflows the logits it divides and samples nothing"))
    if spec.model.preset in models.PRESETS and len(spec.tokenizer.compression) == 3 \
            and i.context_latent_frames >= spec.token_math.grid.t:
        out.append(("infer.context_latent_frames",
                    f"= {i.context_latent_frames}: must be below the {spec.token_math.grid.t} latent frames"))
    return out


def _check_gpus(spec: RunSpec) -> list[tuple[str, str]]:
    return hardware.gpu_problems(spec) if spec.model.preset in models.PRESETS else []


def _check_evaluate(spec: RunSpec) -> list[tuple[str, str]]:
    m = list(spec.evaluate.metrics)
    if not m:
        return [("evaluate.metrics", f"= []: name at least one of {', '.join(map(repr, metrics_table.NAMES))}")]
    twice = sorted({x for x in m if m.count(x) > 1})
    return [("evaluate.metrics", f"= {m}: {twice[0]!r} is listed twice")] if twice else []


def submit_problems(spec: RunSpec) -> list[Problem]:
    """Checks for a spec about to be planned or submitted to a cluster (`harness validate`, `plan`, `submit`),
    beyond the cross checks every spec passes: a real model needs GPUs on finetune and infer."""
    return [Problem(spec.source, k, m) for k, m in hardware.gpu_required_problems(spec) + _check_tracking(spec)]


def _check_tracking(spec: RunSpec) -> list[tuple[str, str]]:
    """Only where the run is planned: compute nodes import wandb from the same environment (or container)."""
    if spec.tracking.wandb and not wandb_installed():
        return [("tracking.wandb", "= true: the wandb package is not installed here (pip install -e '.[wandb]')")]
    return []


def warnings(spec: RunSpec) -> list[Problem]:
    """Things that do not stop a run but may break it: a container image outside the tested megatron-core."""
    return [Problem(spec.source, "container.image", w) for w in hardware.container_warnings(spec.container.image)]


def _check_container(spec: RunSpec) -> list[tuple[str, str]]:
    c, out = spec.container, []
    for s in c.stages:
        if s not in IN_CONTAINER:
            out.append(("container.stages", f"= {list(c.stages)}: {s!r} is not a stage that runs in the "
                                            f"container; choose from {', '.join(IN_CONTAINER)}"))
    for m in c.mounts:
        parts = m.split(":")
        if len(parts) not in (2, 3) or "," in m or not all(p.startswith("/") for p in parts[:2]):
            out.append(("container.mounts", f"= {m!r}: must be SRC:DST or SRC:DST:FLAGS, both absolute paths, "
                                            "without commas"))
    if not c.python or any(ch.isspace() for ch in c.python):
        out.append(("container.python", f"= {c.python!r}: must be one executable (a name on the container's PATH "
                                        "or an absolute path), without spaces"))
    if c.image and not (c.image.endswith(".sqsh") or "#" in c.image or "/" not in c.image.split(":")[0]):
        out.append(("container.image", f"= {c.image!r}: use an enroot URI with '#' after the registry "
                                       f"(e.g. nvcr.io#nvidia/nemo:26.02) or a .sqsh path"))
    for k in c.env:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
            out.append((f"container.env.{key_token(k)}", "must be a valid environment variable name"))
        elif is_secret(k):
            out.append((f"container.env.{k}", "looks like a secret, and secrets are read from the submitting "
                                              "environment only (a spec is copied into the run directory, its "
                                              "scripts and results): remove it and export it before submitting"))
    return out


def wandb_installed() -> bool:
    """Whether this environment can import wandb: the submitting machine's answer stands for the compute nodes,
    which run the same environment (or container)."""
    return importlib.util.find_spec("wandb") is not None


def _check_stage_fit(spec: RunSpec) -> list[tuple[str, str]]:
    """Values valid one by one that a stage would fail on (or quietly misuse) together, known from the spec."""
    out, d, i, e = [], spec.data, spec.infer, spec.evaluate
    if not i.inputs and len(d.split) == 3 and d.split[2] == 0:
        out.append(("data.split", f"= {list(d.split)}: the test weight is 0 and infer.inputs is '', so infer would "
                                  f"have nothing to generate from; give the test split a weight or set infer.inputs"))
    if spec.video2world and i.inputs and not i.inputs.endswith(".jsonl"):
        out.append(("infer.inputs", f"= {i.inputs!r}: Video2World generates from a prompt: give a .jsonl of "
                                    f"{{\"prompt\", \"visual_input\"}} lines (or '' for the test split)"))
    if e.protocol != "aligned" and e.tokenbench_frames > spec.video.num_frames:
        out.append(("evaluate.tokenbench_frames", f"= {e.tokenbench_frames}: more than the {spec.video.num_frames} "
                                                  f"frames a video has (video.num_frames); every pair would fail"))
    named = {k: tuple(map(int, m.groups())) for k, v in (("tokenizer.encoder", spec.tokenizer.encoder),
                                                          ("tokenizer.decoder", spec.tokenizer.decoder))
             if (m := re.search(r"-DV(\d+)x(\d+)x(\d+)$", v))}
    for key, comp in named.items():  # upstream names each DV repo by its compression (Cosmos-0.1-Tokenizer-DV4x8x8)
        if comp != tuple(spec.tokenizer.compression):
            out.append((key, f"= {getattr(spec.tokenizer, key.split('.')[1])!r}: a {'x'.join(map(str, comp))} "
                             f"tokenizer, but tokenizer.compression = {list(spec.tokenizer.compression)}"))
    if spec.tokenize.device == "cuda" and spec.tokenize.gpus_per_node == 0:
        out.append(("tokenize.device", "= 'cuda' but tokenize.gpus_per_node = 0: the tasks would get no GPU"))
    for name in dict.fromkeys(row.section for row in STAGE_ROWS):  # import-image and stage-assets share [assets]
        section = getattr(spec, name)
        if name != "finetune" and getattr(section, "nodes", 1) > 1:
            out.append((f"{name}.nodes", f"= {section.nodes}: " + (
                "infer runs on one node (its ranks are infer.tensor_parallel GPUs of that node)" if name == "infer"
                else "this stage runs one process a task: more nodes would run copies of it") + "; use 1"))
        delay = (spec.finetune.signal_delay_s if name == "finetune" else SIGNAL_DELAY_S) + SIGNAL_EARLY_S
        if section.time_min * 60 <= delay:
            out.append((f"{name}.time_min", f"= {section.time_min}: not longer than the {delay - SIGNAL_EARLY_S} s "
                                            f"warning signal (which Slurm may send up to {SIGNAL_EARLY_S} s early) "
                                            f"before the limit: the task would be requeued at once, again and again"))
    return out
