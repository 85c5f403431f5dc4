"""The finetune stage's NeMo engine (NeMo 2 `llm.api.train` + MegatronStrategy) on CPU, behind the tests-only
CUDA->CPU layer (tests/nemo_cpu_compat.py): start from a NeMo-layout pretrained checkpoint, falling loss,
harness-layout checkpoints that `harness.cosmos.checkpoint` loads with the trained model's exact logits, resume
after a checkpoint torn mid-save, TP=2 over gloo, and the `auto` engine choice.

Each training runs in its own interpreter (`python tests/nemo_cpu_compat.py RUN_DIR PROBE`): NeMo/Lightning keep
process-global state, checkpoint saves start a Manager process, and TP=2 is launched by Lightning itself.
Skipped where NeMo 2 is not installed (the `nemo` extra installs it; see the README)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cosmos_util import (  # noqa: E402
    assert_events_match_metrics,
    independent_val_loss,
    make_run,
    make_spec,
    metrics,
    val_metrics,
)
from harness.core.atomic import atomic_write_json
from harness.core.models import PRESETS  # noqa: E402
from harness.core.paths import RunPaths, is_done
from harness.stages import infer
from harness.stages.finetune.core import lr_at  # noqa: E402

# find_spec, not importorskip: collection in every xdist worker would import NeMo (~10 CPU-s) for nothing
pytestmark = pytest.mark.skipif(importlib.util.find_spec("nemo.collections.llm") is None,
                                reason="NeMo 2 not installed")


HERE = Path(__file__).resolve().parent
STEPS, SAVE, GBS = 6, 4, 2  # checkpoints at 4 and 6 (max_steps is not a multiple of save_every)


def spec_for(*, tp: int = 1, checkpoint: str = "") -> Any:
    return make_spec(tp=tp, max_steps=STEPS, save_every=SAVE, gbs=GBS, lr=1e-2, checkpoint=checkpoint,
                     engine="nemo", warmup_steps=2, min_lr=2e-3)


@pytest.fixture(scope="module")
def nemo_here() -> None:
    """The tests that use NeMo inside the xdist worker import it as a task does: with the garbage collector
    paused and the result frozen (~800,000 objects every later collection in the worker would walk again)."""
    from harness.lib.heap import quiet_imports

    with quiet_imports():
        import harness.stages.finetune.nemo  # noqa: F401


def train(paths: RunPaths, timeout: int = 400) -> subprocess.CompletedProcess[str]:
    """The NeMo engine on one run directory, in a fresh interpreter; the trained model's logits on probe tokens
    are written to RUN/probe.pt (tests/nemo_cpu_compat.py)."""
    p = subprocess.run([sys.executable, str(HERE / "nemo_cpu_compat.py"), str(paths.root)], capture_output=True,
                       text=True, timeout=timeout, cwd=str(paths.root))
    (paths.root / "train.log").write_text(p.stdout + p.stderr)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    return p


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Cosmos checkpoint in NeMo 2's layout (nemo/weights + nemo/context), as the HF repo ships it."""
    from harness.cosmos import parallel
    from harness.cosmos import pretrained as pt

    root = tmp_path_factory.mktemp("pretrained")
    pt.write_tiny_pretrained(root / "nemo", PRESETS["tiny"], seed=1)
    parallel.shutdown()
    return root


def staged(paths: RunPaths, checkpoint: Path) -> RunPaths:
    """assets.json as the stage-assets stage writes it for a local model.checkpoint (role -> directory)."""
    atomic_write_json(paths.assets_json, {"checkpoint": str(checkpoint)})
    return paths


@pytest.fixture(scope="module")
def run_a(tmp_path_factory: pytest.TempPathFactory, pretrained: Path) -> RunPaths:
    """TP=1, started from the pretrained checkpoint, uninterrupted."""
    paths = make_run(tmp_path_factory.mktemp("nemo-a"), spec_for(checkpoint=str(pretrained)))
    train(staged(paths, pretrained))
    return paths


def losses(paths: RunPaths) -> dict[int, float]:
    recs = metrics(paths)
    steps = [r["step"] for r in recs]
    assert steps == sorted(set(steps)), f"a step logged twice or out of order: {steps}"
    return {r["step"]: r["loss"] for r in recs}


def load_logits(paths: RunPaths, step: int, probe: dict[str, torch.Tensor]) -> torch.Tensor:
    from harness.cosmos import parallel
    from harness.launch.worker import load_run_spec

    try:
        model = infer.load_model(paths.checkpoint_dir(step), load_run_spec(paths), tp=1)
        with torch.no_grad():
            return model(probe["tokens"], context=probe.get("context"))
    finally:
        parallel.shutdown()


