"""The run spec's shape: one frozen dataclass per TOML table, each field with its type, default, bounds and the
doc line the README's spec reference is generated from, and `RunSpec`, the whole file.

Pure declarations plus the few numbers derived from them (token math, data-parallel size); reading a file and
checking relations between fields live in `harness.core.spec` and `harness.core.spec_check`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Literal, Mapping

from harness.core import metrics_table, models, tokens
from harness.core.fields import opt
from harness.core.models import Precision
from harness.core.stages import STAGES

Recipe = Literal["base", "video2world"]
Engine = Literal["auto", "nemo", "mcore"]
Recompute = Literal["none", "selective", "full"]
SequenceParallel = Literal["auto", "on", "off"]
MetricBackend = Literal["auto", "fast", "skimage"]
Metric = Literal[metrics_table.NAMES]  # type: ignore[valid-type]  # the allowed values are the metric table's names
Device = Literal["auto", "cpu", "cuda"]
TextEncoderDtype = Literal["fp32", "bf16"]
VideoResize = Literal["upstream", "area"]
EvalProtocol = Literal["aligned", "tokenbench", "both"]
KVCache = Literal["model", "fp8"]
KeepOptimizer = Literal["last", "all"]
Baseline = Literal["auto", "on", "off"]

_SLURM_NAME = re.compile(r"^[A-Za-z0-9_.+-]*$")
RUN_NAME_MAX = 64
MIN_TEMPERATURE = 1e-3
"""The smallest sampling temperature but 0 (greedy): fp32 logits divided by less can overflow to inf, whose
softmax is NaN everywhere, and every sampled token is then id 0."""
_RUN_NAME = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9_.-]{{0,{RUN_NAME_MAX - 1}}}$")


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
    retries: int = opt(2, "times a task is run again after an infrastructure failure (NODE_FAIL, a lost GPU, an "
                          "NCCL timeout), its failed node excluded; a failure of its own code or input is never "
                          "retried", min=0, max=10)
    sbatch_extra: tuple[str, ...] = opt([], "further sbatch options for every script of the stage, e.g. "
                                            "[\"--mail-type=END\", \"--exclusive\"]: sbatch's long options, "
                                            "except those the harness sets itself")


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
    text_encoder_dtype: TextEncoderDtype = opt("fp32", "weights and compute of the prompt encoder in tokenize and "
                                                       "infer: fp32 as upstream (dataset preparation and inference "
                                                       "both run T5-11B in fp32), or bf16 (half the memory; other "
                                                       "embeddings than upstream's)")


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
    resize: VideoResize = opt("upstream", "upstream: upstream's dataset preparation (pixels to [-1, 1] in fp32, "
                                          "torchvision bilinear with antialias to ceil(scale x size), crop at "
                                          "round((H - h) / 2), back to uint8 rounded); area: swscale AREA on uint8 "
                                          "to round(scale x size), crop at floor((H - h) / 2)")


@dataclass(frozen=True)
class DataSection:
    videos: str = opt("", "directory of input videos, searched recursively, symlinked folders followed once "
                          "(recipe = base)")
    manifest: str = opt("", "instead of data.videos: a file listing the videos, one path a line, # starts a comment "
                            "line (write ./#x.mp4 for such a name), or .jsonl with a \"path\" key; relative paths "
                            "are relative to it; nothing is listed or stat-ed")
    jsonl: str = opt("", 'Video2World jsonl: one {"prompt", "visual_input"} per line (a video once: a later line '
                         "naming it again, another prompt, is left out and listed)")
    split: tuple[int, ...] = opt([10, 1, 1], "train, validation, test weights", min=0, max=1_000_000)
    extensions: tuple[str, ...] = opt([".mp4", ".mov", ".avi", ".mkv", ".webm"], "video file suffixes")
    cache_dir: str = opt("", "token cache on the shared filesystem: runs whose tokens would be identical (same "
                             "inputs, encoder, video size, resize, recipe, split, seed) tokenize and merge once and "
                             "reuse the dataset ('' = off; `harness cache ls`)")


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
    stages: tuple[str, ...] = opt([s.name for s in STAGES if s.container], "stages that run inside the container")
    import_image: bool = opt(True, "a registry image is imported once (the import-image task: enroot import) into "
                                   "cache_dir as a .sqsh that every container stage runs from, and reused by later "
                                   "runs; false: Pyxis pulls the registry image in every container task")
    cache_dir: str = opt("", "where imported images are kept ('' = <run.workdir>/images); on a filesystem every "
                             "node sees")
    image_gb: int = opt(40, "free space doctor requires in cache_dir for an image to import, GB (NeMo Framework "
                            "images are tens of GB; set the image's size)", min=0, max=100_000)


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
    gpu_memory_gib: int = opt(80, "memory of each finetune GPU in GiB (80: A100/H100 80GB; 139: H200): the GPU-count "
                                  "rule of the real presets is sized for 80 GB, a preset whose measured one-GPU "
                                  "peak fits this trains at TP = 1", min=1, max=100_000)
    global_batch_size: int = opt(1, "videos per optimizer step", min=1, max=1_000_000)
    micro_batch_size: int = opt(1, "videos per forward pass per data-parallel rank", min=1, max=4096)
    lr: float = opt(1e-4, "learning rate (the seed recipe's 1e-4, as upstream's post-training scripts)",
                    min=0.0, max=10.0)
    min_lr: float = opt(1e-4, "final learning rate of the cosine schedule; omitted = lr: a constant rate, as "
                              "upstream (NVIDIA/Cosmos nemo/post_training/general.py sets no scheduler)",
                        min=0.0, max=10.0, follows="lr")
    warmup_steps: int = opt(0, "linear warm-up steps", min=0, max=10_000_000)
    weight_decay: float = opt(0.01, "AdamW weight decay (upstream's post-training scripts set none, so megatron-core's "
                                    "OptimizerConfig default 0.01 applies)", min=0.0, max=10.0)
    grad_clip: float = opt(1.0, "gradient-norm clip (0 = off)", min=0.0, max=1e6)
    max_steps: int = opt(100, "optimizer steps", min=1, max=100_000_000)
    save_every: int = opt(25, "checkpoint every N steps (and at max_steps)", min=1, max=100_000_000)
    max_epochs: int = opt(1, "passes over the training split expected; max_steps governs (warns if it needs more)",
                          min=1, max=1_000_000)
    precision: Precision = opt("bf16-mixed", "bf16 compute with fp32 master weights, or fp32")
    recompute: Recompute = opt("none", "activation recompute")
    keep_optimizer: KeepOptimizer = opt("last", "which checkpoints keep their optimizer state (fp32 master copy, "
                                                "Adam moments; ~6x the bf16 weights): last = only the newest "
                                                "complete one (what a resume needs; older ones keep their weights, "
                                                "all evaluation needs), all = every one")
    sequence_parallel: SequenceParallel = opt("off", "megatron sequence parallelism at TP > 1 (norms and residuals "
                                              "on 1/TP of the tokens; reduce-scatter/all-gather instead of "
                                              "all-reduce; mcore engine): saves activation memory, not time "
                                              "(2 x H200, 4B: 390 vs 382 ms/step); auto = on with TP > 1 on GPUs")
    val_every: int = opt(25, "validation loss every N steps, and at step 0 and max_steps (0 = off); omitted = "
                             "save_every, so each checkpoint has one", min=0, max=100_000_000, follows="save_every")
    val_videos: int = opt(256, "validation videos each validation point reads: the first N of the validation split "
                               "(data.split), the same ones every time", min=1, max=256)
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
    temperature: float = opt(1.0, f"sampling temperature (0 = greedy, else at least {MIN_TEMPERATURE:g})", min=0.0,
                             max=100.0)
    top_p: float = opt(0.8, "nucleus sampling mass", min=0.0, max=1.0)
    batch_size: int = opt(8, "inputs generated together (0 = auto: the largest batch whose KV cache and prefill "
                          "fit in the GPU's free memory)", min=0, max=1024)
    kv_cache: KVCache = opt("model", "keys/values of the decode cache: model (the model's dtype) or fp8 (e4m3 "
                                     "codes with a scale per position and head: about half the memory and "
                                     "bytes a step reads, so larger batches and faster whole videos; attention "
                                     "then sees quantized keys/values)")
    tensor_parallel: int = opt(1, "tensor-parallel size for generation: ranks per infer task, one per GPU",
                               min=1, max=64)
    baseline: Baseline = opt("auto", "also infer and evaluate step 0, the weights before post-training (the "
                                     "pretrained model.checkpoint with the new tokenizer, or a random "
                                     "initialisation from run.seed where it is ''), with the same inputs and "
                                     "seeds, as the first row of the report; auto: on when model.checkpoint is "
                                     "set")


@dataclass(frozen=True)
class EvaluateSection(Resources):
    reference: str = opt("", "folder of reference videos, searched recursively: a generated video's is the file at "
                             "its source's path under the inputs' folder, else the only one of its source's name "
                             "('' = the source itself)")
    backend: MetricBackend = opt("auto", "fast (vectorized, GPU if present) or skimage (reference)")
    metrics: tuple[Metric, ...] = opt(list(metrics_table.NAMES), "metrics computed, written and reported: "
                                      + ", ".join(metrics_table.NAMES))
    protocol: EvalProtocol = opt("aligned", "aligned: frames paired as infer generated them, at the generated "
                                            "size; tokenbench: TokenBench's preprocessing (first tokenbench_frames "
                                            "frames, short side to tokenbench_width with Lanczos, H.264 re-encode) "
                                            "and frame i vs frame i; both: each, reported side by side")
    tokenbench_width: int = opt(320, "tokenbench protocol: short side after the Lanczos resize (its --width)",
                                min=8, max=16_384)
    tokenbench_frames: int = opt(17, "tokenbench protocol: first frames of each file compared (its --num_frames)",
                                 min=1, max=100_000)


@dataclass(frozen=True)
class ReportSection(Resources):
    pass


@dataclass(frozen=True)
class TrackingSection:
    """TensorBoard event files are always written (<run>/tensorboard); W&B only when asked."""

    wandb: bool = opt(False, "also log to Weights & Biases: offline on compute nodes, uploaded by `harness sync RUN`")
    wandb_project: str = opt("harness", "W&B project", pattern=re.compile(r"^[A-Za-z0-9_.-]{1,128}$"))
    wandb_entity: str = opt("", "W&B entity (team or user; '' = the key's default)",
        pattern=re.compile(r"^[A-Za-z0-9_.-]{0,128}$"))


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


def ranks_per_node(f: FinetuneSection) -> int:
    """One rank per GPU; on CPU-only nodes, one (gloo) rank per tensor-parallel shard."""
    return f.gpus_per_node or f.tensor_parallel


def data_parallel(f: FinetuneSection) -> int:
    """Data-parallel size: every rank of every node, divided by the tensor-parallel group."""
    return max(1, ranks_per_node(f) * f.nodes // f.tensor_parallel)
