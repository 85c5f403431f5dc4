"""The finetune stage's mcore engine on CPU: training with falling loss, TP=2 equal to TP=1, TP resharding on
resume, save/load identity, requeue safety (SIGKILL mid-run, SIGUSR2, checkpoints without completion marker),
whole-video samples, the LR schedule and rank discovery."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cosmos_util import independent_val_loss, make_run, make_spec, metrics, tiny_pretrained, val_metrics
from harness.core.errors import HarnessError
from harness.core.paths import RunPaths, is_done
from harness.launch.worker import run_task
from harness.stages import infer
from harness.stages.finetune.checkpoints import latest_complete

STEPS, SAVE = 10, 4  # checkpoints at 4, 8 and 10 (max_steps is not a multiple of save_every)
LR = 1e-2


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> str:
    return tiny_pretrained(tmp_path_factory)


def spec_for(pretrained: str, **kw: Any) -> Any:
    return make_spec(checkpoint=pretrained, max_steps=kw.pop("max_steps", STEPS), save_every=kw.pop("save_every", SAVE),
                     lr=LR, **kw)


@pytest.fixture(scope="module")
def run_a(tmp_path_factory: pytest.TempPathFactory, pretrained: str) -> RunPaths:
    """Reference: TP=1, started from the pretrained checkpoint, uninterrupted; every checkpoint keeps its optimizer
    state (keep_optimizer = "all"), so a test can resume a copy of an older one."""
    paths = make_run(tmp_path_factory.mktemp("run-a"), spec_for(pretrained, keep_optimizer="all"))
    run_task(str(paths.root), "finetune", 0)
    return paths


def losses(paths: RunPaths) -> dict[int, float]:
    recs = metrics(paths)
    steps = [r["step"] for r in recs]
    assert steps == sorted(set(steps)), f"a step logged twice or out of order: {steps}"
    return {r["step"]: r["loss"] for r in recs}


@pytest.mark.timeout(300)
def test_trains_with_falling_loss_and_checkpoints(run_a: RunPaths) -> None:
    recs = metrics(run_a)
    assert [r["step"] for r in recs] == list(range(1, STEPS + 1))
    first, last = np.mean([r["loss"] for r in recs[:3]]), np.mean([r["loss"] for r in recs[-3:]])
    assert last < first - 0.5, (first, last)
    assert all(r["lr"] == LR and r["tokens_per_s"] > 0 and r["tflops"] > 0 and r["grad_norm"] > 0 for r in recs)
    assert {r["engine"] for r in recs} == {"mcore"}
    info = json.loads(run_a.checkpoints_json.read_text())
    assert info["steps"] == [4, 8, 10] and info["all"] == [4, 8, 10]
    for step in (4, 8, 10):
        d = run_a.checkpoint_dir(step)
        assert (d / "done.json").is_file() and (d / "weights" / "metadata.json").is_file()
        assert json.loads((d / "context" / "harness.json").read_text())["preset"] == "tiny"
    assert is_done(run_a, "finetune", 0)


def vals(paths: RunPaths) -> dict[int, float]:
    recs = val_metrics(paths)
    steps = [r["step"] for r in recs]
    assert steps == sorted(set(steps)), f"a validation point logged twice or out of order: {steps}"
    return {r["step"]: r["val_loss"] for r in recs}


@pytest.mark.timeout(300)
def test_validation_loss_equals_an_independent_computation(run_a: RunPaths, pretrained: str) -> None:
    """Step 0 (the pretrained weights) and every checkpoint (val_every omitted = save_every): the logged value is
    plain torch cross-entropy over the validation videos with the checkpoint's weights."""
    got = vals(run_a)
    assert list(got) == [0, 4, 8, 10]
    assert {r["val_videos"] for r in val_metrics(run_a)} == {1}
    spec = spec_for(pretrained)
    want = {0: independent_val_loss(run_a, Path(pretrained), spec)}
    want |= {s: independent_val_loss(run_a, run_a.checkpoint_dir(s), spec) for s in (4, 8, 10)}
    assert all(abs(got[s] - want[s]) < 1e-5 for s in got), (got, want)
    assert got[10] < got[0] - 0.5  # the training videos' pattern generalises to the held-out one