@pytest.mark.timeout(600)
def test_trains_from_pretrained_with_falling_loss(run_a: RunPaths, pretrained: Path) -> None:
    recs = metrics(run_a)
    assert [r["step"] for r in recs] == list(range(1, STEPS + 1))
    assert all(r["engine"] == "nemo" and r["grad_norm"] > 0 and r["tokens_per_s"] > 0 and r["tflops"] > 0
               for r in recs)
    f = spec_for().finetune  # warm-up then cosine: the mcore engine's schedule, step by step
    assert [r["lr"] for r in recs] == pytest.approx([lr_at(f, s) for s in range(STEPS)], rel=1e-9)
    assert len({r["lr"] for r in recs}) >= 4  # not constant
    assert is_done(run_a, "finetune", 0)
    assert_events_match_metrics(run_a)  # the callback feeds harness.lib.tracking the same records
    loss = [r["loss"] for r in recs]
    assert np.mean(loss[-2:]) < np.mean(loss[:2]) - 0.5, loss
    # step 1's loss is the pretrained weights' loss on the run's first global batch: the NeMo restore worked
    assert loss[0] == pytest.approx(first_batch_loss(run_a, pretrained / "nemo"), rel=1e-4)


def vals(paths: RunPaths) -> dict[int, float]:
    recs = val_metrics(paths)
    steps = [r["step"] for r in recs]
    assert steps == sorted(set(steps)), f"a validation point logged twice or out of order: {steps}"
    assert {r["engine"] for r in recs} <= {"nemo"}
    return {r["step"]: r["val_loss"] for r in recs}


@pytest.mark.timeout(600)
def test_validation_loss_equals_an_independent_computation_and_the_mcore_engines(
        run_a: RunPaths, pretrained: Path, tmp_path: Path) -> None:
    """Step 0 (the pretrained weights) and each checkpoint: plain torch cross-entropy over the validation videos
    with those weights; and the mcore engine, started from the NeMo engine's last checkpoint, logs the same value
    at its step 0."""
    from harness.launch.worker import run_task

    got, spec = vals(run_a), spec_for()
    assert list(got) == [0, SAVE, STEPS]
    want = {0: independent_val_loss(run_a, pretrained / "nemo", spec)}
    want |= {s: independent_val_loss(run_a, run_a.checkpoint_dir(s), spec) for s in (SAVE, STEPS)}
    assert all(abs(got[s] - want[s]) < 1e-5 for s in got), (got, want)
    mcore = make_run(tmp_path / "mcore", make_spec(max_steps=1, save_every=1, checkpoint=str(run_a.checkpoint_dir(
        STEPS)), engine="mcore"))
    run_task(str(staged(mcore, run_a.checkpoint_dir(STEPS)).root), "finetune", 0)
    from_mcore = {r["step"]: r["val_loss"] for r in val_metrics(mcore)}
    assert from_mcore[0] == pytest.approx(got[STEPS], abs=1e-6), (from_mcore, got)


def first_batch_loss(paths: RunPaths, weights: Path) -> float:
    from harness.cosmos import checkpoint as ckpt
    from harness.cosmos import data as data_mod
    from harness.cosmos import parallel
    from harness.cosmos.model import build_model
    from harness.launch.worker import load_run_spec
    from harness.stages.dataset import open_dataset
    from harness.stages.finetune.nemo_common import ordered_sample

    spec = load_run_spec(paths)
    tm = spec.token_math
    samples = data_mod.VideoSamples(open_dataset(paths), tm, "train")
    batch = data_mod.collate([samples.sample(ordered_sample(j, GBS, len(samples), spec.run.seed)) for j in range(GBS)],
                             "cpu", torch.float32)
    try:
        parallel.init(1)
        model = build_model(spec.preset, tm.grid, tp=1, seq_len=tm.sample_length - 1)
        ckpt.load_model(model, weights)
        with torch.no_grad():
            per_token = model(batch["tokens"], labels=batch["labels"])
        return float((per_token * batch["loss_mask"]).sum() / batch["loss_mask"].sum())
    finally:
        parallel.shutdown()


