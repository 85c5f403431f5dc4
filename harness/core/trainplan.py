"""The training plan: every number about a finetune run that more than one module needs, computed once.

The plan (`harness.core.plan`: infer/evaluate array sizes), both finetune engines (through
`harness.stages.finetune.core.training_plan`: the mcore loop and NeMo 2) and the report all read a `TrainingPlan`;
none of them derives the last step, the checkpoint steps, the tensor-, data- or sequence-parallel layout, the
gradient accumulation, the precision or the FLOPs per step on its own. Pure: whether CUDA is used is passed in,
never probed here. Plain numbers only (no spec inside), so NeMo can deep-copy and serialise the callbacks that
hold one.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from harness.core.spec import FinetuneSection, Precision, RunSpec, data_parallel


def checkpoint_steps(f: FinetuneSection) -> tuple[int, ...]:
    """Steps at which a checkpoint is written: every save_every steps, and always at max_steps."""
    steps = list(range(f.save_every, f.max_steps + 1, f.save_every))
    if not steps or steps[-1] != f.max_steps:
        steps.append(f.max_steps)
    return tuple(steps)


def validation_steps(f: FinetuneSection) -> tuple[int, ...]:
    """Steps after which the validation loss is computed: step 0 (the starting weights), every val_every steps
    and max_steps; none when val_every is 0. Both engines, the estimate and the report read this one list."""
    if not f.val_every:
        return ()
    steps = list(range(0, f.max_steps + 1, f.val_every))
    if steps[-1] != f.max_steps:
        steps.append(f.max_steps)
    return tuple(steps)
def baseline(spec: RunSpec) -> bool:
    """Whether step 0 (the weights before post-training) is inferred and evaluated: infer.baseline, where
    'auto' means: when there is a pretrained model.checkpoint to judge the post-training against."""
    b = spec.infer.baseline
    return b == "on" or (b == "auto" and bool(spec.model.checkpoint))


def eval_steps(spec: RunSpec) -> tuple[int, ...]:
    """The steps infer and evaluate run on: step 0 first where the baseline is on, then every checkpoint step.
    Step 0 is no finetune save: infer loads it from the pretrained source (or initialises it at random)."""
    return ((0,) if baseline(spec) else ()) + checkpoint_steps(spec.finetune)


def precision(f: FinetuneSection, *, cuda: bool) -> Precision:
    """The precision training actually runs in. bf16-mixed needs CUDA: megatron-core's mixed-precision optimizer
    only accepts torch.cuda tensors (and CPU bf16 matmuls are slow), so a CPU run trains in fp32."""
    return "fp32" if f.precision == "bf16-mixed" and not cuda else f.precision


def sequence_parallel(f: FinetuneSection, *, cuda: bool, engine: str | None = None) -> bool:
    """Whether the engine trains with megatron sequence parallelism. 'auto' turns it on with TP > 1 on GPUs
    only: it trades each TP all-reduce for a reduce-scatter + all-gather and runs norms and residual adds on
    1/TP of the tokens, a GPU-time saving; on CPU (gloo) it is kept for tests that ask for it. The NeMo engine
    trains without it. `engine`: the engine that trains (resolved from 'auto' at run time), else finetune.engine."""
    if f.tensor_parallel == 1 or f.sequence_parallel == "off" or (engine or f.engine) == "nemo":
        return False
    return f.sequence_parallel == "on" or cuda


@dataclass(frozen=True)
class TrainingPlan:
    tensor_parallel: int
    """Ranks each layer's weights are split over, within a node (finetune.tensor_parallel)."""
    last_step: int
    """Where training ends: always finetune.max_steps. The infer/evaluate arrays are sized from the checkpoint
    steps before any data exists, so both engines repeat the training split (crossing epochs) until max_steps
    rather than stop when max_epochs passes over it run out."""
    checkpoint_steps: tuple[int, ...]
    validation_steps: tuple[int, ...]
    """Steps whose weights get a validation loss (`validation_steps`); () when finetune.val_every is 0."""
    val_videos: int
    """At most this many validation videos per validation point (finetune.val_videos; fewer if the split is
    smaller)."""
    eval_steps: tuple[int, ...]
    """The steps infer and evaluate run on (`eval_steps`): the checkpoint steps, after step 0 where the baseline
    is on."""
    data_parallel: int
    grad_accumulation: int
    """Micro-batches per optimizer step on each DP rank: GBS / (MBS x DP)."""
    precision: Precision
    """'bf16-mixed' or 'fp32': the spec's precision, fp32 where CUDA is not used."""
    sequence_parallel: bool
    """finetune.sequence_parallel resolved (`sequence_parallel`)."""
    cuda: bool
    global_batch_size: int
    max_epochs: int
    preset: str
    sample_positions: int
    """Tokens a training sample feeds the model (tokens[:-1] of one video's document)."""
    video_tokens: int

    @cached_property
    def flops_per_step(self) -> float:
        """Model FLOPs of one optimizer step (all ranks together): `harness.core.models.train_flops_per_token`
        x positions x GBS."""
        from harness.core.models import PRESETS, train_flops_per_token

        seq = self.sample_positions
        return train_flops_per_token(PRESETS[self.preset], seq) * seq * self.global_batch_size

    @property
    def tokens_per_step(self) -> int:
        """Video tokens trained per optimizer step (the throughput numerator of metrics.jsonl)."""
        return self.global_batch_size * self.video_tokens

    def epochs_note(self, train_videos: int) -> str | None:
        """A warning when max_steps needs more than max_epochs passes over `train_videos` videos (both engines
        then repeat the split, in the same order); None when it fits."""
        gbs, epochs = self.global_batch_size, self.max_epochs
        if train_videos * epochs >= self.last_step * gbs:
            return None
        return (f"finetune.max_epochs = {epochs} over {train_videos} training videos gives "
                f"{max(1, train_videos * epochs // gbs)} step(s) of GBS {gbs}, fewer than max_steps = "
                f"{self.last_step}: repeating the training split until max_steps, which the planned checkpoints "
                f"({', '.join(map(str, self.checkpoint_steps))}) need")


def of(spec: RunSpec, *, cuda: bool, engine: str | None = None) -> TrainingPlan:
    """The training plan of `spec`; `cuda`: whether training runs on CUDA (the plan assumes it does where
    finetune.gpus_per_node > 0; the engines pass what the rank sees, which the stage entry checks agree);
    `engine`: the engine that trains, where known (each engine passes its own name), else finetune.engine."""
    f, tm = spec.finetune, spec.token_math
    dp = data_parallel(f)
    return TrainingPlan(tensor_parallel=f.tensor_parallel, last_step=f.max_steps,
                        checkpoint_steps=checkpoint_steps(f), eval_steps=eval_steps(spec),
                        validation_steps=validation_steps(f), val_videos=f.val_videos, data_parallel=dp,
                        grad_accumulation=f.global_batch_size // (f.micro_batch_size * dp),
                        precision=precision(f, cuda=cuda),
                        sequence_parallel=sequence_parallel(f, cuda=cuda, engine=engine), cuda=cuda,
                        global_batch_size=f.global_batch_size,
                        max_epochs=f.max_epochs, preset=spec.model.preset, sample_positions=tm.sample_length - 1,
                        video_tokens=tm.video_tokens)


def planned(spec: RunSpec) -> TrainingPlan:
    """The plan as submitted: CUDA where the finetune stage asks Slurm for GPUs."""
    return of(spec, cuda=spec.finetune.gpus_per_node > 0)
