"""Pure planning and sbatch rendering: array sizes, chunks, dependencies, Pyxis flags, golden scripts."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

import specs
from harness.core import plan, spec
from harness.core.errors import HarnessError
from harness.core.paths import RunPaths
from harness.core.stages import NAMES
from harness.launch import render, slurm

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden"


def seed_spec() -> spec.RunSpec:
    return spec.load(REPO / "configs" / "cosmos-4b-dv4x8x8.toml")


def test_dag_shape_and_dependencies() -> None:
    p = plan.build(seed_spec(), plan.Facts(num_inputs=10_000, max_array_size=1001, nodes_available=4))
    assert [s.name for s in p.stages] == [n for n in NAMES if n != "import-image"]  # no registry image imported
    deps = {s.name: [(d.stage, d.kind) for d in s.depends] for s in p.stages}
    assert deps["evaluate"] == [("infer", "aftercorr")]
    assert deps["report"] == [("evaluate", "afterany")]
    assert deps["finetune"] == [("merge", "afterok")]
    assert p.checkpoint_steps == (25, 50, 75, 100)
    # 10,000 inputs -> a test split of 833 (weights 10:1:1) <= max_inputs 1,000 -> ceil(833 / 125) = 7 shards
    assert p.spec.infer.max_inputs == 833 and plan.infer_shards(p.spec.infer) == 7
    # model.checkpoint is set, so infer.baseline 'auto' adds step 0: 5 evaluated steps x 7 shards
    assert p.eval_steps == (0, 25, 50, 75, 100)
    assert p.stage("infer").tasks == p.stage("evaluate").tasks == 5 * 7
    assert p.stage("tokenize").tasks == 100 and p.spec.tokenize.shards == 100
    assert p.sbatch_calls == 7


@pytest.mark.parametrize("n", [10_000, 100_000, 1_000_000])
def test_scale_splits_arrays_at_max_array_size(n: int) -> None:
    p = plan.build(seed_spec(), plan.Facts(num_inputs=n, max_array_size=1001, nodes_available=64))
    tok = p.stage("tokenize")
    assert tok.tasks == max(64, n // 100)
    assert all(b - a <= 1001 for a, b in tok.chunks)
    assert tok.chunks[0][0] == 0 and tok.chunks[-1][1] == tok.tasks
    assert sum(b - a for a, b in tok.chunks) == tok.tasks
    # Slurm calls grow with stages (and 1,001-task chunks), not with tasks.
    assert p.sbatch_calls == 6 + len(tok.chunks)


def test_a_split_arrays_throttle_is_shared_between_its_sbatch_calls(tmp_path: Path) -> None:
    """Slurm throttles each job of a split array on its own: `%6` on each of 10 calls would run 60 at once."""
    p = plan.build(seed_spec(), plan.Facts(num_inputs=100_000, max_array_size=101, nodes_available=64))
    tok = p.stage("tokenize")
    tok = dataclasses.replace(tok, resources=dataclasses.replace(tok.resources, array_throttle=6))
    calls = len(tok.chunks)
    assert calls == 10
    got = render.executor_params(p, tok, RunPaths(tmp_path / "run"), "", [])["array_parallelism"]
    assert got == 1  # 6 // 10 rounds to 0: at least one task of each call runs
    assert [render.chunk_throttle(t, n) for t, n in ((6, 2), (7, 2), (0, 3), (2, 5), (5, 1))] == [3, 3, 0, 1, 5]
    s = seed_spec()  # a throttle below the number of arrays cannot hold: each runs at least one task at once
    low = dataclasses.replace(s, tokenize=dataclasses.replace(s.tokenize, array_throttle=6))
    with pytest.raises(HarnessError, match=r"tokenize.array_throttle = 6: tokenize's 1,000 tasks are 10 arrays at "
                                           r"MaxArraySize 101, each throttled on its own by Slurm; give at least 10"):
        plan.build(low, plan.Facts(num_inputs=100_000, max_array_size=101, nodes_available=64))


def test_checkpoint_steps_include_max_steps() -> None:
    f = dataclasses.replace(spec.FinetuneSection(), max_steps=30, save_every=8)
    assert plan.checkpoint_steps(f) == (8, 16, 24, 30)
    f = dataclasses.replace(spec.FinetuneSection(), max_steps=5, save_every=5)
    assert plan.checkpoint_steps(f) == (5,)


def test_shards_never_exceed_inputs_and_cover_nodes() -> None:
    t = spec.TokenizeSection()
    assert plan.resolve_shards(t, 3, 8) == 3
    assert plan.resolve_shards(t, 40, 3) == 3
    assert plan.resolve_shards(dataclasses.replace(t, shards=4), 40, 3) == 4
    assert plan.resolve_shards(t, 0, 3) == 1


def test_data_parallel_and_grad_accumulation() -> None:
    s = specs.build({"data": {"videos": "x"}, "finetune": {"nodes": 2, "gpus_per_node": 8, "tensor_parallel": 4,
                                                        "global_batch_size": 32, "micro_batch_size": 2}})
    p = plan.build(s, plan.Facts(num_inputs=10))
    assert p.data_parallel == 4 and p.grad_accumulation == 4
    ft = p.stage("finetune").resources
    assert (ft.nodes, ft.ntasks_per_node, ft.gpus_per_node) == (2, 8, 8)


def test_infer_tasks_get_one_rank_per_tensor_parallel_shard() -> None:
    s = specs.build({"data": {"videos": "x"}, "infer": {"gpus_per_node": 2, "tensor_parallel": 2}})
    inf = plan.build(s, plan.Facts(num_inputs=10)).stage("infer").resources
    assert (inf.nodes, inf.ntasks_per_node, inf.gpus_per_node) == (1, 2, 2)


def _fanout_spec(max_inputs: int, per_task: int, inputs: str = "", max_steps: int = 9) -> spec.RunSpec:
    return specs.build({"data": {"videos": "x"}, "finetune": {"max_steps": max_steps, "save_every": 3},
                        "infer": {"max_inputs": max_inputs, "inputs_per_task": per_task, "inputs": inputs,
                                  "array_throttle": 5}})


@pytest.mark.parametrize(("max_inputs", "per_task"), [(10, 3), (12, 4), (7, 1), (5, 0), (4, 100)])
def test_infer_tasks_cover_each_input_once_per_checkpoint(max_inputs: int, per_task: int) -> None:
    s = _fanout_spec(max_inputs, per_task, inputs="/data/eval")
    p = plan.build(s, plan.Facts(num_inputs=3))  # infer.inputs: not listed at plan time, max_inputs stands
    shards = plan.infer_shards(p.spec.infer)
    assert shards == (-(-max_inputs // per_task) if per_task else 1)
    assert p.stage("infer").tasks == p.stage("evaluate").tasks == 3 * shards
    seen: dict[int, list[int]] = {}
    for task in range(p.stage("infer").tasks):
        t = plan.infer_task(p.spec, task)
        assert plan.infer_task_index(p.spec, t.checkpoint, t.shard) == task
        assert t.step == p.checkpoint_steps[t.checkpoint] and t.shards == shards
        assert 0 < t.stop - t.start <= (per_task or max_inputs)
        assert t.key == (None if shards == 1 else t.shard)
        seen.setdefault(t.step, []).extend(range(t.start, t.stop))
    assert seen == {step: list(range(max_inputs)) for step in (3, 6, 9)}
    with pytest.raises(HarnessError, match="out of range"):
        plan.infer_task(p.spec, 3 * shards)


def test_infer_shards_from_the_test_split_size() -> None:
    """With the test split as the input list, max_inputs is capped at the test share of the discovered inputs
    (merge splits at most that many), so no planned shard is empty; the resolved spec carries it."""
    s = _fanout_spec(1000, 4)
    for n, test in ((120, 10), (30, 2), (2, 0), (0, 0)):
        assert plan.split_counts(n, s.data.split)[2] == test
        p = plan.build(s, plan.Facts(num_inputs=n))
        assert p.spec.infer.max_inputs == max(1, test)
        assert p.stage("infer").tasks == 3 * -(-max(1, test) // 4)
        assert plan.build(p.spec, plan.Facts(num_inputs=n)).spec == p.spec  # resolving again changes nothing
    assert plan.to_json(plan.build(s, plan.Facts(num_inputs=120)))["infer"] == {
        "checkpoints": 3, "shards": 3, "max_inputs": 10, "inputs_per_task": 4}


def test_fanout_arrays_split_at_max_array_size_with_aftercorr_per_chunk() -> None:
    p = plan.build(_fanout_spec(10, 1, inputs="/data/eval", max_steps=30), plan.Facts(num_inputs=5, max_array_size=40))
    inf, ev = p.stage("infer"), p.stage("evaluate")
    assert inf.tasks == ev.tasks == 10 * 10 and inf.chunks == ev.chunks == ((0, 40), (40, 80), (80, 100))
    assert inf.resources.array_throttle == 5
    parents = {"infer": ["11", "12", "13"]}
    assert render.dependency(ev, parents) == "aftercorr:11:12:13"
    assert [render.dependency(ev, parents, k) for k in range(3)] == ["aftercorr:11", "aftercorr:12", "aftercorr:13"]
    assert render.dependency(p.stage("report"), {"evaluate": ["21", "22"]}, 1) == "afterany:21:22"


def _render_all(p: plan.Plan) -> dict[str, str]:
    paths = RunPaths(Path("/shared/runs/cosmos-4b-dv4x8x8-RUNID"))
    ids = {s.name: [f"{1000 + i}"] for i, s in enumerate(p.stages)}
    out = {}
    for s in p.stages:
        text = slurm.script(p, s, paths, ids, 0)
        text = text.replace(sys.executable, "{PYTHON}")
        for d in slurm.pure_python_deps():
            text = text.replace(str(d), "{DEP:" + d.name + "}")
        text = text.replace(str(slurm.harness_source()), "{HARNESS_SRC}")
        out[s.name] = text.replace(str(Path.home()), "{HOME}")
    return out


def test_rendered_scripts_carry_resources_and_flags() -> None:
    p = plan.build(seed_spec(), plan.Facts(num_inputs=10_000, max_array_size=1001, nodes_available=3))
    scripts = _render_all(p)
    tok = scripts["tokenize"]
    # tokenize.array_throttle = 0 (the seed leaves it unset): no limit, so %100 = the whole array, not the node count
    assert "#SBATCH --array=0-99%100" in tok and "#SBATCH --dependency=afterok:1000" in tok
    assert "#SBATCH --kill-on-invalid-dep=yes" in tok and "#SBATCH --gpus-per-node=1" in tok
    assert "#SBATCH --dependency=aftercorr:1004" in scripts["evaluate"]
    for name in ("infer", "evaluate"):  # (the baseline + 4 checkpoints) x 7 input shards
        assert "#SBATCH --array=0-34" in scripts[name]
        assert f"# {name} array: 5 checkpoint(s) x 7 input shard(s) of up to 125 input(s)" in scripts[name]
    assert "#SBATCH --dependency=afterany:1005" in scripts["report"]
    ft = scripts["finetune"]
    assert "#SBATCH --ntasks-per-node=8" in ft and "#SBATCH --gpus-per-node=8" in ft
    assert "#SBATCH --requeue" in ft and "#SBATCH --signal=USR2@120" in ft
    assert "'--container-image=nvcr.io#nvidia/nemo:26.02'" in ft
    assert "{HARNESS_SRC}:/opt/harness:ro" in ft and "--container-workdir=/opt/harness" in ft
    assert "export PYTHONPATH=/opt/harness:/opt/harness-deps" in ft
    assert " python -u -m submitit.core._submit" in ft
    assert "--container-image" not in tok and "{PYTHON} -u -m submitit.core._submit" in tok
    for name, text in scripts.items():
        assert "HF_TOKEN=" not in text.replace("HF_TOKEN=,", "")  # only ever blanked in --export, never a value
        blanked = "HF_TOKEN=,HUGGING_FACE_HUB_TOKEN=,WANDB_API_KEY=" if name != "stage-assets" else "WANDB_API_KEY="
        assert f"#SBATCH --export=ALL,{blanked}\n" in text
        if name != "stage-assets":
            assert "export HF_HUB_OFFLINE=1" in text and "unset HF_TOKEN" in text


def test_golden_sbatch(request: pytest.FixtureRequest) -> None:
    """Golden scripts are regenerated only with --update-golden; a missing golden file fails."""
    p = plan.build(seed_spec(), plan.Facts(num_inputs=10_000, max_array_size=1001, nodes_available=3))
    update = request.config.getoption("--update-golden")
    for name, text in _render_all(p).items():
        golden = GOLDEN / f"cosmos-4b-{name}.sbatch"
        if update:
            golden.parent.mkdir(exist_ok=True)
            golden.write_text(text)
        assert golden.exists(), f"missing golden file {golden}; run pytest --update-golden"
        assert golden.read_text() == text, name


def test_plan_cli_writes_scripts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from harness import cli

    code = cli.main(["plan", str(REPO / "configs" / "cosmos-4b-dv4x8x8.toml"), "--num-inputs", "10000",
                     "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "5x40x64 = 12,800 tokens" in out
    assert "TP 8 x DP 1;" in out and "--container-image" in out  # sequence parallel off by default
    assert "infer/evaluate: 5 checkpoint(s) x 7 input shard(s) = 35 task(s)" in out
    assert sum("35 = 5 x 7" in ln for ln in out.splitlines()) == 2  # the infer and evaluate rows
    assert "step 0 (the baseline) inferred and evaluated too" in " ".join(out.split())  # however rich wraps it
    # the seed's registry image is imported once (nothing in /shared/runs/images here): import-image's script too
    assert len(list(tmp_path.glob("*.sbatch"))) == 8 and (tmp_path / "00-import-image.sbatch").is_file()
    assert "import-image: enroot import docker://nvcr.io#nvidia/nemo:26.02 -> " in " ".join(out.split())
    # the same folder again: an earlier plan's scripts that this one does not write go, the user's stay
    (tmp_path / "mine.sbatch").write_text("#!/bin/bash\n")
    many = ["finetune.max_steps=1100", "finetune.save_every=1", "finetune.val_every=0", "infer.baseline='off'",
            "infer.inputs_per_task=0"]
    cfg = str(REPO / "configs" / "cosmos-4b-dv4x8x8.toml")
    assert cli.main(["plan", cfg, *many, "--num-inputs", "10000", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "05-infer-1.sbatch").is_file()  # 1,100 checkpoints: split at MaxArraySize
    assert cli.main(["plan", cfg, "--num-inputs", "10000", "--out", str(tmp_path)]) == 0
    after = {p.name for p in tmp_path.glob("*.sbatch")}
    assert "mine.sbatch" in after and not (tmp_path / "05-infer-1.sbatch").exists()
    assert after - {"mine.sbatch"} == set((tmp_path / ".harness-plan").read_text().split())


def test_training_plan_is_the_one_source() -> None:
    """The seed's 4B recipe: max_steps 100, save_every 25, 8 GPUs at TP 8, GBS 1, max_epochs 1 over (with 10
    videos) 8 training videos. The plan's numbers are the training plan's; the last step is max_steps even
    though one epoch is only 8 steps, and precision follows the CUDA the finetune stage asks for."""
    from harness.core import models, trainplan

    s = seed_spec()
    p = plan.build(s, plan.Facts(num_inputs=10))
    t = trainplan.planned(s)
    assert p.training == t
    assert (t.last_step, t.checkpoint_steps, t.data_parallel, t.grad_accumulation) == (100, (25, 50, 75, 100), 1, 1)
    assert t.eval_steps == (0, 25, 50, 75, 100)  # the baseline: model.checkpoint is set
    assert p.stage("infer").tasks == p.stage("evaluate").tasks == 5
    assert t.precision == "bf16-mixed" and trainplan.of(s, cuda=False).precision == "fp32"
    assert t.flops_per_step == models.train_flops_per_token(s.preset, 12_799) * 12_799 * 1  # inputs: tokens[:-1]
    assert t.tokens_per_step == 12_800
    note = t.epochs_note(8)
    assert note is not None and "max_epochs = 1 over 8 training videos gives 8 step(s)" in note
    assert t.epochs_note(100) is None
    f32 = dataclasses.replace(s, finetune=dataclasses.replace(s.finetune, gpus_per_node=0, tensor_parallel=8))
    assert trainplan.planned(f32).precision == "fp32"
    # validation: val_every omitted = save_every, so step 0 and every checkpoint; else its own steps and max_steps
    assert (t.validation_steps, t.val_videos, s.finetune.val_every) == ((0, 25, 50, 75, 100), 256, 25)
    every = {n: trainplan.planned(dataclasses.replace(s, finetune=dataclasses.replace(s.finetune, val_every=n)))
             for n in (30, 0)}
    assert every[30].validation_steps == (0, 30, 60, 90, 100) and every[0].validation_steps == ()


def _inputs_spec(tmp: Path, n: int) -> Path:
    """A tiny spec over `n` video files (planning never opens them) under `tmp`; shards and infer fan-out derived."""
    videos = tmp / "videos"
    videos.mkdir()
    for i in range(n):
        (videos / f"clip-{i:02d}.mp4").write_bytes(b"x")
    return specs.write(tmp / "run.toml", specs.tiny_run(tmp, name="one", videos=videos, hf=tmp / "hf",
                                                        tokenizer=str(tmp / "no-tokenizer")),
                       {"infer": {"inputs_per_task": 1}})


def _as_stored(plan_: plan.Plan) -> dict[str, object]:
    """The plan as plan.json holds it (JSON: tuples become lists)."""
    import json

    return json.loads(json.dumps(plan.to_json(plan_)))


@pytest.mark.slurm
def test_plan_doctor_and_submit_build_the_same_plan(slurm_cluster: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """What `harness plan` shows is what `submit` stores in the run directory and sends, and what `doctor`
    checks: the same facts (MaxArraySize, nodes up, input count) and every derived number, on a real cluster."""
    from harness.core.atomic import read_json
    from harness.launch import slurmcli
    from harness.ops import doctor, submit
    from harness.ops import plan as plan_ops

    monkeypatch.chdir(tmp_path)
    path = _inputs_spec(tmp_path, 12)
    s = plan_ops.load(path)
    shown = plan_ops.view(s, plan_ops.gather(s, "slurm", "plan"))
    checked, doctor_got = doctor.plan_here(s, doctor.gather_cluster())
    res = submit.submit(path, "slurm")
    slurmcli.scancel([x.job_id for x in res.submissions])
    stored = read_json(res.paths.plan_json)
    assert shown.gathered.choice.executor == doctor_got.choice.executor == stored["executor"] == "slurm"
    assert stored["facts"] == shown.gathered.facts.__dict__ == doctor_got.facts.__dict__
    assert shown.gathered.facts.num_inputs == 12 and shown.gathered.sources.max_array_size == "scontrol show config"
    assert {k: v for k, v in stored.items() if k not in ("facts", "executor", "executor_reason", "spec_toml_sha256")} \
        == _as_stored(shown.plan) == _as_stored(checked) == _as_stored(res.plan)
    assert read_json(res.paths.spec_json) == spec.to_dict(shown.plan.spec) == spec.to_dict(checked.spec)
    assert [x.stage for x in res.submissions] == [x.stage for x in shown.scripts]


def test_plan_for_the_local_executor_is_what_doctor_checks_without_slurm(
        no_slurm: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Where no controller answers, doctor (and submit) plan for the local executor: no array limit, one
    machine. `harness plan --executor local` shows that plan; plain `harness plan` keeps Slurm's defaults."""
    from harness import cli
    from harness.ops import doctor
    from harness.ops import plan as plan_ops

    monkeypatch.chdir(tmp_path)
    path = _inputs_spec(tmp_path, 12)
    s = plan_ops.load(path)
    local = plan_ops.gather(s, "local", "plan")
    checked, doctor_got = doctor.plan_here(s, doctor.gather_cluster())
    assert doctor_got.choice.executor == "local" and "sbatch not found" in doctor_got.choice.reason
    assert local.facts == doctor_got.facts == plan.Facts(12, plan_ops.LOCAL_MAX_ARRAY_SIZE, 1)
    assert _as_stored(plan_ops.view(s, local).plan) == _as_stored(checked)
    assumed = plan_ops.gather(s, "slurm", "plan")
    assert assumed.choice.assumed and assumed.facts.max_array_size == 1001
    assert assumed.notes == ("no Slurm controller here: MaxArraySize 1001 and 1 node(s) assumed",)
    with pytest.raises(HarnessError, match="--executor slurm: sbatch not found"):
        plan_ops.gather(s, "slurm", "submit")
    assert cli.main(["plan", str(path), "--executor", "local"]) == 0
    out = capsys.readouterr().out
    assert "MaxArraySize = 1000000: the local executor has no array limit" in out and "note: no Slurm" not in out


