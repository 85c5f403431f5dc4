"""Run spec: a TOML file becomes one frozen, typed `RunSpec`, or a list of one-line problems.

Every field is declared once here, with its type, default, bounds and a one-line doc (the README's spec
reference is generated from these). Unknown keys are errors with the closest valid key suggested.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from harness.core import models

from harness.core import tokens
from harness.core.errors import Problem, SpecError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

Recipe = Literal["base", "video2world"]
Engine = Literal["auto", "nemo", "mcore"]
Precision = Literal["bf16-mixed", "fp32"]
Recompute = Literal["none", "selective", "full"]
SequenceParallel = Literal["auto", "on", "off"]
MetricBackend = Literal["auto", "fast", "skimage"]
Metric = Literal["psnr", "ssim"]
Device = Literal["auto", "cpu", "cuda"]

_SLURM_NAME = re.compile(r"^[A-Za-z0-9_.+-]*$")
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def opt(default: Any, doc: str, *, min: float | None = None, max: float | None = None,
        pattern: re.Pattern[str] | None = None) -> Any:
    """A spec field: its default, its doc line for the README, and its bounds."""
    meta = {"doc": doc, "min": min, "max": max, "pattern": pattern}
    if isinstance(default, (dict, list)):
        frozen = types.MappingProxyType(dict(default)) if isinstance(default, dict) else tuple(default)
        return field(default_factory=lambda: frozen, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Resources:
    """Slurm resources of one stage; flat keys inside the stage's table."""

    partition: str = opt("", "Slurm partition ('' = cluster default)", pattern=_SLURM_NAME)
    account: str = opt("", "Slurm account", pattern=_SLURM_NAME)
    qos: str = opt("", "Slurm QOS", pattern=_SLURM_NAME)
    time_min: int = opt(60, "wall-time limit per task, minutes", min=1, max=60 * 24 * 30)
    nodes: int = opt(1, "nodes per task", min=1, max=4096)
    gpus_per_node: int = opt(0, "GPUs per node", min=0, max=16)
    cpus_per_task: int = opt(2, "CPUs per Slurm task", min=1, max=1024)
    mem_gb: int = opt(0, "memory per node in GB (0 = partition default)", min=0, max=100_000)
    constraint: str = opt("", "Slurm --constraint expression", pattern=re.compile(r"^[A-Za-z0-9_.&|\[\]*:,()-]*$"))
    array_throttle: int = opt(0, "at most this many array tasks at once (0 = no limit)", min=0, max=100_000)


@dataclass(frozen=True)
class RunSection:
    name: str = opt("run", "run name: letters, digits, '_', '.', '-'; the run id starts with it", pattern=_RUN_NAME)
    workdir: str = opt("runs", "where run directories are created (shared filesystem on a cluster)")
    results_dir: str = opt("results", "where reports and benchmark figures are written")
    recipe: Recipe = opt("base", "base (video dir) or video2world (jsonl with prompts)")
    seed: int = opt(1234, "seed for data split, training and sampling", min=0, max=2**31 - 1)


@dataclass(frozen=True)
class ModelSection:
    preset: str = opt("cosmos-4b", "model shape: " + ", ".join(models.PRESETS))
    checkpoint: str = opt("", "pretrained start: HF repo id or local dir of a NeMo 2 checkpoint ('' = random init)")
    text_encoder: str = opt("google-t5/t5-11b", "Video2World prompt encoder: HF repo id or local dir")


@dataclass(frozen=True)
class TokenizerSection:
    encoder: str = opt("nvidia/Cosmos-0.1-Tokenizer-DV4x8x8", "DV encoder: HF repo id or local dir with encoder.jit")
    decoder: str = opt("nvidia/Cosmos-0.1-Tokenizer-DV4x8x8", "DV decoder: HF repo id or local dir with decoder.jit")
    compression: tuple[int, ...] = opt([4, 8, 8], "temporal, height, width compression [t, h, w]", min=1, max=64)


@dataclass(frozen=True)
class VideoSection:
    width: int = opt(512, "pixels after resize-to-cover and center crop", min=1, max=16_384)
    height: int = opt(320, "pixels after resize-to-cover and center crop", min=1, max=16_384)
    num_frames: int = opt(17, "frames per clip (1 + k * t); short clips are padded with their last frame",
                          min=1, max=100_000)
    fps: int = opt(25, "frame rate of generated videos", min=1, max=240)