@pytest.mark.timeout(600)
def test_checkpoints_in_harness_layout_reload_to_identical_logits(run_a: RunPaths) -> None:
    info = json.loads(run_a.checkpoints_json.read_text())
    assert info["steps"] == [4, 6] and info["all"] == [4, 6]
    for step in (4, 6):
        d = run_a.checkpoint_dir(step)
        assert (d / "done.json").is_file() and (d / "weights" / "metadata.json").is_file()
        ctx = json.loads((d / "context" / "harness.json").read_text())
        assert ctx["preset"] == "tiny" and ctx["engine"] == "nemo" and ctx["step"] == step
        assert (d / "context" / "model.yaml").is_file()  # NeMo's own io context, beside the harness one
    # keep_optimizer = "last" (the default): optimizer state apart from the weights, in the newest checkpoint only
    from megatron.core import dist_checkpointing

    for step, kept in ((4, False), (6, True)):
        d = run_a.checkpoint_dir(step)
        assert json.loads((d / "trainer.json").read_text())["optimizer_state"] is kept
        assert (d / "optimizer" / "metadata.json").is_file() is kept
        assert not any(k.startswith("optimizer") for k in dist_checkpointing.load_tensors_metadata(str(d / "weights")))
    assert any(k.startswith("optimizer") for k in
               dist_checkpointing.load_tensors_metadata(str(run_a.checkpoint_dir(6) / "optimizer")))
    probe = torch.load(run_a.root / "probe.pt")
    logits = load_logits(run_a, STEPS, probe)
    assert torch.equal(logits, probe["logits"]), float((logits - probe["logits"]).abs().max())
    assert not torch.equal(load_logits(run_a, 4, probe), probe["logits"])


@pytest.mark.timeout(900)
def test_signal_checkpoint_then_resume(run_a: RunPaths, pretrained: Path, tmp_path: Path) -> None:
    """SIGUSR2 (Slurm's warning before the time limit) mid-run: a complete checkpoint at the current step, then the
    task stops unfinished. The requeued run finds a torn step-4 directory (a later save killed midway, no
    done.json), discards it, resumes from the signal checkpoint (model, Adam state, data position, LR schedule)
    and reproduces the uninterrupted run exactly."""
    paths = staged(make_run(tmp_path / "run", spec_for(checkpoint=str(pretrained))), pretrained)
    proc = subprocess.Popen([sys.executable, str(HERE / "nemo_cpu_compat.py"), str(paths.root)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(paths.root))
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        if paths.metrics_jsonl.is_file() and sum("val_loss" not in ln for ln in
                                                 paths.metrics_jsonl.read_text().splitlines()) >= 2:
            proc.send_signal(signal.SIGUSR2)
            break
        time.sleep(0.05)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "Preempted" in out, out[-3000:]
    assert not is_done(paths, "finetune", 0)
    info = json.loads(paths.checkpoints_json.read_text())
    (k,) = info["all"]
    assert 2 <= k < SAVE and info["steps"] == []
    assert json.loads((paths.checkpoint_dir(k) / "trainer.json").read_text())["reason"] == "signal"
    shutil.copytree(paths.checkpoint_dir(k), paths.checkpoint_dir(SAVE), ignore=shutil.ignore_patterns("done.json"))
    with open(paths.metrics_jsonl, "a") as fh:
        fh.write('{"step": 5, "lo')  # a line torn by the kill
    train(paths)
    a, b = losses(run_a), losses(paths)
    assert sorted(b) == list(range(1, STEPS + 1))
    assert_events_match_metrics(paths)  # TensorBoard: the resumed attempt's new file purges steps > k
    for step in range(1, STEPS + 1):
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6), (step, a, b)
    va, vb = vals(run_a), vals(paths)  # each validation point once across the requeue, the same values
    assert list(vb) == list(va) == [0, SAVE, STEPS]
    assert list(vb.values()) == pytest.approx(list(va.values()), rel=1e-5)
    log = (paths.root / "train.log").read_text()
    assert f"step {k + 1} loss" in log and f"step {k} loss" not in log  # resumed, not restarted
    info = json.loads(paths.checkpoints_json.read_text())
    # resumed from k's optimizer/ (the losses above); the signal checkpoint k is gone once a newer one is complete
    # (nothing evaluates it), and SAVE is weights-only once STEPS is complete
    assert info["steps"] == [SAVE, STEPS] and info["all"] == [SAVE, STEPS]
    assert sorted(p.name for p in paths.checkpoint_dir(0).parent.iterdir()) == \
        [paths.checkpoint_dir(s).name for s in (SAVE, STEPS)]
    assert [(paths.checkpoint_dir(s) / "optimizer").is_dir() for s in (SAVE, STEPS)] == [False, True]
    probe = torch.load(paths.root / "probe.pt")
    assert torch.allclose(probe["logits"], torch.load(run_a.root / "probe.pt")["logits"], atol=1e-5)