def test_baseline_adds_step_0_to_infer_and_evaluate_only() -> None:
    """infer.baseline: 'auto' is on exactly when there is a pretrained checkpoint; 'on' also for a random
    initialisation. Step 0 is the first infer/evaluate task (task = step index x shards + shard), never a save."""
    from harness.core import trainplan

    facts = plan.Facts(num_inputs=10_000, max_array_size=1001, nodes_available=4)
    cases = {("auto", "org/model"): True, ("auto", ""): False, ("on", ""): True, ("off", "org/model"): False}
    for (mode, ckpt), on in cases.items():
        s = seed_spec()
        s = dataclasses.replace(s, infer=dataclasses.replace(s.infer, baseline=mode),
                                model=dataclasses.replace(s.model, checkpoint=ckpt))
        p = plan.build(s, facts)
        assert trainplan.baseline(p.spec) is on
        assert p.checkpoint_steps == (25, 50, 75, 100)  # finetune saves the same steps either way
        assert p.eval_steps == ((0,) if on else ()) + (25, 50, 75, 100)
        assert p.stage("infer").tasks == len(p.eval_steps) * 7
        first, last = plan.infer_task(p.spec, 0), plan.infer_task(p.spec, p.stage("infer").tasks - 1)
        assert (first.step, first.shard, last.step, last.shard) == (0 if on else 25, 0, 100, 6)


def test_a_step_larger_than_the_training_split_is_a_plan_warning() -> None:
    """Planned with its inputs counted, a global batch above the training split's size is said before the run
    (the finetune log said it only after the queue)."""
    spec = specs.build({"data": {"videos": "x"}, "finetune": {"global_batch_size": 64}})
    warned = [w for w in plan.build(spec, plan.Facts(num_inputs=12)).warnings if "global_batch_size" in w]
    assert warned == ["finetune.global_batch_size = 64 is more than the 10 training video(s) of 12 input(s): every "
                      "step repeats videos"]
    assert not [w for w in plan.build(spec, plan.Facts(num_inputs=200)).warnings if "global_batch_size" in w]