@dataclass(frozen=True)
class DataSection:
    videos: str = opt("", "directory of input videos, searched recursively (recipe = base)")
    manifest: str = opt("", "instead of data.videos: a file listing the videos, one path a line (or .jsonl with a "
                            "\"path\" key); relative paths are relative to it; nothing is listed or stat-ed")
    jsonl: str = opt("", 'Video2World jsonl: one {"prompt", "visual_input"} per line')
    split: tuple[int, ...] = opt([10, 1, 1], "train, validation, test weights", min=0, max=1_000_000)
    extensions: tuple[str, ...] = opt([".mp4", ".mov", ".avi", ".mkv", ".webm"], "video file suffixes")


@dataclass(frozen=True)
class AssetsSection(Resources):
    hf_home: str = opt("~/.cache/huggingface", "HF cache on a filesystem every node sees")
    revisions: Mapping[str, str] = opt({}, "HF revision per repo id, e.g. {\"nvidia/...\" = \"main\"}")


@dataclass(frozen=True)
class ContainerSection:
    image: str = opt("", "enroot image URI (nvcr.io#nvidia/nemo:26.02) or .sqsh path; '' = no container")
    mounts: tuple[str, ...] = opt([], "extra SRC:DST[:FLAGS] mounts")
    workdir: str = opt("", "container working directory (default: the harness mount)")
    env: Mapping[str, str] = opt({}, "environment variables set inside the container")
    python: str = opt("python", "python executable inside the container")
    harness_mount: str = opt("/opt/harness", "where the harness source is mounted inside the container")
    stages: tuple[str, ...] = opt(["finetune", "infer"], "stages that run inside the container")


@dataclass(frozen=True)
class TokenizeSection(Resources):
    shards: int = opt(0, "array tasks (0 = from the inputs and nodes_available)", min=0, max=1_000_000)
    videos_per_shard: int = opt(100, "target videos per shard when shards = 0", min=1, max=1_000_000)
    nodes_available: int = opt(0, "nodes to spread over (0 = ask the cluster)", min=0, max=100_000)
    batch_size: int = opt(4, "clips encoded together", min=1, max=1024)
    decode_workers: int = opt(2, "processes decoding videos while the encoder runs", min=0, max=256)
    device: Device = opt("auto", "encoder device")


@dataclass(frozen=True)
class MergeSection(Resources):
    pass


@dataclass(frozen=True)
class FinetuneSection(Resources):
    engine: Engine = opt("auto", "nemo (NeMo 2 llm.api.train), mcore (lean megatron-core loop), or auto")
    tensor_parallel: int = opt(1, "tensor-parallel size, within one node", min=1, max=64)
    global_batch_size: int = opt(1, "videos per optimizer step", min=1, max=1_000_000)
    micro_batch_size: int = opt(1, "videos per forward pass per data-parallel rank", min=1, max=4096)
    lr: float = opt(1e-4, "learning rate", min=0.0, max=10.0)
    min_lr: float = opt(0.0, "final learning rate of the cosine schedule (= lr: constant)", min=0.0, max=10.0)
    warmup_steps: int = opt(0, "linear warm-up steps", min=0, max=10_000_000)
    weight_decay: float = opt(0.1, "AdamW weight decay", min=0.0, max=10.0)
    grad_clip: float = opt(1.0, "gradient-norm clip (0 = off)", min=0.0, max=1e6)
    max_steps: int = opt(100, "optimizer steps", min=1, max=100_000_000)
    save_every: int = opt(25, "checkpoint every N steps (and at max_steps)", min=1, max=100_000_000)
    max_epochs: int = opt(1, "passes over the training split expected; max_steps governs (warns if it needs more)",
                          min=1, max=1_000_000)
    precision: Precision = opt("bf16-mixed", "bf16 compute with fp32 master weights, or fp32")
    recompute: Recompute = opt("none", "activation recompute")
    sequence_parallel: SequenceParallel = opt("off", "megatron sequence parallelism at TP > 1 (norms and residuals "
                                              "on 1/TP of the tokens; reduce-scatter/all-gather instead of "
                                              "all-reduce; mcore engine): saves activation memory, not time "
                                              "(2 x H200, 4B: 390 vs 382 ms/step); auto = on with TP > 1 on GPUs")
    log_every: int = opt(1, "metrics log interval in steps", min=1, max=1_000_000)
    signal_delay_s: int = opt(120, "seconds of warning (SIGUSR2) before a time limit, to checkpoint", min=0,
                              max=3600)