@pytest.mark.timeout(600)
def test_each_checkpoint_is_saved_after_its_validation_point(run_a: RunPaths) -> None:
    """As in the mcore engine, a step's validation pass runs before its checkpoint is saved, so a resume from
    any checkpoint finds its point logged (Lightning runs no sanity pass on a resume)."""
    logged = {r["step"]: r["time"] for r in val_metrics(run_a)}
    for step in (SAVE, STEPS):
        done = (run_a.checkpoint_dir(step) / "done.json").stat().st_mtime
        assert logged[step] <= done, (step, logged[step], done)


@pytest.mark.timeout(900)
def test_tensor_parallel_2_matches_tp1(tmp_path: Path, run_a: RunPaths, pretrained: Path) -> None:
    """TP=2 over gloo (two ranks launched by Lightning): the same losses as TP=1, and its checkpoint reshards
    to TP=1 with the trained model's logits."""
    paths = make_run(tmp_path / "run", spec_for(tp=2, checkpoint=str(pretrained)))
    train(staged(paths, pretrained))
    a, b = losses(run_a), losses(paths)
    assert sorted(b) == list(range(1, STEPS + 1))
    for step in b:
        assert b[step] == pytest.approx(a[step], rel=2e-4), (step, a, b)
    va, vb = vals(run_a), vals(paths)  # the 2 TP ranks' validation loss: at step 0, the same weights as TP=1's
    assert list(vb) == [0, SAVE, STEPS] and abs(vb[0] - va[0]) < 1e-5, (va, vb)
    assert list(vb.values()) == pytest.approx(list(va.values()), rel=2e-4)
    probe = torch.load(paths.root / "probe.pt")
    logits = load_logits(paths, STEPS, probe)
    assert torch.allclose(logits, probe["logits"], atol=1e-5), float((logits - probe["logits"]).abs().max())


@pytest.mark.timeout(600)
def test_video2world(tmp_path: Path) -> None:
    """tiny-v2w ([BOV] + video + [PAD] x 64, cross-attention to prompt embeddings): loss on video tokens falls,
    and the checkpoint reloads to the trained model's logits."""
    spec = make_spec(v2w=True, max_steps=4, save_every=2, gbs=GBS, lr=1e-2, engine="nemo")
    paths = make_run(tmp_path / "run", spec)
    train(paths)
    loss = [r["loss"] for r in metrics(paths)]
    assert len(loss) == 4 and loss[-1] < loss[0] - 0.3, loss
    assert json.loads(paths.checkpoints_json.read_text())["steps"] == [2, 4]
    probe = torch.load(paths.root / "probe.pt")
    assert torch.equal(load_logits(paths, 4, probe), probe["logits"])


@pytest.mark.parametrize("gbs,mbs,dp,resume_step", [(4, 1, 2, 0), (6, 1, 3, 2), (8, 2, 2, 3), (3, 3, 1, 1)])
def test_nemo_sampler_feeds_the_mcore_engines_batches(gbs: int, mbs: int, dp: int, resume_step: int,
                                                      nemo_here: None) -> None:
    """NeMo's MegatronPretrainingSampler over the engine's dataset order gives every DP rank, micro-batch by
    micro-batch, exactly the samples the mcore engine's `micro_batch` picks (also after resuming mid-run)."""
    from nemo.lightning.data import MegatronPretrainingSampler

    from harness.cosmos import data as data_mod
    from harness.stages.finetune.nemo_common import ordered_sample

    n, seed, steps = 5, 3, 6  # 5 videos: batches cross epoch boundaries
    for rank in range(dp):
        sampler = MegatronPretrainingSampler(total_samples=steps * gbs, consumed_samples=resume_step * gbs,
                                             micro_batch_size=mbs, data_parallel_rank=rank, data_parallel_size=dp,
                                             global_batch_size=gbs)
        got = [[ordered_sample(j, gbs, n, seed) for j in idx] for idx in sampler]
        accum = gbs // (mbs * dp)
        want = [data_mod.micro_batch(step, m, gbs=gbs, mbs=mbs, dp=dp, dp_rank=rank, n=n, seed=seed)
                for step in range(resume_step, steps) for m in range(accum)]
        assert got == want