def _run_subprocess(root: Path) -> subprocess.Popen[bytes]:
    script = root / "worker.py"
    script.write_text("import sys\nfrom harness.launch.worker import run_task\n"
                      "if __name__ == '__main__':\n    run_task(sys.argv[1], 'finetune', 0)\n")
    return subprocess.Popen([sys.executable, str(script), str(root)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


@pytest.mark.timeout(300)
def test_resume_after_kill_loses_and_repeats_no_step(tmp_path: Path, pretrained: str, run_a: RunPaths) -> None:
    paths = make_run(tmp_path / "run", spec_for(pretrained))
    proc = _run_subprocess(paths.root)
    deadline = time.time() + 200
    while time.time() < deadline and proc.poll() is None:
        if paths.metrics_jsonl.is_file() and sum("val_loss" not in ln for ln in
                                                 paths.metrics_jsonl.read_text().splitlines()) >= 6:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    latest = latest_complete(paths)
    assert latest is not None and latest[0] in (4, 8)
    # a save killed mid-write: a later checkpoint dir without its completion marker must be ignored
    torn = paths.checkpoint_dir(9)
    shutil.copytree(latest[1], torn)
    (torn / "done.json").unlink()
    assert latest_complete(paths) == latest
    run_task(str(paths.root), "finetune", 0)
    got, ref = losses(paths), losses(run_a)
    assert list(got) == list(range(1, STEPS + 1))
    assert np.allclose([got[s] for s in ref], list(ref.values()), rtol=1e-5)
    got_val, ref_val = vals(paths), vals(run_a)  # each validation point once across the kill
    assert list(got_val) == list(ref_val) == [0, 4, 8, 10]
    assert np.allclose(list(got_val.values()), list(ref_val.values()), rtol=1e-5)
    assert json.loads(paths.checkpoints_json.read_text())["steps"] == [4, 8, 10]


class _SignalWhen:
    """Send SIGUSR2 to this process once the metrics log records step `step` (what Slurm's --signal does)."""

    def __init__(self, path: Path, step: int) -> None:
        self.path, self.step = path, step
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _logged(self) -> int:
        steps = [0]
        for line in self.path.read_text().splitlines() if self.path.is_file() else []:
            try:
                steps.append(int(json.loads(line)["step"]))
            except (ValueError, KeyError, TypeError):
                pass
        return max(steps)

    def _watch(self) -> None:
        for _ in range(4000):
            if self._logged() >= self.step:
                os.kill(os.getpid(), signal.SIGUSR2)
                return
            time.sleep(0.05)


@pytest.mark.timeout(300)
def test_sigusr2_checkpoints_then_resume(tmp_path: Path, pretrained: str, run_a: RunPaths) -> None:
    from harness.cosmos.signals import Preempted

    paths = make_run(tmp_path / "run", spec_for(pretrained, max_steps=6, save_every=6))
    _SignalWhen(paths.metrics_jsonl, 2)
    with pytest.raises(Preempted):
        run_task(str(paths.root), "finetune", 0)
    assert not is_done(paths, "finetune", 0)
    info = json.loads(paths.checkpoints_json.read_text())
    assert info["steps"] == [] and len(info["all"]) == 1 and 2 <= info["all"][0] < 6  # unplanned, complete
    run_task(str(paths.root), "finetune", 0)
    got, ref = losses(paths), losses(run_a)
    assert list(got) == [1, 2, 3, 4, 5, 6]
    assert np.allclose([got[s] for s in got], [ref[s] for s in got], rtol=1e-5)
    assert json.loads(paths.checkpoints_json.read_text())["steps"] == [6]


@pytest.mark.timeout(300)
def test_tp2_resumes_tp1_checkpoint_with_equal_losses(tmp_path: Path, pretrained: str, run_a: RunPaths) -> None:
    """TP=1 -> TP=2 resharding of model and Adam state on resume; SIGUSR2 forwarded to spawned ranks; TP=2
    losses equal TP=1 ones; then the TP=2 checkpoint loads back at TP=1 with the TP=1 run's logits."""
    from harness.cosmos import parallel

    paths = make_run(tmp_path / "run", spec_for(pretrained, tp=2))
    shutil.copytree(run_a.checkpoint_dir(4), paths.checkpoint_dir(4))
    lines = run_a.metrics_jsonl.read_text().splitlines()
    # validation at 0, steps 1-4, validation at 4 (before checkpoint 4), step 5, then a torn line: dropped
    paths.metrics_jsonl.write_text("\n".join(lines[:7]) + "\n{\"step\": 6, \"lo")
    from harness.cosmos.signals import Preempted

    _SignalWhen(paths.metrics_jsonl, 6)  # the stage forwards SIGUSR2 to its ranks, which save at TP=2 and stop
    with pytest.raises(Preempted):
        run_task(str(paths.root), "finetune", 0)  # one process: the stage spawns the 2 gloo ranks
    stopped = json.loads(paths.checkpoints_json.read_text())["all"]
    assert stopped[0] == 4 and 6 <= stopped[-1] < STEPS and not is_done(paths, "finetune", 0)
    run_task(str(paths.root), "finetune", 0)  # resumes the TP=2 checkpoint
    got, ref = losses(paths), losses(run_a)
    assert list(got) == list(range(1, STEPS + 1))
    assert np.allclose([got[s] for s in range(5, STEPS + 1)], [ref[s] for s in range(5, STEPS + 1)], rtol=2e-4)
    got_val = vals(paths)  # 8 and 10 computed by the 2 TP ranks: the independent TP=1 computation's value
    assert list(got_val) == [0, 4, 8, 10]
    want = independent_val_loss(paths, paths.checkpoint_dir(STEPS), make_spec())
    assert abs(got_val[STEPS] - want) < 1e-5, (got_val, want)
    toks = torch.randint(0, 64_000, (2, 40))
    spec = make_spec()
    with torch.no_grad():
        tp2_trained = infer.load_model(paths.checkpoint_dir(STEPS), spec, tp=1)(toks)
        tp1_trained = infer.load_model(run_a.checkpoint_dir(STEPS), spec, tp=1)(toks)
    parallel.shutdown()
    assert torch.allclose(tp2_trained, tp1_trained, atol=2e-3)


@pytest.mark.timeout(900)
def test_sequence_parallel_equals_tp2_and_tp1_and_its_checkpoint_loads_without_it(tmp_path: Path, pretrained: str,
                                                                                   run_a: RunPaths) -> None:
    """finetune.sequence_parallel = 'on' at TP=2 (gloo, fp32; a sample's 47 positions padded to 48 for the split):
    3 steps' losses equal TP=2 without it (rtol 1e-5) and TP=1 (rtol 2e-4, as TP=2 vs TP=1 above); its step-3
    checkpoint (the same layout) resumes at TP=2 without it with TP=1's step-4 loss, and loads at TP=1 for
    inference with the logits of the TP=2 run without it (atol 2e-3, as TP=2 vs TP=1 above: fp32 sums in another
    order, amplified by Adam over 3 steps)."""
    from harness.cosmos import parallel

    runs = {}
    for name, sp in (("sp", "on"), ("plain", "off")):
        runs[name] = make_run(tmp_path / name, spec_for(pretrained, tp=2, max_steps=3, save_every=3,
                                                        sequence_parallel=sp))
        run_task(str(runs[name].root), "finetune", 0)  # one process: the stage spawns the 2 gloo ranks
    got, plain, ref = losses(runs["sp"]), losses(runs["plain"]), losses(run_a)
    assert list(got) == [1, 2, 3] and list(plain) == [1, 2, 3]
    assert np.allclose(list(got.values()), list(plain.values()), rtol=1e-5, atol=0), (got, plain)
    assert np.allclose(list(got.values()), [ref[s] for s in got], rtol=2e-4, atol=0), (got, ref)
    resumed = make_run(tmp_path / "resumed", spec_for(pretrained, tp=2, max_steps=4, save_every=4,
                                                      sequence_parallel="off"))
    shutil.copytree(runs["sp"].checkpoint_dir(3), resumed.checkpoint_dir(3))
    run_task(str(resumed.root), "finetune", 0)
    assert losses(resumed)[4] == pytest.approx(ref[4], rel=2e-4)
    toks = torch.randint(0, 64_000, (2, 40))
    with torch.no_grad():
        with_sp = infer.load_model(runs["sp"].checkpoint_dir(3), make_spec(), tp=1)(toks)
        without = infer.load_model(runs["plain"].checkpoint_dir(3), make_spec(), tp=1)(toks)
    parallel.shutdown()
    assert torch.allclose(with_sp, without, atol=2e-3), (with_sp - without).abs().max()


@pytest.mark.timeout(300)
def test_save_load_identical_logits_and_optimizer(tmp_path: Path, pretrained: str) -> None:
    from harness.cosmos import checkpoint, parallel
    from harness.stages.dataset import open_dataset
    from harness.stages.finetune import mcore as train

    spec = spec_for(pretrained)
    paths = make_run(tmp_path / "run", spec)
    t = train.setup(spec, paths, open_dataset(paths))
    for _ in range(2):
        train.train_step(t)
    toks = torch.randint(0, 64_000, (1, 47))
    with torch.no_grad():
        before = checkpoint.unwrap(t.model).eval()(toks)
    train.save(t, "test")
    loaded = infer.load_model(paths.checkpoint_dir(2), spec, tp=1)
    with torch.no_grad():
        assert torch.equal(loaded(toks), before)
    checkpoint.unwrap(t.model).train()
    resumed = train.setup(spec, paths, open_dataset(paths))
    assert resumed.step == 2
    a, b = train.train_step(t), train.train_step(resumed)
    assert a["loss"] == b["loss"] and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-6)
    parallel.shutdown()


@pytest.mark.timeout(300)
def test_video2world_finetune_masks_bov_and_pad(tmp_path: Path) -> None:
    from harness.cosmos.data import VideoSamples
    from harness.stages.dataset import open_dataset

    spec = make_spec(v2w=True, max_steps=2, save_every=2, precision="bf16-mixed")  # on CPU: trains in fp32
    paths = make_run(tmp_path / "run", spec)
    ds = open_dataset(paths)
    s = VideoSamples(ds, spec.token_math).sample(0)
    grid = spec.token_math.grid.tokens
    assert s.tokens[0] == 64_000 and len(s.tokens) == grid + 64
    assert s.loss_mask.sum() == grid and s.loss_mask[:grid].all()
    assert (s.labels[:grid] < 64_000).all() and (s.labels[grid:] == 64_002).all()
    run_task(str(paths.root), "finetune", 0)
    recs = metrics(paths)
    assert [r["step"] for r in recs] == [1, 2] and all(np.isfinite(r["loss"]) for r in recs)


@pytest.mark.timeout(900)
def test_video2world_sequence_parallel_equals_plain_tp2(tmp_path: Path) -> None:
    """Video2World with sequence parallelism at TP=2 (the abs positions sliced like the scattered tokens, the
    prompt's K/V not gathered, the pre-cross-attention norm's grads summed over TP): 2 steps' losses equal TP=2
    without it (fp32, rtol 1e-5)."""
    got = {}
    for sp in ("on", "off"):
        paths = make_run(tmp_path / sp, make_spec(v2w=True, tp=2, max_steps=2, save_every=2, sequence_parallel=sp))
        run_task(str(paths.root), "finetune", 0)
        got[sp] = [r["loss"] for r in metrics(paths)]
    assert len(got["on"]) == 2 and np.allclose(got["on"], got["off"], rtol=1e-5, atol=0), got


def test_samples_are_whole_videos(tmp_path: Path) -> None:
    from harness.cosmos import data
    from harness.stages.dataset import open_dataset

    spec = make_spec()
    paths = make_run(tmp_path / "run", spec, n_videos=8, split=(6, 1, 1))
    ds = open_dataset(paths)
    vs = data.VideoSamples(ds, spec.token_math)
    for k in range(len(vs)):
        doc = ds.tokens(vs.ids[k])
        s = vs.sample(k)
        assert np.array_equal(s.tokens, doc[:-1]) and np.array_equal(s.labels, doc[1:])  # never the next video
    seen = [i for step in range(3) for i in data.global_batch(step, 4, len(vs), 7)]
    assert sorted(seen[:6]) == list(range(6)) and sorted(seen[6:12]) == list(range(6))  # epochs cover all
    parts = [data.micro_batch(1, m, gbs=4, mbs=1, dp=2, dp_rank=r, n=6, seed=7) for m in range(2) for r in range(2)]
    assert sorted(sum(parts, [])) == sorted(data.global_batch(1, 4, 6, 7))
    wrong = make_spec(video={"width": 32, "height": 32, "num_frames": 13})  # a 4x4x4 grid: 64 tokens
    with pytest.raises(HarnessError, match="document 0 has 48 tokens; grid 4x4x4 needs 64"):
        data.VideoSamples(ds, wrong.token_math).sample(0)


def test_lr_schedule() -> None:
    from harness.stages.finetune.core import lr_at

    f = make_spec(max_steps=10, lr=1.0, min_lr=0.0, warmup_steps=2).finetune
    assert [round(lr_at(f, s), 6) for s in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert lr_at(f, 9) < lr_at(f, 6) < lr_at(f, 3) < 1.0 and lr_at(f, 10) == pytest.approx(0.0)
    assert {lr_at(make_spec(lr=0.3, min_lr=0.3).finetune, s) for s in range(6)} == {0.3}


def test_one_core_for_both_engines(tmp_path: Path) -> None:
    """The metrics line, the checkpoint side files and the parallel layout come from one place: the engines differ
    only in the engine they name."""
    from harness.core import trainplan
    from harness.stages.finetune import core

    spec = make_spec(tp=2, sequence_parallel="auto", gbs=4, engine="auto")
    plan = trainplan.of(spec, cuda=True)
    recs = {e: core.StepMath.of(spec, plan, 6, e).record(3, 1.5, 1e-3, 0.2, 2.0, 2) for e in ("mcore", "nemo")}
    assert recs["mcore"].keys() == recs["nemo"].keys()
    assert [{k: v for k, v in r.items() if k not in ("engine", "time")} for r in recs.values()] == [
        {"step": 3, "loss": 1.5, "lr": 1e-3, "grad_norm": 0.2, "tokens_per_s": plan.tokens_per_step / 2.0,
         "tflops": plan.flops_per_step / 2.0 / 2 / 1e12, "step_time_s": 2.0, "epoch": 2}] * 2
    contexts = {e: core.checkpoint_context(spec, e) for e in ("mcore", "nemo")}
    assert {**contexts["mcore"], "engine": "nemo"} == contexts["nemo"]
    # TP from the plan in both; sequence parallelism ('auto': on with TP > 1 on GPUs) only where mcore trains
    assert (trainplan.of(spec, cuda=True, engine="mcore").sequence_parallel,
            trainplan.of(spec, cuda=True, engine="nemo").sequence_parallel, plan.tensor_parallel) == (True, False, 2)
    paths = RunPaths(tmp_path)
    core.mark_complete(paths, plan, contexts["nemo"], 2, reason="signal")
    assert not paths.checkpoints_json.exists()  # written once every rank is past the save: after_save
    core.after_save(paths, plan, 2, "last")
    d = paths.checkpoint_dir(2)
    assert json.loads((d / "trainer.json").read_text()) == {"step": 2, "samples_consumed": 8, "reason": "signal",
                                                            "optimizer_state": False}
    assert json.loads((d / "context" / "harness.json").read_text()) == {**contexts["nemo"], "step": 2}
    assert json.loads(paths.checkpoints_json.read_text()) == {"steps": [2], "all": [2], "planned": [2, 4, 6],
                                                             "last_step": 6}


def test_rank_discovery_and_engine_choice() -> None:
    from harness.cosmos.parallel import first_host, rank_env
    from harness.stages.finetune import choose_engine

    env = rank_env({"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "4242",
                    "MASTER_ADDR": "gpu007"})
    assert (env.rank, env.world, env.local_rank, env.master_addr, env.master_port) == (3, 4, 1, "gpu007", 24242)
    tr = rank_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"})
    assert (tr.source, tr.rank, tr.world) == ("torchrun", 1, 2)
    assert rank_env({}).world == 1
    assert first_host("gpu[003-005,9],cpu1") == "gpu003"
    if not torch.cuda.is_available():
        assert choose_engine(make_spec()) == "mcore"


def test_fastpaths_equal_megatron_fallbacks() -> None:
    """The _foreach replacements of megatron-core's local multi-tensor fallbacks compute the same values."""
    from megatron.core import utils

    from harness.cosmos import fastpaths

    gen = torch.Generator().manual_seed(0)
    ts = [torch.randn(n, generator=gen) for n in (5, 300, 7)]
    norm, _ = fastpaths.l2_norm(0, None, [ts[:2], ts[2:]], False)
    assert float(norm) == pytest.approx(float(torch.linalg.vector_norm(torch.cat(ts))), rel=1e-6)
    ref, mine = [t.clone() for t in ts], [t.clone() for t in ts]
    utils.local_multi_tensor_scale(0, None, [ref, ref], 0.3)
    fastpaths.scale(0, None, [mine, mine], 0.3)
    assert all(torch.equal(a, b) for a, b in zip(ref, mine))
    ref_bf, mine_bf = [torch.empty_like(t, dtype=torch.bfloat16) for t in ts], [
        torch.empty_like(t, dtype=torch.bfloat16) for t in ts]
    utils.local_multi_tensor_scale(0, None, [ts, ref_bf], 1.0)  # the fp32 master -> bf16 model copy
    fastpaths.scale(0, None, [ts, mine_bf], 1.0)
    assert all(torch.equal(a, b) for a, b in zip(ref_bf, mine_bf))