@dataclass(frozen=True)
class InferSection(Resources):
    inputs: str = opt("", "videos/images (dir) or Video2World jsonl to continue ('' = the test split)")
    max_inputs: int = opt(8, "inputs generated per checkpoint", min=1, max=1_000_000)
    inputs_per_task: int = opt(0, "inputs per infer/evaluate array task: the arrays become checkpoints x "
                                  "ceil(max_inputs / inputs_per_task) shards (0 = all inputs in one task)",
                               min=0, max=1_000_000)
    context_latent_frames: int = opt(2, "latent frames of context (1 for images)", min=1, max=1024)
    temperature: float = opt(1.0, "sampling temperature (0 = greedy)", min=0.0, max=100.0)
    top_p: float = opt(0.8, "nucleus sampling mass", min=0.0, max=1.0)
    batch_size: int = opt(8, "inputs generated together (0 = auto: the largest batch whose KV cache and prefill "
                          "fit in the GPU's free memory)", min=0, max=1024)
    tensor_parallel: int = opt(1, "tensor-parallel size for generation: ranks per infer task, one per GPU",
                               min=1, max=64)


@dataclass(frozen=True)
class EvaluateSection(Resources):
    reference: str = opt("", "reference videos, matched by file name ('' = the infer inputs)")
    backend: MetricBackend = opt("auto", "fast (vectorized, GPU if present) or skimage (reference)")
    metrics: tuple[Metric, ...] = opt(["psnr", "ssim"], "metrics computed, written and reported: psnr, ssim")


@dataclass(frozen=True)
class ReportSection(Resources):
    pass


@dataclass(frozen=True)
class TrackingSection:
    """TensorBoard event files are always written (<run>/tensorboard); W&B only when asked."""

    wandb: bool = opt(False, "also log to Weights & Biases: offline on compute nodes, uploaded by `harness sync RUN`")
    wandb_project: str = opt("harness", "W&B project", pattern=re.compile(r"^[A-Za-z0-9_.-]{1,128}$"))
    wandb_entity: str = opt("", "W&B entity (team or user; '' = the key's default)", pattern=re.compile(r"^[A-Za-z0-9_.-]{0,128}$"))


@dataclass(frozen=True)
class RunSpec:
    run: RunSection = field(default_factory=RunSection)
    model: ModelSection = field(default_factory=ModelSection)
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    video: VideoSection = field(default_factory=VideoSection)
    data: DataSection = field(default_factory=DataSection)
    assets: AssetsSection = field(default_factory=AssetsSection)
    container: ContainerSection = field(default_factory=ContainerSection)
    tokenize: TokenizeSection = field(default_factory=TokenizeSection)
    merge: MergeSection = field(default_factory=MergeSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    infer: InferSection = field(default_factory=InferSection)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    report: ReportSection = field(default_factory=ReportSection)
    tracking: TrackingSection = field(default_factory=TrackingSection)
    source: str = field(default="<spec>", compare=False)
    """The file this spec was read from, for error messages."""

    @property
    def preset(self) -> models.ModelPreset:
        return models.PRESETS[self.model.preset]

    @property
    def token_math(self) -> tokens.TokenMath:
        c = self.tokenizer.compression
        return tokens.compute(self.video.num_frames, self.video.height, self.video.width,
                              (c[0], c[1], c[2]), self.preset)

    @property
    def video2world(self) -> bool:
        return self.run.recipe == "video2world"


SECTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RunSpec) if f.name != "source")


