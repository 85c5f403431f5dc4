"""What a run will write, in bytes, from the plan and the token math alone: the one place these sizes are
derived (`harness doctor` checks free space against them; `harness plan` prints them).

Every figure is an estimate with its basis stated in `Item.basis`, so a user can see why a number is what it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness.core.models import PROMPT_ROWS

if TYPE_CHECKING:
    from harness.core.plan import Plan

TOKEN_BYTES = 2
"""Token datasets are uint16 (vocabulary 64,064 < 65,536): docs/design.md, "The Cosmos recipe"."""
INDEX_BYTES_PER_DOC = 20
"""Megatron .idx: int32 length + int64 pointer per sequence, int64 document offset (+ header)."""
WEIGHT_BYTES_PER_PARAM = {"bf16-mixed": 2, "fp32": 4}
"""A checkpoint's `weights/`: the model's parameters as it trains them (bf16, or fp32)."""
OPTIMIZER_BYTES_PER_PARAM = {"bf16-mixed": 4 + 4 + 4, "fp32": 4 + 4}
"""A checkpoint's `optimizer/`: fp32 master copy (bf16-mixed only) + Adam exp_avg + exp_avg_sq."""
CHECKPOINT_BYTES_PER_PARAM = {k: WEIGHT_BYTES_PER_PARAM[k] + OPTIMIZER_BYTES_PER_PARAM[k]
                              for k in WEIGHT_BYTES_PER_PARAM}
"""What one save writes (harness/cosmos/checkpoint.save: weights and optimizer state)."""
VIDEO_BYTES_PER_PIXEL = 0.25
"""Generated mp4 (libx264, crf 12): an upper-bound assumption of 2 bits a pixel-frame (measured clips are smaller)."""
PRETRAINED_BYTES_PER_PARAM = 2
"""A pretrained Cosmos NeMo checkpoint holds bf16 weights only."""
T5_BYTES = 45 * 10**9
"""google-t5/t5-11b: fp32 weights, ~45 GB on the Hub."""


def checkpoint_bytes(params: int, precision: str) -> int:
    """What one save writes, weights and optimizer state: what the trainer checks is free before each save (with
    the precision it really trains in: fp32 on CPU). Older checkpoints' optimizer state is removed only once the
    new save is complete (a crash mid-save must leave a checkpoint to resume from), so nothing it frees counts."""
    return params * CHECKPOINT_BYTES_PER_PARAM[precision]


@dataclass(frozen=True)
class CheckpointDisk:
    """The disk a run's `count` checkpoints take under `finetune.keep_optimizer` (`keep`): `final` once training
    is done, `peak` the most at any time (with "last": the newest's optimizer state and the one being written)."""

    count: int
    weights: int
    """Bytes of one checkpoint's weights."""
    optimizer: int
    """Bytes of one checkpoint's optimizer state."""
    keep: str

    @property
    def final(self) -> int:
        kept = self.count if self.keep == "all" else min(self.count, 1)
        return self.count * self.weights + kept * self.optimizer

    @property
    def peak(self) -> int:
        kept = self.count if self.keep == "all" else min(self.count, 2)
        return self.count * self.weights + kept * self.optimizer

    def basis(self, precision: str) -> str:
        w, o = self.weights / 1e9, self.optimizer / 1e9
        each = (f"{WEIGHT_BYTES_PER_PARAM[precision]} B weights + {OPTIMIZER_BYTES_PER_PARAM[precision]} B "
                f"master + Adam per param, {precision}")
        if self.keep == "all":
            return f"{self.count} x ({w:,.1f} GB weights + {o:,.1f} GB optimizer) ({each}; keep_optimizer = all)"
        return (f"{self.count} x {w:,.1f} GB weights + {o:,.1f} GB optimizer in the newest only, twice while the "
                f"next save is written ({each}; keep_optimizer = last: {self.final / 1e9:,.1f} GB at the end; "
                f"all: {self.count * (self.weights + self.optimizer) / 1e9:,.1f} GB)")


def checkpoint_disk(params: int, precision: str, count: int, keep: str) -> CheckpointDisk:
    return CheckpointDisk(count, params * WEIGHT_BYTES_PER_PARAM[precision],
                          params * OPTIMIZER_BYTES_PER_PARAM[precision], keep)


@dataclass(frozen=True)
class Item:
    what: str
    where: str
    """'workdir' or 'hf_home': which filesystem it lands on."""
    bytes: int
    basis: str