@pytest.mark.parametrize("count,gbs,mbs,dp", [(5, 2, 1, 1), (7, 4, 1, 2), (9, 8, 2, 2), (4, 6, 1, 3), (2, 3, 3, 1)])
def test_nemo_validation_order_gives_each_rank_the_mcore_engines_videos(count: int, gbs: int, mbs: int,
                                                                        dp: int, nemo_here: None) -> None:
    """NeMo's validation sampler (drop_last, as NeMo sets it for validation) over `validation_order` gives DP
    rank r the videos `core.validation_loss` reads on it (r, r + dp, ...), in the same micro-batches, with
    padding (no loss) only after them; nothing is dropped, and the passes are whole global batches."""
    from nemo.lightning.data import MegatronPretrainingSampler

    from harness.stages.finetune.nemo_common import validation_order

    order = validation_order(count, dp, mbs, gbs)
    assert len(order) % gbs == 0 and sorted(v for v in order if v is not None) == list(range(count))
    for rank in range(dp):
        sampler = MegatronPretrainingSampler(total_samples=len(order), consumed_samples=0, micro_batch_size=mbs,
                                             data_parallel_rank=rank, data_parallel_size=dp, global_batch_size=gbs)
        got = [order[j] for idx in sampler for j in idx]
        mine = list(range(rank, count, dp))
        assert got[:len(mine)] == mine and set(got[len(mine):]) <= {None}, (rank, got)
        want_batches = [mine[i:i + mbs] for i in range(0, len(mine), mbs)]
        got_batches = [[v for v in (order[j] for j in idx) if v is not None] for idx in sampler]
        assert [b for b in got_batches if b] == want_batches


def test_resume_refuses_another_engines_checkpoint(tmp_path: Path) -> None:
    from harness.core.errors import HarnessError
    from harness.stages.finetune.nemo_common import check_engine

    atomic_write_json(tmp_path / "context" / "harness.json", {"preset": "tiny", "engine": "mcore"})
    with pytest.raises(HarnessError, match="'mcore' engine"):
        check_engine(tmp_path)
    atomic_write_json(tmp_path / "context" / "harness.json", {"preset": "tiny", "engine": "nemo"})
    check_engine(tmp_path)


def test_auto_engine_choice(monkeypatch: pytest.MonkeyPatch, nemo_here: None) -> None:
    import dataclasses

    from harness.stages import finetune
    from harness.stages.finetune import nemo as nemo_engine

    spec = make_spec()
    auto = dataclasses.replace(spec, finetune=dataclasses.replace(spec.finetune, engine="auto"))
    assert nemo_engine.available()
    assert finetune.choose_engine(auto) == ("nemo" if torch.cuda.is_available() else "mcore")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert finetune.choose_engine(auto) == "nemo"
    for engine in ("nemo", "mcore"):
        explicit = dataclasses.replace(spec, finetune=dataclasses.replace(spec.finetune, engine=engine))
        assert finetune.choose_engine(explicit) == engine


@pytest.mark.timeout(1500)
def test_seed_shape_reaches_max_steps_past_max_epochs(tmp_path: Path) -> None:
    """The seed's 4B recipe shape (10 videos, split 10/1/1 -> 8 training videos, max_epochs = 1, GBS 1), scaled
    from max_steps 100 / save_every 25 to 12 / 3: one epoch is 8 steps, but the plan sized infer/evaluate for
    checkpoints 3, 6, 9, 12 (the engine used to stop at step 8). The NeMo engine repeats the split, as the mcore
    engine does, and writes all four; checkpoints.json, the plan and the report agree on them and on the last step."""
    from harness.core import plan as plan_mod
    from harness.core import trainplan
    from harness.report import build as report

    spec = make_spec(max_steps=12, save_every=3, gbs=1, lr=1e-3, engine="nemo", max_epochs=1)
    paths = make_run(tmp_path / "run", spec, n_videos=10, split=(8, 1, 1))
    p = train(paths, timeout=1400)
    training = trainplan.planned(spec)
    assert training.last_step == 12 and training.checkpoint_steps == (3, 6, 9, 12)
    assert plan_mod.build(spec, plan_mod.Facts(num_inputs=10)).stage("infer").tasks == 4
    recs = metrics(paths)
    assert [r["step"] for r in recs] == list(range(1, 13))
    assert [r["epoch"] for r in recs][7:9] == [1, 1]  # steps 8 and 9 are in the second pass over the 8 videos
    info = json.loads(paths.checkpoints_json.read_text())
    assert info["steps"] == info["all"] == info["planned"] == [3, 6, 9, 12] and info["last_step"] == 12
    for step in (3, 6, 9, 12):
        assert (paths.checkpoint_dir(step) / "done.json").is_file()
    assert "repeating the training split until max_steps" in p.stdout + p.stderr
    rep = report.build(paths, spec, [], training)
    assert rep.training is not None and rep.training.steps == rep.training.last_step == 12