# ----------------------------------------------------------------------------------------- loading
def load(path: str | Path) -> RunSpec:
    """Read and validate a spec file; raises SpecError with every problem found."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(Problem(str(path), "", f"cannot read: {e.__class__.__name__}: {e}")) from None
    return loads(text, source=str(path))


def loads(text: str, source: str = "<spec>") -> RunSpec:
    try:
        raw = tomllib.loads(text)
    except ValueError as e:  # TOMLDecodeError, and int() refusing a number of more than 4,300 digits
        raise SpecError(Problem(source, "", f"not valid TOML: {_first_line(e)}")) from None
    except RecursionError:  # tomllib recurses once per nesting level of arrays / inline tables
        raise SpecError(Problem(source, "", "not valid TOML: arrays or inline tables nested too deeply")) from None
    return from_dict(raw, source)


def from_dict(raw: Mapping[str, Any], source: str = "<spec>") -> RunSpec:
    problems: list[Problem] = []
    sections: dict[str, Any] = {}
    _unknown_keys(raw, SECTIONS, "", source, problems)
    hints = typing.get_type_hints(RunSpec)
    for name in SECTIONS:
        table = raw.get(name, {})
        if not isinstance(table, Mapping):
            problems.append(Problem(source, name, f"= {_show(table)}: must be a table [{name}]"))
            continue
        sections[name] = _build(hints[name], table, name, source, problems)
    if problems:
        raise SpecError(problems)
    spec = RunSpec(**sections, source=source)
    problems = cross_check(spec)
    if problems:
        raise SpecError(problems)
    return spec


def to_dict(spec: RunSpec) -> dict[str, Any]:
    """Plain data for spec.json: enough to rebuild the identical spec with from_dict."""
    out: dict[str, Any] = {}
    for name in SECTIONS:
        sec = getattr(spec, name)
        out[name] = {f.name: _plain(getattr(sec, f.name)) for f in dataclasses.fields(sec)}
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, Mapping):
        return dict(v)
    return v


def _unknown_keys(table: Mapping[str, Any], valid: tuple[str, ...], prefix: str, source: str,
                  problems: list[Problem]) -> None:
    for key in table:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(valid)}"
            problems.append(Problem(source, prefix + _key(key), f"unknown key; {hint}"))


def _key(key: Any) -> str:
    """A key as one printable token, quoted as TOML would when it is not bare (a quoted key may hold
    spaces, dots, line breaks or control characters, which would otherwise break the one-line message)."""
    text = str(key)
    if re.fullmatch(r"[A-Za-z0-9_-]+", text):
        return text
    body = "".join("\\" + ch if ch in '"\\' else ch if ch.isprintable() else
                   (f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}") for ch in text)
    return f'"{body}"'


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else e.__class__.__name__


def _build(cls: type, table: Mapping[str, Any], section: str, source: str, problems: list[Problem]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _unknown_keys(table, tuple(fields), section + ".", source, problems)
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in table:
            continue
        key = f"{section}.{name}"
        value, message = _coerce(hints[name], table[name], f.metadata)
        if message:
            problems.append(Problem(source, key, f"= {_show(table[name])}: {message}"))
        else:
            values[name] = value
    return cls(**values)


def _coerce(tp: Any, value: Any, meta: Mapping[str, Any]) -> tuple[Any, str]:
    """Returns (value, "") or (None, what is allowed)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value in allowed:
            return value, ""
        return None, "must be one of " + ", ".join(repr(a) for a in allowed)
    if origin is tuple:
        (item_tp, _) = typing.get_args(tp)
        if not isinstance(value, list):
            return None, f"must be a list of {_type_name(item_tp)}"
        items = []
        for i, v in enumerate(value):
            item, message = _coerce(item_tp, v, meta)
            if message:
                return None, f"item {i}: {message}"
            items.append(item)
        return tuple(items), ""
    if origin in (Mapping, dict, collections.abc.Mapping):
        if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
            return None, "must be a table of strings"
        if any(_bad_chars(str(k)) or _bad_chars(v) for k, v in value.items()):
            return None, "keys and values must not contain NUL or line breaks"
        return types.MappingProxyType(dict(value)), ""
    return _scalar(tp, value, meta)


def _scalar(tp: Any, value: Any, meta: Mapping[str, Any]) -> tuple[Any, str]:
    if tp is bool:
        return (value, "") if isinstance(value, bool) else (None, "must be true or false")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        return None, "must be an integer" + _bounds(meta)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None, "must be a finite number" + _bounds(meta)
        value = float(value)
    if tp is str:
        if not isinstance(value, str):
            return None, "must be a string"
        if _bad_chars(value):
            return None, "must not contain NUL or line breaks"
        pattern = meta.get("pattern")
        if pattern is not None and not pattern.match(value):
            return None, f"must match {pattern.pattern}"
        return value, ""
    lo, hi = meta.get("min"), meta.get("max")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        return None, "out of range" + _bounds(meta)
    return value, ""


def _bad_chars(value: str) -> bool:
    """NUL cannot reach a process argument or a script; a line break would split one sbatch/shell line."""
    return "\x00" in value or "\n" in value or "\r" in value