def items(plan: Plan) -> tuple[Item, ...]:
    spec, tm = plan.spec, plan.token_math
    n = plan.num_inputs
    tokens = n * (tm.sample_length * TOKEN_BYTES + INDEX_BYTES_PER_DOC)
    prompts = n * PROMPT_ROWS * spec.preset.crossattn_dim * 4 if spec.video2world else 0  # float32 T5 embeddings
    also = f" + {n:,} prompt embeddings of {PROMPT_ROWS} x {spec.preset.crossattn_dim} x 4 B" if prompts else ""
    disk = checkpoint_disk(spec.preset.params, spec.finetune.precision, len(plan.checkpoint_steps),
                           spec.finetune.keep_optimizer)
    e = len(plan.eval_steps)
    frames, h, w = spec.video.num_frames, spec.video.height, spec.video.width
    videos = spec.infer.max_inputs if spec.infer.inputs else min(spec.infer.max_inputs, max(1, n))  # its own list
    mp4 = int(frames * h * w * VIDEO_BYTES_PER_PIXEL)
    out = [
        Item("token shards", "workdir", tokens + prompts,
             f"{n:,} videos x {tm.sample_length:,} tokens x {TOKEN_BYTES} B (uint16) + index{also}"),
        Item("merged dataset", "workdir", tokens + prompts, "a second copy of the shards, joined by merge"),
        Item("checkpoints", "workdir", disk.peak, disk.basis(spec.finetune.precision)),
        Item("generated videos", "workdir", e * videos * mp4,
             f"{e} evaluated steps x {videos} videos x {frames}x{h}x{w} at <= {VIDEO_BYTES_PER_PIXEL} B/pixel"),
    ]
    if spec.model.checkpoint and not spec.model.checkpoint.startswith("/"):
        out.append(Item("pretrained checkpoint", "hf_home", spec.preset.params * PRETRAINED_BYTES_PER_PARAM,
                        f"{spec.preset.params / 1e9:.2f} B params x {PRETRAINED_BYTES_PER_PARAM} B (bf16), "
                        "if not cached"))
    if spec.video2world and not spec.model.text_encoder.startswith("/"):
        out.append(Item("text encoder", "hf_home", T5_BYTES, "T5-11B fp32 weights, if not cached"))
    return tuple(out)


def total(all_items: tuple[Item, ...], where: str) -> int:
    return sum(i.bytes for i in all_items if i.where == where)


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} TB"


T5_11B_ENCODER = {"vocab": 32_128, "d_model": 1024, "d_ff": 65_536, "heads": 128, "d_kv": 128, "layers": 24}
"""google-t5/t5-11b's encoder (its config.json: d_model, d_ff, num_heads, d_kv, num_layers, vocab_size): only the
encoder runs, in tokenize and infer (T5EncoderModel)."""
TEXT_ENCODER_BYTES_PER_PARAM = {"fp32": 4, "bf16": 2}


def t5_encoder_params(shape: dict[str, int] = T5_11B_ENCODER) -> int:
    """Shared token embedding + per layer: q/k/v/o (d_model x heads*d_kv each), the ReLU FFN (wi, wo) and two
    RMS norms; the final norm (relative-position bias tables are a rounding error and left out)."""
    attn = 4 * shape["d_model"] * shape["heads"] * shape["d_kv"]
    ffn = 2 * shape["d_model"] * shape["d_ff"]
    per_layer = attn + ffn + 2 * shape["d_model"]
    return shape["vocab"] * shape["d_model"] + shape["layers"] * per_layer + shape["d_model"]


def text_encoder_gpu_bytes(dtype: str, shape: dict[str, int] = T5_11B_ENCODER) -> int:
    """Weights of the prompt encoder on the tokenize / infer GPU (activations for 512 tokens are small beside)."""
    return t5_encoder_params(shape) * TEXT_ENCODER_BYTES_PER_PARAM[dtype]


def text_encoder_line(dtype: str, shape: dict[str, int] = T5_11B_ENCODER) -> str:
    """What the prompt encoder holds on each tokenize and infer GPU (Video2World), for plan and doctor; `shape`
    from the encoder's own config.json where it is here (T5-11B, upstream's, otherwise)."""
    name = "T5-11B encoder" if shape == T5_11B_ENCODER else f"T5 encoder (d_model {shape['d_model']})"
    return (f"{name}, {t5_encoder_params(shape) / 1e9:.2f} B params in {dtype}: "
            f"{text_encoder_gpu_bytes(dtype, shape) / 2**30:.1f} GiB of weights on each tokenize / infer GPU")


def text_encoder_fits(dtype: str, gpu_gib: int, shape: dict[str, int] = T5_11B_ENCODER) -> tuple[bool, str]:
    """Whether the prompt encoder's weights fit a GPU of `gpu_gib` (finetune.gpu_memory_gib, the cluster's GPU),
    and the line saying so: T5-11B in fp32, upstream's dtype, alone takes ~18 GiB."""
    need = text_encoder_gpu_bytes(dtype, shape) / 2**30
    return need < gpu_gib, f"{text_encoder_line(dtype, shape)}; GPUs of {gpu_gib} GiB"


T5_CONFIG_KEYS = {"vocab": "vocab_size", "d_model": "d_model", "d_ff": "d_ff", "heads": "num_heads", "d_kv": "d_kv",
                  "layers": "num_layers"}
"""`T5_11B_ENCODER`'s names in a T5 config.json."""


def t5_shape(config: dict[str, object]) -> dict[str, int] | None:
    """An encoder's shape from its config.json, None where a field is missing or not a whole number."""
    out = {k: config.get(name) for k, name in T5_CONFIG_KEYS.items()}
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in out.values()):
        return None
    return {k: int(v) for k, v in out.items()}  # type: ignore[call-overload]  # ints, checked above