def _bounds(meta: Mapping[str, Any]) -> str:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is None and hi is None:
        return ""
    return f" in [{lo}, {hi}]"


def _type_name(tp: Any) -> str:
    return {int: "integers", str: "strings", float: "numbers"}.get(tp, str(tp))


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    if isinstance(value, bool):
        text = "true" if value else "false"
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------------------------------- cross checks
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
    return [Problem(spec.source, k, m) for k, m in out]


def _check_paths(spec: RunSpec) -> list[tuple[str, str]]:
    """Paths may hold spaces, quotes, '$(...)', ';' or '#' (every script quotes them), but the run directory
    also appears in #SBATCH --output/--error, where sbatch reads '\\' as an escape even inside quotes and
    Slurm expands '%' patterns; and Pyxis splits --container-mounts at ',' and ':'."""
    out = []
    w = spec.run.workdir
    if "\\" in w or "%" in w:
        out.append(("run.workdir", f"= {_show(w)}: must not contain '\\' or '%' (sbatch and Slurm's log file "
                                   f"names give them a meaning)"))
    if spec.container.image:
        for key, value in (("run.workdir", w), ("assets.hf_home", spec.assets.hf_home)):
            if "," in value or ":" in value:
                out.append((key, f"= {_show(value)}: must not contain ',' or ':' when container.image is set "
                                 f"(Pyxis splits --container-mounts there)"))
    return out


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
    return out


def _check_finetune(spec: RunSpec) -> list[tuple[str, str]]:
    f, out = spec.finetune, []
    gpus = f.gpus_per_node
    if gpus and gpus % f.tensor_parallel:
        out.append(("finetune.tensor_parallel", f"= {f.tensor_parallel}: must divide finetune.gpus_per_node ({gpus})"))
    heads = spec.preset.num_attention_heads if spec.model.preset in models.PRESETS else 0
    if heads and heads % f.tensor_parallel:
        out.append(("finetune.tensor_parallel", f"= {f.tensor_parallel}: must divide the model's {heads} attention heads"))
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
    if f.min_lr > f.lr:
        out.append(("finetune.min_lr", f"= {f.min_lr}: must be <= finetune.lr ({f.lr})"))
    i = spec.infer
    if i.gpus_per_node and i.tensor_parallel > i.gpus_per_node:
        out.append(("infer.tensor_parallel", f"= {i.tensor_parallel}: infer runs one rank per GPU, so at most "
                                             f"infer.gpus_per_node ({i.gpus_per_node})"))
    elif i.tensor_parallel > 1 and i.gpus_per_node and i.gpus_per_node % i.tensor_parallel:
        out.append(("infer.tensor_parallel", f"= {i.tensor_parallel}: must divide infer.gpus_per_node ({i.gpus_per_node})"))
    if spec.model.preset in models.PRESETS and len(spec.tokenizer.compression) == 3 \
            and i.context_latent_frames >= spec.token_math.grid.t:
        out.append(("infer.context_latent_frames",
                    f"= {i.context_latent_frames}: must be below the {spec.token_math.grid.t} latent frames"))
    return out


def _check_gpus(spec: RunSpec) -> list[tuple[str, str]]:
    from harness.core import hardware

    return hardware.gpu_problems(spec) if spec.model.preset in models.PRESETS else []


def _check_evaluate(spec: RunSpec) -> list[tuple[str, str]]:
    m = list(spec.evaluate.metrics)
    if not m:
        return [("evaluate.metrics", "= []: name at least one of 'psnr', 'ssim'")]
    twice = sorted({x for x in m if m.count(x) > 1})
    return [("evaluate.metrics", f"= {m}: {twice[0]!r} is listed twice")] if twice else []


def submit_problems(spec: RunSpec) -> list[Problem]:
    """Checks for a spec about to be planned or submitted to a cluster (`harness validate`, `plan`, `submit`),
    beyond the cross checks every spec passes: a real model needs GPUs on finetune and infer."""
    from harness.core import hardware

    return [Problem(spec.source, k, m) for k, m in hardware.gpu_required_problems(spec) + _check_tracking(spec)]


def _check_tracking(spec: RunSpec) -> list[tuple[str, str]]:
    """Only where the run is planned: compute nodes import wandb from the same environment (or container)."""
    from harness.report import tracking

    if spec.tracking.wandb and not tracking.wandb_installed():
        return [("tracking.wandb", "= true: the wandb package is not installed here (pip install -e '.[wandb]')")]
    return []


def load_for_submit(path: str | Path) -> RunSpec:
    """`load` plus `submit_problems`: what a user's spec file must pass before anything is planned from it."""
    spec = load(path)
    problems = submit_problems(spec)
    if problems:
        raise SpecError(problems)
    return spec


def warnings(spec: RunSpec) -> list[Problem]:
    """Things that do not stop a run but may break it: a container image outside the tested megatron-core."""
    from harness.core import hardware

    return [Problem(spec.source, "container.image", w) for w in hardware.container_warnings(spec.container.image)]


def _check_container(spec: RunSpec) -> list[tuple[str, str]]:
    c, out = spec.container, []
    stages = ("stage-assets", "tokenize", "merge", "finetune", "infer", "evaluate", "report")
    for s in c.stages:
        if s not in stages:
            out.append(("container.stages", f"= {list(c.stages)}: {s!r} is not a stage; choose from {', '.join(stages)}"))
    for m in c.mounts:
        if m.count(":") not in (1, 2) or "," in m:
            out.append(("container.mounts", f"= {m!r}: must be SRC:DST or SRC:DST:FLAGS without commas"))
    if c.image and not (c.image.endswith(".sqsh") or "#" in c.image or "/" not in c.image.split(":")[0]):
        out.append(("container.image", f"= {c.image!r}: use an enroot URI with '#' after the registry "
                                       f"(e.g. nvcr.io#nvidia/nemo:26.02) or a .sqsh path"))
    for k in c.env:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
            out.append((f"container.env.{_key(k)}", "must be a valid environment variable name"))
    return out


def ranks_per_node(f: FinetuneSection) -> int:
    """One rank per GPU; on CPU-only nodes, one (gloo) rank per tensor-parallel shard."""
    return f.gpus_per_node or f.tensor_parallel


def data_parallel(f: FinetuneSection) -> int:
    """Data-parallel size: every rank of every node, divided by the tensor-parallel group."""
    return max(1, ranks_per_node(f) * f.nodes // f.tensor_parallel)


def reference() -> list[tuple[str, str, str, str]]:
    """(key, type, default, doc) rows for the README's spec reference."""
    rows = []
    hints = typing.get_type_hints(RunSpec)
    for name in SECTIONS:
        cls = hints[name]
        sub = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            rows.append((f"{name}.{f.name}", _tp_str(sub[f.name]), repr(_plain(default)), f.metadata.get("doc", "")))
    return rows


def _tp_str(tp: Any) -> str:
    """The type as a TOML user writes it: integer, string, array of integers, table of strings, or the choices."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "array of " + _type_name(typing.get_args(tp)[0])
    if origin in (Mapping, dict, collections.abc.Mapping):
        return "table of " + _type_name(typing.get_args(tp)[1])
    return {int: "integer", str: "string", float: "float", bool: "boolean"}.get(tp, str(tp))


def absolutize(spec: RunSpec, base: Path) -> RunSpec:
    """Relative paths resolve against `base` (the submit directory) once, so every task on every node sees
    the same absolute paths in the frozen spec. Repo ids stay repo ids unless a local path of that name exists."""

    def path(p: str) -> str:
        return str((base / Path(p).expanduser()).resolve()) if p else p

    def asset(p: str) -> str:
        local = base / Path(p).expanduser()
        return str(local.resolve()) if p and (p.startswith(("/", "./", "../", "~")) or local.exists()) else p

    r = dataclasses.replace
    return r(spec,
             run=r(spec.run, workdir=path(spec.run.workdir), results_dir=path(spec.run.results_dir)),
             data=r(spec.data, videos=path(spec.data.videos), manifest=path(spec.data.manifest),
                    jsonl=path(spec.data.jsonl)),
             assets=r(spec.assets, hf_home=path(spec.assets.hf_home)),
             model=r(spec.model, checkpoint=asset(spec.model.checkpoint), text_encoder=asset(spec.model.text_encoder)),
             tokenizer=r(spec.tokenizer, encoder=asset(spec.tokenizer.encoder), decoder=asset(spec.tokenizer.decoder)),
             infer=r(spec.infer, inputs=path(spec.infer.inputs)),
             evaluate=r(spec.evaluate, reference=path(spec.evaluate.reference)))
